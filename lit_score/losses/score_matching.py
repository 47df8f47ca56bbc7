r"""Score matching without a denoising target: exact (Hyvärinen 2005) and sliced (Song et al. 2019).

Both estimate the Fisher divergence ½ E‖s_θ(x) − ∇ log p(x)‖² up to a constant by integration by parts:

| objective | per-sample loss |
|---|---|
| exact (ESM) | ½‖s‖² + tr ∇ₓs |
| sliced (SSM) | ½(vᵀs)² + vᵀ∇ₓ(vᵀs),  v ~ p_v with E[vvᵀ] = I |
| sliced, variance-reduced (SSM-VR) | ½‖s‖² + vᵀ∇ₓ(vᵀs) |

They apply to data without added noise (t is fixed at ``t`` or the process's t_min; the network still
receives it), or, with ``perturb``, to x_t = α x₀ + σ ε at that t, whose score they then learn. With ``anneal``
they are a diffusion family's loss (NCSN v1's annealed SSM, Song & Ermon 2019, eq. 2 with SSM for each level): t is
drawn from the process's training distribution per sample, x_t = α x₀ + σ ε, and the per-sample objective at t is
weighted by λ(t) = σ(t)², the weight DSM uses. For every t the objective is the Fisher divergence of the noised
marginal p_t up to a constant, so its minimiser is the same as DSM's, without the denoising target. The score
comes from ``score_model.score(x, t)`` (a NetworkScore, or an ``EnergyScore(create_graph=True)``), built
with ``create_graph`` so the loss backpropagates into its parameters. Per-sample values are sums over
dimensions, shape (B,).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.scores.function import as_score_function
from lit_score.utils import batch_sum, randn_like


def _inputs(
    score_model, x0: Tensor, t: float | None, perturb: bool, anneal: bool, generator
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(x, t, λ) at which the score is matched: x₀ (or x_t with ``perturb``) at the fixed time, or x_t at times drawn
    from the process with λ = σ(t)² (``anneal``); x requires grad, λ is None without ``anneal``."""
    process = as_score_function(score_model).process
    if (perturb or anneal) and process is None:
        raise ValueError("perturb / anneal need a score model with a noise process")
    if anneal:
        times = process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        x = process.perturb(x0, times, randn_like(x0, generator))
        return x.detach().clone().requires_grad_(True), times, process.sigma(times) ** 2
    value = t if t is not None else (process.t_min if process is not None else 0.0)
    times = torch.full((x0.shape[0],), float(value), device=x0.device, dtype=x0.dtype)
    x = process.perturb(x0, times, randn_like(x0, generator)) if perturb else x0
    return x.detach().clone().requires_grad_(True), times, None


def _check_anneal(t: float | None, perturb: bool, anneal: bool) -> None:
    if anneal and (t is not None or perturb):
        raise ValueError("anneal draws t from the process and perturbs the data: leave t and perturb unset")


def _score(score_model, x: Tensor, t: Tensor) -> Tensor:
    return as_score_function(score_model).score(x, t)


def _repeated(score_model, times: int):
    """The score model for its batch repeated ``times`` times (a conditioned NetworkScore view repeats its labels;
    plain score functions carry none)."""
    return as_score_function(score_model).repeated(times)


class ExactScoreMatching(DiffusionLoss):
    """Hyvärinen (2005): ½‖s‖² + tr ∇ₓs, the trace by one backward pass per dimension (only for D ≤ ``max_dim``).

    Args:
        t: the fixed time (None: the process's t_min, or 0 without a process).
        perturb: match the score of x_t at that t instead of the data's.
        max_dim: the largest data dimension accepted (the trace costs D backward passes).
        anneal: a family's loss: t from the process's training distribution, weight σ(t)² (module docstring).
    """

    def __init__(self, t: float | None = None, perturb: bool = False, max_dim: int = 64, anneal: bool = False) -> None:
        check_number("t", t, ge=0.0, allow_none=True)
        check_number("max_dim", max_dim, ge=1, integer=True)
        _check_anneal(t, perturb, anneal)
        self.t, self.perturb, self.max_dim, self.anneal = t, perturb, max_dim, anneal

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        dim = x0[0].numel()
        if dim > self.max_dim:
            raise ValueError(
                f"ExactScoreMatching needs one backward pass per dimension; D = {dim} > max_dim = {self.max_dim}:"
                " use SlicedScoreMatching (or DenoisingLoss) in high dimension"
            )
        with torch.inference_mode(False), torch.enable_grad():
            x, t, weight = _inputs(score_model, x0, self.t, self.perturb, self.anneal, generator)
            s = _score(score_model, x, t).reshape(x.shape[0], dim)
            trace = torch.zeros(x.shape[0], device=x.device, dtype=s.dtype)
            for d in range(dim):
                (grad,) = torch.autograd.grad(s[:, d].sum(), x, create_graph=True)
                trace = trace + grad.reshape(x.shape[0], dim)[:, d]
            loss = 0.5 * batch_sum(s**2) + trace
            return loss if weight is None else weight * loss

    def __repr__(self) -> str:
        extra = ", anneal=True" if self.anneal else ""
        return f"ExactScoreMatching(t={self.t!r}, perturb={self.perturb!r}, max_dim={self.max_dim}{extra})"


class SlicedScoreMatching(DiffusionLoss):
    """Sliced score matching (Song, Garg, Shi & Ermon 2019), SSM-VR by default, averaged over ``num_projections``.

    Args:
        num_projections: directions v per sample.
        distribution: of v, ``gaussian`` or ``rademacher``.
        variance_reduced: SSM-VR (½‖s‖², exact for Gaussian v) instead of ½(vᵀs)².
        t, perturb: the fixed time and whether x is noised there (as :class:`ExactScoreMatching`).
        anneal: a family's loss: t from the process's training distribution, weight σ(t)² (NCSN v1's annealed SSM;
            ``--model.init_args.loss lit_score.losses.SlicedScoreMatching --model.init_args.loss.anneal true``).
    """

    def __init__(
        self,
        num_projections: int = 1,
        distribution: Literal["gaussian", "rademacher"] = "gaussian",
        variance_reduced: bool = True,
        t: float | None = None,
        perturb: bool = False,
        anneal: bool = False,
    ) -> None:
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown projection distribution {distribution!r}: use gaussian or rademacher")
        check_number("num_projections", num_projections, ge=1, integer=True)
        check_number("t", t, ge=0.0, allow_none=True)
        _check_anneal(t, perturb, anneal)
        self.num_projections, self.distribution, self.variance_reduced = num_projections, distribution, variance_reduced
        self.t, self.perturb, self.anneal = t, perturb, anneal

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        m, b = self.num_projections, x0.shape[0]
        with torch.inference_mode(False), torch.enable_grad():
            x, t, weight = _inputs(score_model, x0, self.t, self.perturb, self.anneal, generator)
            x_rep = x.repeat(m, *([1] * (x.ndim - 1)))  # (M·B, ...): every projection sees every sample
            v = projections(x_rep, self.distribution, generator)
            s = _score(_repeated(score_model, m), x_rep, t.repeat(m))
            vs = batch_sum(v * s)
            (grad,) = torch.autograd.grad(vs.sum(), x_rep, create_graph=True)
            first = 0.5 * batch_sum(s**2) if self.variance_reduced else 0.5 * vs**2
            loss = (first + batch_sum(v * grad)).reshape(m, b).mean(dim=0)
            return loss if weight is None else weight * loss

    def __repr__(self) -> str:
        extra = ", anneal=True" if self.anneal else ""
        return (f"SlicedScoreMatching(num_projections={self.num_projections}, distribution={self.distribution!r}, "
                f"variance_reduced={self.variance_reduced}, t={self.t!r}, perturb={self.perturb!r}{extra})")


def projections(x: Tensor, distribution: str, generator: torch.Generator | None = None) -> Tensor:
    """Random directions shaped like x with E[vvᵀ] = I: standard normal or Rademacher (±1)."""
    v = randn_like(x, generator)
    return v if distribution == "gaussian" else 2 * (v >= 0).to(v.dtype) - 1
