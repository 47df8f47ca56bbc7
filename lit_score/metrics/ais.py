r"""Annealed importance sampling (Neal 2001) for the log partition function of an energy, with a bootstrap interval.

| symbol | meaning |
|---|---|
| E(x) | the energy; the target density is p(x) = exp(−E(x)) / Z on ℝᴰ or on the box [lo, hi]ᴰ |
| p₀(x) = exp(−U₀(x)) | normalised base: N(0, σ₀²I), U₀ = ‖x‖²/2σ₀² + (D/2)·log 2πσ₀²; or uniform, U₀ = D·log(hi − lo) |
| 0 = β₀ < β₁ < … < β_K = 1 | the ladder; f_k(x) = exp(−β_k E(x) − (1 − β_k) U₀(x)), so Z₀ = 1 and Z_K = Z |
| log w = Σ_k (β_k − β_{k−1})·(U₀(x_{k−1}) − E(x_{k−1})) | log weight of a chain; x_k from MALA leaving f_k invariant |
| log Ẑ = log mean exp(log w) | over M chains: E[Ẑ] = Z, so E[log Ẑ] ≤ log Z (Jensen): a stochastic lower bound |

The interval is the 2.5–97.5 % percentile range of log Ẑ over bootstrap resamples of the chains: it measures the Monte
Carlo spread of the estimate, not the Jensen gap (which shrinks with more levels). ``weights_ess`` = (Σw)²/Σw² tells
how many chains carry the estimate; a small value means too few levels. The MALA step is adapted per level toward an
acceptance of 0.574 from the previous level's mean acceptance (a Robbins–Monro step on log η): each kernel still leaves
its f_k invariant; ``adapt=False`` keeps the step fixed. The ladder is Grosse et al. (2013)'s sigmoid schedule
(δ = 4) or linear in β.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lit_score.checks import check_number, check_range
from lit_score.samplers.mcmc import mala_step
from lit_score.scores.energy import energy_gradient
from lit_score.utils import batch_sum, rand


@dataclass
class AISResult:
    """log Ẑ with its bootstrap interval, per-chain log weights, and how they were obtained."""

    log_z: float
    interval: tuple[float, float]
    log_weights: Tensor
    weights_ess: float
    acceptance: float
    nfe: int
    settings: dict = field(default_factory=dict)


def beta_schedule(num_levels: int, schedule: Literal["sigmoid", "linear"] = "sigmoid", delta: float = 4.0) -> Tensor:
    """β₀ = 0 < … < β_K = 1 (float64): linear, or Grosse et al. (2013)'s sigmoid σ(δ(2k/K − 1)) rescaled to [0, 1]."""
    k = torch.linspace(0, 1, num_levels + 1, dtype=torch.float64)
    if schedule == "linear":
        return k
    if schedule != "sigmoid":
        raise ValueError(f"unknown AIS schedule {schedule!r}: use sigmoid or linear")
    s = torch.sigmoid(delta * (2 * k - 1))
    return (s - s[0]) / (s[-1] - s[0])


def bootstrap_interval(log_weights: Tensor, draws: int = 1000, generator: torch.Generator | None = None):
    """2.5 / 97.5 % percentiles of log mean exp over chains resampled with replacement."""
    m = log_weights.shape[0]
    index = torch.randint(m, (draws, m), generator=generator)
    log_z = torch.logsumexp(log_weights.cpu()[index], dim=1) - math.log(m)
    return float(log_z.quantile(0.025)), float(log_z.quantile(0.975))


def _check_settings(num_chains, num_levels, steps_per_level, step_size, base, base_std, bounds):
    """One-line refusals of settings AIS cannot run with; returns the checked ``bounds``."""
    for name, value in (("num_chains", num_chains), ("num_levels", num_levels), ("steps_per_level", steps_per_level)):
        check_number(name, value, ge=1, integer=True)
    check_number("step_size", step_size, gt=0.0)
    check_number("base_std", base_std, gt=0.0)
    bounds = check_range("bounds", bounds, allow_none=True)
    if base not in ("gaussian", "uniform"):
        raise ValueError(f"unknown AIS base {base!r}: use gaussian or uniform")
    if base == "uniform" and bounds is None:
        raise ValueError("a uniform AIS base needs bounds (lo, hi)")
    return bounds


def ais_base(base: str, shape: tuple[int, ...], base_std: float, bounds: tuple[float, float] | None,
             generator: torch.Generator | None, device) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, Tensor]]]:
    """The normalised base of AIS: starting chains (``shape`` = (chains, *sample shape)) and its energy and gradient
    ``u(y) -> (U (B,), ∇U)`` — uniform on the box [lo, hi]ᴰ (U = D log(hi − lo)), or N(0, base_std²) (clamped into
    ``bounds`` when given)."""
    dim = math.prod(shape[1:])
    if base == "uniform":
        lo, hi = bounds
        x = lo + (hi - lo) * rand(shape, generator, device)
        log_volume = dim * math.log(hi - lo)

        def base_energy(y: Tensor) -> tuple[Tensor, Tensor]:
            return torch.full((y.shape[0],), log_volume, device=y.device, dtype=y.dtype), torch.zeros_like(y)
    else:
        x = base_std * torch.randn(shape, generator=generator, device=device)
        if bounds is not None:
            x = x.clamp(*bounds)  # a start outside the box has f = 0 there; the kernels then keep it inside
        norm = 0.5 * dim * math.log(2 * math.pi * base_std**2)

        def base_energy(y: Tensor) -> tuple[Tensor, Tensor]:
            return batch_sum(y**2) / (2 * base_std**2) + norm, y / base_std**2
    return x, base_energy


class _Chains(NamedTuple):
    """The chains x with their target energy E(x), base energy U₀(x) and the gradients of both."""

    x: Tensor
    energy: Tensor
    grad: Tensor
    base: Tensor
    base_grad: Tensor


def _anneal_level(target, base_energy, chains: _Chains, beta: float, step: float, steps_per_level: int,
                  bounds: tuple[float, float] | None, adapt: bool, accepted: Tensor,
                  generator: torch.Generator | None) -> tuple[_Chains, float, Tensor]:
    """One rung β of the ladder: ``steps_per_level`` MALA steps leaving f_k = exp(−β E − (1 − β) U₀) invariant, the
    step adapted toward an acceptance of 0.574 after each when ``adapt``; returns the chains, the step and
    ``accepted`` plus this rung's acceptances."""
    proposed: dict[str, Tensor] = {}

    def level(y: Tensor) -> tuple[Tensor, Tensor]:
        e, g = target(y)
        b, gb = base_energy(y)
        proposed.update(e=e, g=g, b=b, gb=gb)  # kept, so an accepted move needs no second evaluation
        return beta * e + (1 - beta) * b, -(beta * g + (1 - beta) * gb)

    x, energy, grad, u0, grad0 = chains
    mixed_energy = beta * energy + (1 - beta) * u0
    mixed_score = -(beta * grad + (1 - beta) * grad0)
    for _ in range(steps_per_level):
        x, mixed_energy, mixed_score, accept, alpha = mala_step(level, x, mixed_energy, mixed_score, step, 1.0,
                                                                bounds, generator)
        wide = accept.reshape(-1, *([1] * (x.ndim - 1)))
        energy, u0 = torch.where(accept, proposed["e"], energy), torch.where(accept, proposed["b"], u0)
        grad, grad0 = torch.where(wide, proposed["g"], grad), torch.where(wide, proposed["gb"], grad0)
        accepted = accepted + alpha.mean()
        if adapt:  # the step is a host float: one sync per level, only when adapting
            step = step * math.exp(0.1 * (float(alpha.mean()) - 0.574))
    return _Chains(x, energy, grad, u0, grad0), step, accepted


def ais_log_partition(
    energy_fn,
    shape: tuple[int, ...],
    num_chains: int = 256,
    num_levels: int = 1000,
    steps_per_level: int = 1,
    step_size: float = 0.05,
    base: Literal["gaussian", "uniform"] = "gaussian",
    base_std: float = 1.0,
    bounds: tuple[float, float] | None = None,
    schedule: Literal["sigmoid", "linear"] = "sigmoid",
    adapt: bool = True,
    bootstrap: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AISResult:
    """log Z of exp(−E) by AIS from a normalised base (see the module docstring); ``energy_fn(x) -> (B,)``.

    With ``bounds`` the target is restricted to the box [lo, hi]ᴰ (the MALA kernels reject moves out of it); the
    uniform base needs them.
    """
    bounds = _check_settings(num_chains, num_levels, steps_per_level, step_size, base, base_std, bounds)
    x, base_energy = ais_base(base, (num_chains, *shape), base_std, bounds, generator, device)
    betas = beta_schedule(num_levels, schedule).tolist()
    nfe = 0

    def target(y: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        energy, grad = energy_gradient(lambda z, _t: energy_fn(z), y)
        return energy.detach(), grad

    chains = _Chains(x, *target(x), *base_energy(x))
    log_w = torch.zeros(num_chains, dtype=torch.float64, device=x.device)
    step, accepted = float(step_size), torch.zeros((), device=x.device)
    for k in range(1, num_levels + 1):
        log_w = log_w + (betas[k] - betas[k - 1]) * (chains.base - chains.energy).double()
        chains, step, accepted = _anneal_level(target, base_energy, chains, betas[k], step, steps_per_level, bounds,
                                               adapt, accepted, generator)
    settings = {"num_chains": num_chains, "num_levels": num_levels, "steps_per_level": steps_per_level,
                "base": base, "base_std": base_std if base == "gaussian" else None,
                "bounds": list(bounds) if bounds is not None else None, "schedule": schedule, "kernel": "MALA",
                "adapt": adapt, "final_step_size": step, "bootstrap": bootstrap}
    return ais_result(log_w, bootstrap, float(accepted) / (num_levels * steps_per_level), nfe, settings)


def ais_result(log_w: Tensor, bootstrap: int, acceptance: float, nfe: int, settings: dict) -> AISResult:
    """log Ẑ = log mean exp(log w) over the chains, with the weights' effective sample size and a bootstrap
    interval of log Ẑ (fixed seed, so a result is reproducible)."""
    log_z = float(torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0]))
    weights = (log_w - log_w.max()).exp()
    ess = float(weights.sum() ** 2 / (weights**2).sum())
    interval = bootstrap_interval(log_w, bootstrap, torch.Generator().manual_seed(0))
    return AISResult(log_z, interval, log_w.cpu(), ess, acceptance, nfe, settings)
