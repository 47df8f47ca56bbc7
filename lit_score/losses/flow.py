"""Conditional flow matching with an optional minibatch optimal-transport coupling of data and noise."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.losses.denoising import DenoisingLoss
from lit_score.scores import NetworkScore
from lit_score.utils import batch_mean, batch_sum, randn_like


def ot_permutation(x0: Tensor, noise: Tensor) -> Tensor:
    """Indices π minimising Σ_i ‖x0_i − noise_π(i)‖² (exact, Hungarian; one host sync, O(B³) on the CPU)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.reshape(x0.shape[0], -1).double(), noise.reshape(noise.shape[0], -1).double()) ** 2
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols, device=x0.device, dtype=torch.long)


class FlowMatchingLoss(DenoisingLoss):
    """‖v_θ(x_t, t) − (ε − x₀)‖² per sample (Lipman et al. 2023; Liu et al. 2023) on the process's interpolant.

    With ``ot_coupling`` the batch's noise is re-paired with the data by exact minibatch optimal transport on
    squared distances (Tong et al. 2024, OT-CFM; Pooladian et al. 2023). Without it this equals
    :class:`DenoisingLoss` draw for draw (t first, then ε, from the same generator).
    """

    def __init__(
        self,
        ot_coupling: bool = False,
        weighting: Literal["none", "sigma2"] = "none",
        reduce: Literal["mean", "sum"] = "mean",
    ) -> None:
        super().__init__(weighting, reduce)
        self.ot_coupling = ot_coupling

    def __call__(
        self,
        score_model: NetworkScore,
        x0: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        process = score_model.process
        t = process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        noise = randn_like(x0, generator) if noise is None else noise
        if self.ot_coupling:
            noise = noise[ot_permutation(x0, noise)]
        err = (score_model.raw(process.perturb(x0, t, noise), t) - score_model.training_target(x0, noise, t)) ** 2
        return self.weight(score_model, t) * (batch_mean(err) if self.reduce == "mean" else batch_sum(err))

    def __repr__(self) -> str:
        return f"FlowMatchingLoss(ot_coupling={self.ot_coupling}, weighting={self.weighting!r}, reduce={self.reduce!r})"
