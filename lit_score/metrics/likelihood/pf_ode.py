r"""The exact likelihood along the probability-flow ODE (change of variables), in nats and bits per dimension.

PF-ODE (Song et al. 2021, Appendix D.2; Chen et al. 2018; Grathwohl et al. 2019, FFJORD): integrate
dx/dt = v(x, t) and d/dt ∫div = ∇·v(x, t) jointly from t_min to t_max, then

    log p_{t_min}(x) = log p_T(x_T) + ∫_{t_min}^{t_max} ∇·v(x_t, t) dt,

with log p_T the process prior. ∇·v is exact (one backward pass per dimension) or the Hutchinson–Skilling
estimate E_ε[εᵀ(∂v/∂x)ε] with probes drawn once per call (so the integral estimate is unbiased).

Bits per dimension (D values per sample):

| ``dequantize`` | data | NLL in nats | bits/dim |
|---|---|---|---|
| ``none`` | continuous x | −log p(x) | −log p(x) / (D ln 2) |
| ``uniform8bit`` | x = 2u/255 − 1, u ∈ {0..255} | −log p(x̃) + D ln 128 | −log p(x̃)/(D ln 2) + 7 |

For 8-bit data the model density is evaluated at x̃ = 2(u + w)/256 − 1, w ~ U[0, 1)^D, the image of the
dequantised ũ = u + w ∈ [0, 256) under the affine map onto [−1, 1) with Jacobian 2/256 = 1/128 per
dimension; so p_ũ(ũ) = p(x̃)/128^D and, by Jensen, −log P(u) ≤ E_w[−log p(x̃)] + D ln 128 (Theis et al.
2016; the same offset of 7 bits that score_sde adds for data centred on [−1, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_score.metrics.likelihood.estimate import LikelihoodEstimate
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import ScoreFn, full_like_t, probability_flow_velocity
from lit_score.samplers.ode import solve_ode, solve_ode_fixed
from lit_score.utils import batch_sum


@dataclass
class LikelihoodResult:
    """Per-sample NLL ``nats`` (B,) and ``bits_per_dim`` (B,), ``log_prob`` (B,) = log p at the evaluated point
    (the dequantised x̃ for 8-bit data), the solver's ``nfe``, and the protocol that produced them."""

    nats: Tensor
    bits_per_dim: Tensor
    log_prob: Tensor
    nfe: int
    divergence: str
    probe: str | None
    num_probes: int
    dequantize: str
    solver: str
    rtol: float | None
    atol: float | None
    fixed_steps: int | None

    @property
    def protocol(self) -> dict[str, object]:
        """How the numbers were obtained (log it beside them)."""
        names = ("divergence", "probe", "num_probes", "dequantize", "solver", "rtol", "atol", "fixed_steps", "nfe")
        return {n: getattr(self, n) for n in names}

    def estimate(self) -> LikelihoodEstimate:
        """The common record of every likelihood estimator."""
        settings = {k: v for k, v in self.protocol.items() if k not in ("dequantize", "nfe")}
        return LikelihoodEstimate("pf_ode", self.nats, self.bits_per_dim, self.dequantize, self.nfe, settings)


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """∇·v = Σ_d ∂v_d/∂x_d by one backward pass per dimension, shape (B,)."""
    flat = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    for d in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)
        div = div + grad.reshape(flat.shape)[:, d]
    return div


def hutchinson_divergence(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson–Skilling estimate mean_k ε_kᵀ(∂v/∂x)ε_k for probes (K, *x.shape), shape (B,)."""
    total = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    for k, eps in enumerate(probes):
        (grad,) = torch.autograd.grad(batch_sum(v * eps).sum(), x, retain_graph=k < len(probes) - 1)
        total = total + batch_sum(grad * eps)
    return total / len(probes)


def draw_probes(x: Tensor, kind: str, num: int, generator: torch.Generator | None) -> Tensor:
    """``num`` probes shaped like x with E[εεᵀ] = I (gaussian or rademacher), drawn once, on x's device."""
    device = generator.device if generator is not None else x.device
    eps = torch.randn((num, *x.shape), generator=generator, device=device, dtype=x.dtype).to(x.device)
    if kind == "rademacher":
        return 2 * (eps >= 0).to(x.dtype) - 1
    if kind != "gaussian":
        raise ValueError(f"unknown probe {kind!r}: use gaussian or rademacher")
    return eps


def dequantize_8bit(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x = 2u/255 − 1 on the 8-bit grid ↦ x̃ = 2(u + w)/256 − 1, w ~ U[0, 1) (see the module notes)."""
    u = torch.round((x + 1) * 127.5).clamp(0, 255)
    device = generator.device if generator is not None else x.device
    w = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return (u + w) / 128 - 1


def _check_settings(divergence: str, dequantize: str, num_probes: int, fixed_steps: int | None) -> None:
    """One-line refusals of settings :func:`log_likelihood` cannot run with."""
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"unknown divergence {divergence!r}: use exact or hutchinson")
    if dequantize not in ("none", "uniform8bit"):
        raise ValueError(f"unknown dequantize {dequantize!r}: use none or uniform8bit")
    if num_probes < 1 or (fixed_steps is not None and fixed_steps < 1):
        raise ValueError(f"need num_probes >= 1 and fixed_steps >= 1 (or None), got {num_probes}, {fixed_steps}")


class _AugmentedDynamics:
    """d/dt [x, ∫div] = [v(x, t), ∇·v(x, t)] on the flat state (B, D + 1) of samples shaped ``shape`` (FFJORD's
    augmented ODE), with ∇·v exact (``probes`` None) or Hutchinson's; ``nfe`` counts the network evaluations."""

    def __init__(self, score_fn: ScoreFn, process: NoiseProcess, shape: torch.Size, probes: Tensor | None) -> None:
        self.score_fn, self.process, self.shape, self.probes = score_fn, process, shape, probes
        self.batch, self.dim = shape[0], math.prod(shape[1:])
        self.nfe = 0

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        with torch.enable_grad():
            x_t = y[:, : self.dim].reshape(self.shape).detach().requires_grad_(True)
            v = probability_flow_velocity(self.score_fn, self.process, x_t, full_like_t(x_t, t))
            div = exact_divergence(v, x_t) if self.probes is None else hutchinson_divergence(v, x_t, self.probes)
        return torch.cat([v.detach().reshape(self.batch, self.dim), div.detach()[:, None]], dim=1)


def _integrate(dynamics: _AugmentedDynamics, y0: Tensor, process: NoiseProcess, rtol: float, atol: float,
               fixed_steps: int | None, fixed_method: str) -> Tensor:
    """The state at t_max from y0 at t_min: adaptive dopri5 at (rtol, atol), or ``fixed_steps`` of ``fixed_method``
    on the process's time grid."""
    if fixed_steps is None:
        return solve_ode(dynamics, y0, process.t_min, process.t_max, rtol=rtol, atol=atol)[0]
    ts = process.time_grid(fixed_steps, device=y0.device).flip(0)  # the process's spacing, t_min → t_max
    return solve_ode_fixed(dynamics, y0, ts, fixed_method)


def log_likelihood(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: Tensor,
    *,
    divergence: Literal["exact", "hutchinson"] = "hutchinson",
    probe: Literal["gaussian", "rademacher"] = "rademacher",
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    fixed_steps: int | None = None,
    fixed_method: Literal["euler", "heun", "rk4"] = "rk4",
    dequantize: Literal["none", "uniform8bit"] = "none",
    generator: torch.Generator | None = None,
) -> LikelihoodResult:
    """NLL by the probability-flow ODE (Song et al. 2021, App. D.2): adaptive (rtol, atol) or ``fixed_steps`` of
    ``fixed_method`` on the process's time grid (the same work on every DDP rank); any data shape; inference-safe."""
    _check_settings(divergence, dequantize, num_probes, fixed_steps)
    batch, dim = x.shape[0], x[0].numel()
    with torch.inference_mode(False), torch.no_grad():
        x = x.detach().clone()
        if dequantize == "uniform8bit":
            x = dequantize_8bit(x, generator)
        probes = draw_probes(x, probe, num_probes, generator) if divergence == "hutchinson" else None
        dynamics = _AugmentedDynamics(score_fn, process, x.shape, probes)
        y0 = torch.cat([x.reshape(batch, dim), torch.zeros(batch, 1, device=x.device, dtype=x.dtype)], dim=1)
        y1 = _integrate(dynamics, y0, process, rtol, atol, fixed_steps, fixed_method)
        log_prob = process.prior_log_prob(y1[:, :dim].reshape(x.shape)) + y1[:, dim]
    offset = dim * math.log(128) if dequantize == "uniform8bit" else 0.0
    nats = -log_prob + offset
    return LikelihoodResult(
        nats=nats,
        bits_per_dim=nats / (dim * math.log(2)),
        log_prob=log_prob,
        nfe=dynamics.nfe,
        divergence=divergence,
        probe=probe if divergence == "hutchinson" else None,
        num_probes=num_probes if divergence == "hutchinson" else 0,
        dequantize=dequantize,
        solver="dopri5" if fixed_steps is None else fixed_method,
        rtol=rtol if fixed_steps is None else None,
        atol=atol if fixed_steps is None else None,
        fixed_steps=fixed_steps,
    )
