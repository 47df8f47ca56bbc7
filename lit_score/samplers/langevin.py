r"""Langevin dynamics on a score: short-run / tempered Langevin for EBMs and annealed Langevin for NCSNs.

One step is x ← x + η·s(x) + s_z·z, z ~ N(0, I). With s_z = √(2η) it is the unadjusted Langevin
algorithm, whose chain samples p ∝ exp(−E) as η → 0. EBM practice (Du & Mordatch 2019; Nijkamp et al.
2019) decouples η from s_z (a "temperature"), clips the score per element and clamps x to the data range.
For a quadratic energy E = ½ a x² the chain is the AR(1) recursion x ← (1 − η a) x + s_z z, whose
stationary variance is s_z² / (1 − (1 − η a)²) — which is a⁻¹ + O(η) exactly when s_z² = 2η.

| symbol | meaning |
|---|---|
| η (``step_size``), s_z (``noise_scale``) | gradient step and noise scale of one Langevin step |
| σ₁ > … > σ_L | noise levels of the annealed ladder, σ_L the smallest |
| α_i = ε σ_i²/σ_L² | annealed step size at level i (Song & Ermon 2019, Algorithm 1) |
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number, check_range
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.utils import append_dims, per_sample_norm, randn_like


def langevin_step(
    x: Tensor,
    score: Tensor,
    step_size: Tensor | float,
    noise_scale: Tensor | float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One Langevin step x + η·s + s_z·z; η and s_z are floats or per-sample (B,) tensors."""
    if torch.is_tensor(step_size):
        step_size = append_dims(step_size, x)
    if torch.is_tensor(noise_scale):
        noise_scale = append_dims(noise_scale, x)
    elif noise_scale == 0:
        return x + step_size * score
    return x + step_size * score + noise_scale * randn_like(x, generator)


def _clamp(x: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


class Langevin(Sampler):
    """Short-run (tempered) Langevin dynamics (Du & Mordatch 2019; Nijkamp et al. 2019) on any ScoreFn.

    Without a process the score is called as ``score_fn(x, None)`` (an EBM's −∇E ignores time); with
    one it is evaluated at t_min (e.g. an NCSN's smallest σ).

    Args:
        num_steps: score evaluations; with ``denoise`` the last of them is noise-free (see below).
        step_size: η, multiplying the score.
        noise_scale: s_z, the standard deviation of the added noise (√(2η) is textbook Langevin).
        grad_clip: clamp the score elementwise to [−c, c] before every step (None: no clip).
        clamp: clamp x to [lo, hi] (the data range) after every step (None: no clamp).
        denoise: end with a noise-free step: Tweedie x̂₀ at t_min with a process, a plain gradient step
            x + η·s without one.
    """

    requires_process = False
    traverses_noise_levels = False

    def __init__(
        self,
        num_steps: int = 60,
        step_size: float = 10.0,
        noise_scale: float = 0.005,
        grad_clip: float | None = 0.03,
        clamp: tuple[float, float] | None = (-1.0, 1.0),
        denoise: bool = False,
    ) -> None:
        super().__init__(num_steps, None, denoise)
        check_number("step_size", step_size, gt=0.0)
        check_number("noise_scale", noise_scale, ge=0.0)
        check_number("grad_clip", grad_clip, gt=0.0, allow_none=True)
        check_range("clamp", clamp, allow_none=True)
        self.step_size, self.noise_scale, self.grad_clip = float(step_size), float(noise_scale), grad_clip
        self.clamp = tuple(float(c) for c in clamp) if clamp is not None else None

    @property
    def temperature(self) -> float:
        """T = s_z²/(2η): the chain is ULA on π_T ∝ exp(−E/T) (see :mod:`lit_score.samplers.mcmc`)."""
        return self.noise_scale**2 / (2 * self.step_size)

    def _score(self, score_fn: ScoreFn, x: Tensor, t: Tensor | None) -> Tensor:
        score = score_fn(x, t)
        return score if self.grad_clip is None else score.clamp(-self.grad_clip, self.grad_clip)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        t = full_like_t(x, process.t_min) if process is not None else None
        x = _clamp(x, self.clamp)
        for i in self.steps(self.num_steps - int(self.denoise), progress, "langevin"):
            score = self._score(score_fn, x, t)
            x = langevin_step(x, score, self.step_size, self.noise_scale, generator)
            x = _clamp(x, self.clamp)
            if callback is not None:
                callback({"step": i, "t": t, "x": x, "step_size": self.step_size, "noise_scale": self.noise_scale,
                          "grad_norm": per_sample_norm(score)})
        if not self.denoise:
            return x
        if process is not None:
            return _clamp(self.finish(score_fn, process, x, process.t_min), self.clamp)
        return _clamp(langevin_step(x, self._score(score_fn, x, t), self.step_size, 0.0), self.clamp)


class AnnealedLangevin(Sampler):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with the final denoising step.

    For each level σ_i of the process's grid (σ₁ largest), T = ``steps_per_level`` steps
    x ← x + α_i s(x, σ_i) + √(2α_i) z with α_i = ε σ_i²/σ_L²; with ``denoise`` a single Tweedie step
    x + σ_L² s(x, σ_L) (Jolicoeur-Martineau et al. 2021; Song & Ermon 2020) ends the chain. ``num_steps``
    (the base's field) is T; the NFE is L·T (+1 with ``denoise``).

    Args:
        steps_per_level: T, Langevin steps at every noise level.
        eps: ε, the step size at the smallest level σ_L (NCSN: 2e-5; NCSNv2 tunes it per dataset).
        denoise: apply the final denoising step once.
        clamp: clamp x to [lo, hi] after every step (None: no clamp, as in the paper).
        num_levels: L for a process without a ladder (a discrete process's own ``num_levels`` wins).
        spacing: time spacing of the grid for a continuous process (default: the process's own).
    """

    def __init__(
        self,
        steps_per_level: int = 100,
        eps: float = 2e-5,
        denoise: bool = True,
        clamp: tuple[float, float] | None = None,
        num_levels: int | None = None,
        spacing: Spacing | None = None,
    ) -> None:
        super().__init__(steps_per_level, spacing, denoise=False)
        check_number("eps", eps, gt=0.0)
        check_number("num_levels", num_levels, ge=2, integer=True, allow_none=True)
        check_range("clamp", clamp, allow_none=True)
        self.steps_per_level, self.eps, self.denoise, self.num_levels = steps_per_level, float(eps), denoise, num_levels
        self.clamp = tuple(float(c) for c in clamp) if clamp is not None else None

    def grid(self, process: NoiseProcess, device: torch.device) -> Tensor:
        """The L levels t₁ … t_L (σ decreasing): the process's own ladder, else ``num_levels`` grid points."""
        levels = process.num_levels or self.num_levels
        if levels is None:
            raise ValueError(
                f"{type(process).__name__} has no num_levels: give AnnealedLangevin(num_levels=...) for a"
                " continuous process"
            )
        return process.time_grid(levels - 1, self.spacing, device=device)

    def step_sizes(self, process: NoiseProcess, grid: Tensor) -> Tensor:
        """α_i = ε σ_i² / σ_L² for every level of ``grid``, shape (L,)."""
        sigma2 = process.sigma(grid) ** 2
        return self.eps * sigma2 / sigma2[-1]

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        grid = self.grid(process, x.device)
        alphas = self.step_sizes(process, grid).to(x.dtype)
        noise_scales = (2 * alphas).sqrt()
        for i in self.steps(len(grid), progress, "annealed langevin"):
            t, alpha_i, noise_i = full_like_t(x, grid[i]), alphas[i], noise_scales[i]
            for j in range(self.steps_per_level):
                x = _clamp(langevin_step(x, score_fn(x, t), alpha_i, noise_i, generator), self.clamp)
                if callback is not None:
                    callback({"step": i * self.steps_per_level + j, "level": i, "t": t, "x": x, "step_size": alpha_i})
        return _clamp(self.finish(score_fn, process, x, grid[-1]), self.clamp)


__all__ = ["AnnealedLangevin", "Langevin", "langevin_step"]
