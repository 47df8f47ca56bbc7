r"""Sampling with a flow map: k jumps along a grid, with optional re-noising between them (DESIGN.md §3d).

On the grid t_0 = t_max > t_1 > … > t_k = t_min of ``process.time_grid(k, spacing)``, jump i goes from t_i towards
t_{i+1} with one evaluation of a two-time model (``denoise(x, t, s)``, then the DDIM form of
:func:`~lit_score.scores.flow_map.flow_map_jump`). With γ ∈ [0, 1] (CTM's γ-sampling, Kim et al. 2023, Algorithm 4):

| symbol | meaning |
|---|---|
| σ̃ = σ/α = e^{−λ} | the noise-to-signal ratio (EDM's σ) |
| s = t_{i+1} | the next grid time |
| s′ with σ̃_{s′} = √(1 − γ²)·σ̃_s | where the jump lands: λ_{s′} = λ_s − ½ log(1 − γ²), kept in [t_min, s] |
| x_{s′} = X_{t_i→s′}(x) | the deterministic jump |
| x_s = (α_s/α_{s′})·x_{s′} + √(σ_s² − α_s² σ̃_{s′}²)·z, z ~ N(0, I) | re-noising with fresh noise |

If x_{s′} = α_{s′} x₀ + σ_{s′} ε has the marginal p_{s′}, then x_s = α_s x₀ + noise of variance
α_s² σ̃_{s′}² + σ_s² − α_s² σ̃_{s′}² = σ_s²: the marginal p_s, for any data, any process and any s′ ≤ s; with
σ̃_{s′} = √(1 − γ²)·σ̃_s the fresh noise is exactly γ·σ_s·z. So γ = 0 is deterministic jumps t_i → t_{i+1} (k jumps of an
exact flow map equal one); γ = 1 jumps to the data end t_min and re-noises to t_{i+1}, consistency models' multistep
sampler (Song et al. 2023, Algorithm 1); in between, CTM's γ-sampling. The last jump lands on t_min and is not
re-noised; there is no extra denoising step, so the NFE is the number of jumps. On a discrete process (DDPM's chain)
s′ is snapped onto the trained grid (``process.discretize``); the re-noising formula holds for any s′ ≤ s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn
from lit_score.samplers.stepping import sample_on_grid
from lit_score.scores.flow_map import flow_map_jump
from lit_score.scores.function import as_score_function
from lit_score.utils import append_dims, randn_like


def jump_time(process: NoiseProcess, s: Tensor, gamma: float) -> Tensor:
    """s′ (B,) with σ̃_{s′} = √(1 − γ²)·σ̃_s (module docstring), in [t_min, s]; s itself for γ = 0."""
    if gamma == 0:
        return s
    s64 = s.to(torch.float64)
    if gamma == 1:
        target = torch.full_like(s64, process.t_min)
    else:
        target = process.discretize(process.t_from_log_snr(process.log_snr(s64) - 0.5 * math.log1p(-gamma**2)))
    return torch.minimum(target.clamp_min(process.t_min), s64).to(s.dtype)


def renoise(process: NoiseProcess, x: Tensor, s_jump: Tensor, s: Tensor, generator=None) -> tuple[Tensor, Tensor]:
    """(x_s, its mean): x_s = (α_s/α_{s′})·x_{s′} + √(σ_s² − α_s² σ̃_{s′}²)·z, which takes the marginal p_{s′} to p_s
    (module docstring); the noise is 0 where s′ = s."""
    scale = process.alpha(s) / process.alpha(s_jump)
    std = (process.sigma(s) ** 2 - (scale * process.sigma(s_jump)) ** 2).clamp_min(0).sqrt()
    mean = append_dims(scale, x) * x
    return mean + append_dims(std, x) * randn_like(x, generator), mean


def require_two_time(score_fn: ScoreFn, sampler: object) -> None:
    """Refuse, in one line, a model that does not declare ``two_time`` (a one-time score model or a plain score)."""
    if not as_score_function(score_fn).two_time:
        raise ValueError(f"{type(sampler).__name__} needs a two-time model (a FlowMapScore: denoise(x, t, s) and"
                         " flow_map(x, t, s)); this model takes one time: sample it with an ODE or SDE sampler, or"
                         " distil a two-time student from it")


class FlowMapSampler(Sampler):
    """k jumps of a flow map X_{t→s} on the process's grid, re-noised by γ between them (module docstring).

    Args:
        num_jumps: k, the number of jumps (= network evaluations) from t_max to t_min.
        spacing: the grid's time spacing (default: the process's own).
        gamma: γ ∈ [0, 1]: 0 deterministic jumps, 1 consistency models' multistep sampler, between: CTM's γ-sampling.
        times: the k − 1 times between t_max and t_min where jumps land (decreasing, in the process's time units),
            instead of the spacing's grid. A model distilled on a discrete grid (consistency distillation's N Karras
            times) is accurate at those times only, so its multistep sampler should re-noise to grid times, as
            consistency models' sampler takes its ``ts`` from the training grid.
    """

    #: the capability it asks of the model: ``two_time`` (``denoise(x, t, s)``), refused in one line otherwise
    requires_two_time: bool = True

    def __init__(self, num_jumps: int = 1, spacing: Spacing | None = None, gamma: float = 0.0,
                 times: list[float] | None = None) -> None:
        check_number("num_jumps", num_jumps, ge=1, integer=True)
        check_number("gamma", gamma, ge=0.0, le=1.0)
        if times is not None:
            times = [float(t) for t in times]
            if len(times) != num_jumps - 1:
                raise ValueError(f"times gives the {num_jumps - 1} time(s) between t_max and t_min of {num_jumps}"
                                 f" jumps; got {len(times)}: pass num_jumps {len(times) + 1} or {num_jumps - 1}"
                                 " time(s)")
            if any(not math.isfinite(t) for t in times) or any(a <= b for a, b in zip(times, times[1:])):
                raise ValueError(f"times must be finite and strictly decreasing (t_max → t_min), got {times}")
        super().__init__(num_jumps, spacing, denoise=False)
        self.num_jumps, self.gamma, self.times = num_jumps, float(gamma), times

    def grid(self, process: NoiseProcess, device: torch.device) -> Tensor:
        """t_max, the given ``times`` (or the spacing's grid), t_min."""
        if self.times is None:
            return super().grid(process, device)
        if self.times and not process.t_min < min(self.times) <= max(self.times) < process.t_max:
            raise ValueError(f"times {self.times} must lie strictly between t_min {process.t_min:g} and t_max"
                             f" {process.t_max:g} of the model's process")
        times = torch.tensor([process.t_max, *self.times, process.t_min], dtype=torch.float64, device=process.device)
        return process.discretize(times).to(device)

    def advance(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One jump t → s′ and its re-noising to s: (x_s, {``x_mean``: x_s without fresh noise, ``denoised``: D̂})."""
        s_jump = jump_time(process, s, self.gamma)
        denoised = score_fn.denoise(x, t, s_jump)
        x = flow_map_jump(process, x, t, s_jump, denoised)
        if self.gamma == 0:
            return x, {"x_mean": x, "denoised": denoised}
        x, x_mean = renoise(process, x, s_jump, s, generator)
        return x, {"x_mean": x_mean, "denoised": denoised}

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        require_two_time(score_fn, self)
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="flow map")


__all__ = ["FlowMapSampler", "jump_time", "renoise", "require_two_time"]
