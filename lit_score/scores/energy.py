"""Energy → score in one autograd helper, so one Langevin sampler serves EBMs and score models."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def energy_gradient(energy_fn, x: Tensor, t: Tensor | None = None, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """(E(x), ∇ₓE(x)) by autograd; works under ``no_grad`` and ``inference_mode`` (it clones its input)."""
    with torch.inference_mode(False), torch.enable_grad():
        if not create_graph:
            x = x.detach().clone()
        if not x.requires_grad:
            x = x.requires_grad_(True)
        energy = energy_fn(x, t)
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
    return energy, grad


class EnergyScore(nn.Module):
    """Score of p ∝ exp(−E): s(x) = −∇ₓE(x). ``create_graph`` only when a loss backpropagates through s."""

    def __init__(self, energy_net: nn.Module, create_graph: bool = False) -> None:
        super().__init__()
        self.energy_net, self.create_graph = energy_net, create_graph

    def energy(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """E(x), shape (B,)."""
        return self.energy_net(x, t)

    def energy_and_score(self, x: Tensor, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(E(x, t), −∇ₓE(x, t)) from one forward and one backward pass (what MALA and HMC need per step)."""
        energy, grad = energy_gradient(self.energy, x, t, create_graph=self.create_graph)
        return (energy if self.create_graph else energy.detach()), -grad

    def score(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """−∇ₓE(x, t)."""
        return -energy_gradient(self.energy, x, t, create_graph=self.create_graph)[1]

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.score(x, t)
