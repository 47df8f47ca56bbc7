r"""One Metropolis–Hastings step of each kernel, as functions the kernels and other samplers share: E and s from one
backward pass, the box test, the accept test, a MALA step and an HMC trajectory (notation:
:mod:`lit_score.samplers.mcmc_kernels`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lit_score.samplers.base import ScoreFn
from lit_score.scores.function import as_score_function
from lit_score.utils import append_dims, batch_sum, rand, randn_like

EnergyAndScore = Callable[[Tensor], tuple[Tensor, Tensor]]


def energy_and_score(score_fn: ScoreFn, x: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
    """(E(x, t), s(x, t)): from ``score_fn.energy_and_score`` when offered (one backward pass), else two calls."""
    both = as_score_function(score_fn).energy_and_score
    if both is not None:
        return both(x, t)
    return score_fn.energy(x, t), score_fn(x, t)


def _inside(x: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """(B,) bool: every coordinate of the sample inside [lo, hi]."""
    if bounds is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    flat = x.reshape(x.shape[0], -1)
    return ((flat >= bounds[0]) & (flat <= bounds[1])).all(dim=1)


def metropolis_accept(log_alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B,) bool: u < α per chain, u ~ U[0, 1) (NaN log α, e.g. from an infinite energy, rejects)."""
    u = rand(log_alpha.shape, generator, device=log_alpha.device, dtype=log_alpha.dtype)
    return torch.nan_to_num(log_alpha, nan=-math.inf) > u.log()


def _where(accept: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(append_dims(accept, new), new, old)


def mala_step(
    fn: EnergyAndScore,
    x: Tensor,
    energy: Tensor,
    score: Tensor,
    step_size: float,
    temperature: float,
    bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One MALA transition on π_T: (x, E, s, accepted (B,) bool, α (B,)); ``fn(x) -> (E, s)`` is one evaluation."""
    variance = 2 * step_size * temperature
    proposal = x + step_size * score + math.sqrt(variance) * randn_like(x, generator)
    energy_new, score_new = fn(proposal)
    forward = batch_sum((proposal - x - step_size * score) ** 2)
    backward = batch_sum((x - proposal - step_size * score_new) ** 2)
    log_alpha = (energy - energy_new) / temperature - (backward - forward) / (2 * variance)
    log_alpha = torch.where(_inside(proposal, bounds), log_alpha, torch.full_like(log_alpha, -math.inf))
    accept = metropolis_accept(log_alpha, generator)
    alpha = log_alpha.clamp(max=0).exp().nan_to_num(0.0)
    return (_where(accept, proposal, x), torch.where(accept, energy_new, energy), _where(accept, score_new, score),
            accept, alpha)


def hmc_step(
    fn: EnergyAndScore,
    x: Tensor,
    energy: Tensor,
    score: Tensor,
    step_size: float,
    leapfrog_steps: int,
    temperature: float,
    bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One HMC transition (L leapfrog steps of size ε, identity mass) on π_T: (x, E, s, accepted, α)."""
    p0 = randn_like(x, generator)
    q, e, s = x, energy, score
    inside = _inside(x, bounds)
    p = p0 + 0.5 * step_size * s / temperature  # −∇U = s/T
    for i in range(leapfrog_steps):
        q = q + step_size * p
        e, s = fn(q)
        inside = inside & _inside(q, bounds)
        p = p + (step_size if i < leapfrog_steps - 1 else 0.5 * step_size) * s / temperature
    h_old = energy / temperature + 0.5 * batch_sum(p0**2)
    h_new = e / temperature + 0.5 * batch_sum(p**2)
    log_alpha = torch.where(inside, h_old - h_new, torch.full_like(h_old, -math.inf))
    accept = metropolis_accept(log_alpha, generator)
    alpha = log_alpha.clamp(max=0).exp().nan_to_num(0.0)
    return _where(accept, q, x), torch.where(accept, e, energy), _where(accept, s, score), accept, alpha

