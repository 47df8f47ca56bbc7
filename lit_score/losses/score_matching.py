r"""Score matching without a denoising target: exact (Hyvärinen 2005) and sliced (Song et al. 2019).

Both estimate the Fisher divergence ½ E‖s_θ(x) − ∇ log p(x)‖² up to a constant by integration by parts:

| objective | per-sample loss |
|---|---|
| exact (ESM) | ½‖s‖² + tr ∇ₓs |
| sliced (SSM) | ½(vᵀs)² + vᵀ∇ₓ(vᵀs),  v ~ p_v with E[vvᵀ] = I |
| sliced, variance-reduced (SSM-VR) | ½‖s‖² + vᵀ∇ₓ(vᵀs) |

They apply to data without added noise (t is fixed at ``t`` or the process's t_min; the network still
receives it), or, with ``perturb``, to x_t = α x₀ + σ ε at that t, whose score they then learn. The score
comes from ``score_model.score(x, t)`` (a NetworkScore, or an ``EnergyScore(create_graph=True)``), built
with ``create_graph`` so the loss backpropagates into its parameters. Per-sample values are sums over
dimensions, shape (B,).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.utils import batch_sum, randn_like


def _inputs(score_model, x0: Tensor, t: float | None, perturb: bool, generator) -> tuple[Tensor, Tensor]:
    """(x, t) at which the score is matched: x₀ (or x_t with ``perturb``) at the fixed time, x requiring grad."""
    process = getattr(score_model, "process", None)
    if perturb and process is None:
        raise ValueError("perturb=True needs a score model with a noise process")
    value = t if t is not None else (process.t_min if process is not None else 0.0)
    times = torch.full((x0.shape[0],), float(value), device=x0.device, dtype=x0.dtype)
    x = process.perturb(x0, times, randn_like(x0, generator)) if perturb else x0
    return x.detach().clone().requires_grad_(True), times


def _score(score_model, x: Tensor, t: Tensor) -> Tensor:
    return getattr(score_model, "score", score_model)(x, t)


class ExactScoreMatching:
    """Hyvärinen (2005): ½‖s‖² + tr ∇ₓs, the trace by one backward pass per dimension (only for D ≤ ``max_dim``)."""

    def __init__(self, t: float | None = None, perturb: bool = False, max_dim: int = 64) -> None:
        check_number("t", t, ge=0.0, allow_none=True)
        check_number("max_dim", max_dim, ge=1, integer=True)
        self.t, self.perturb, self.max_dim = t, perturb, max_dim

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        dim = x0[0].numel()
        if dim > self.max_dim:
            raise ValueError(
                f"ExactScoreMatching needs one backward pass per dimension; D = {dim} > max_dim = {self.max_dim}:"
                " use SlicedScoreMatching (or DenoisingLoss) in high dimension"
            )
        with torch.inference_mode(False), torch.enable_grad():
            x, t = _inputs(score_model, x0, self.t, self.perturb, generator)
            s = _score(score_model, x, t).reshape(x.shape[0], dim)
            trace = torch.zeros(x.shape[0], device=x.device, dtype=s.dtype)
            for d in range(dim):
                (grad,) = torch.autograd.grad(s[:, d].sum(), x, create_graph=True)
                trace = trace + grad.reshape(x.shape[0], dim)[:, d]
            return 0.5 * batch_sum(s**2) + trace

    def __repr__(self) -> str:
        return f"ExactScoreMatching(t={self.t!r}, perturb={self.perturb!r}, max_dim={self.max_dim})"


class SlicedScoreMatching:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019), SSM-VR by default, averaged over ``num_projections``."""

    def __init__(
        self,
        num_projections: int = 1,
        distribution: Literal["gaussian", "rademacher"] = "gaussian",
        variance_reduced: bool = True,
        t: float | None = None,
        perturb: bool = False,
    ) -> None:
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown projection distribution {distribution!r}: use gaussian or rademacher")
        check_number("num_projections", num_projections, ge=1, integer=True)
        check_number("t", t, ge=0.0, allow_none=True)
        self.num_projections, self.distribution, self.variance_reduced = num_projections, distribution, variance_reduced
        self.t, self.perturb = t, perturb

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        m, b = self.num_projections, x0.shape[0]
        with torch.inference_mode(False), torch.enable_grad():
            x, t = _inputs(score_model, x0, self.t, self.perturb, generator)
            x_rep = x.repeat(m, *([1] * (x.ndim - 1)))  # (M·B, ...): every projection sees every sample
            v = projections(x_rep, self.distribution, generator)
            s = _score(score_model, x_rep, t.repeat(m))
            vs = batch_sum(v * s)
            (grad,) = torch.autograd.grad(vs.sum(), x_rep, create_graph=True)
            first = 0.5 * batch_sum(s**2) if self.variance_reduced else 0.5 * vs**2
            loss = first + batch_sum(v * grad)
            return loss.reshape(m, b).mean(dim=0)

    def __repr__(self) -> str:
        return (f"SlicedScoreMatching(num_projections={self.num_projections}, distribution={self.distribution!r}, "
                f"variance_reduced={self.variance_reduced}, t={self.t!r}, perturb={self.perturb!r})")


def projections(x: Tensor, distribution: str, generator: torch.Generator | None = None) -> Tensor:
    """Random directions shaped like x with E[vvᵀ] = I: standard normal or Rademacher (±1)."""
    v = randn_like(x, generator)
    return v if distribution == "gaussian" else 2 * (v >= 0).to(v.dtype) - 1
