r"""Inpainting / imputation as a step transform around any grid sampler (DESIGN.md 3c).

Values y are known where the mask m is 1 (m broadcasts to x: a (B, D) row of known coordinates, a (1, 1, H, W) image
mask, …). The sampler runs unchanged, one interval of its own grid at a time, and the known part of x is projected onto
its re-noised value in between; RePaint adds resampling (jumps back up the grid).

| symbol | meaning |
|---|---|
| t_0 > … > t_K | the sampler's grid ``sampler.grid(process)``; level ℓ ∈ {0..K} is the time t_{K−ℓ} (level 0 = t_min) |
| down ℓ + 1 → ℓ | one interval t → s of the sampler (``sampler.interval()`` inside ``process.window(t, s)``), then |
| | x ← m ⊙ (α(s)·y + σ(s)·z) + (1 − m) ⊙ x, z fresh (a draw of q(x_s | x₀ = y) for the known part) |
| up ℓ → ℓ + 1 | x_t = α_{t|s}·x_s + σ_{t|s}·z, the forward transition (Kingma et al. 2021, eq. 33), z fresh |
| j, r | ``jump_length``, ``resample``: RePaint's jump length and number of resamplings (:func:`repaint_schedule`) |

With r = 1 (no jumps) this is the replacement method of score_sde's inpainter (Song et al. 2021, App. I.2), with the
known part noised to the time the step arrives at (s; score_sde's code uses the step's start t). It is biased: the
unknown part only ever sees a noisy known part, never conditions on y through the score, so it is pulled towards the
marginal of the unknown coordinates (measured in tests/test_control_inverse.py). RePaint (Lugmayr et al. 2022) goes back
up j levels after reaching certain levels and comes down again, r times in all, so the known and generated parts
harmonise; the cost is about r times the NFE.

What changes inside the loop. The start is the prior draw with its known part projected too (α(t_max)·y + σ(t_max)·z).
Every interval is a separate call of ``sampler.interval()``, so a sampler keeps no state across intervals: multistep
DPM-Solver's history restarts each interval (it is DPM-Solver-1, i.e. DDIM, here; see ``DPMSolver.interval``), and
EDM's churn keeps its per-step γ. After the last interval the sampler's final denoise (``sampler.finish``: x̂₀ at t_min,
with its ``clip_denoised``; no churn before it) runs when it has one, and the known part is set to y exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess
from lit_score.samplers.ancestral import transition_variances
from lit_score.samplers.base import CountingScore, Draw, Sampler, ScoreFn, full_like_t
from lit_score.utils import append_dims, randn_like


def repaint_schedule(num_intervals: int, jump_length: int = 1, resample: int = 1) -> list[int]:
    """The levels RePaint visits (Lugmayr et al. 2022, Algorithm 1 and its "jump" schedule), one unit move at a time.

    From level K = ``num_intervals`` down to 0; at each level ℓ ∈ {0, j, 2j, …} below K − j, on the first r − 1
    arrivals, the walk goes back up j levels, so every block of j intervals is traversed r times (the top block
    once). Level 0 is t_min: the last block is resampled too (the indexing of diffusers' ``RePaintScheduler``).
    With r = 1 it is K, K − 1, …, 0.
    """
    check_number("num_intervals", num_intervals, ge=1, integer=True)
    check_number("jump_length", jump_length, ge=1, integer=True)
    check_number("resample", resample, ge=1, integer=True)
    jumps_left = {level: resample - 1 for level in range(0, num_intervals - jump_length, jump_length)}
    level, levels = num_intervals, [num_intervals]
    while level > 0:
        level -= 1
        levels.append(level)
        if jumps_left.get(level, 0) > 0:
            jumps_left[level] -= 1
            levels.extend(range(level + 1, level + jump_length + 1))
            level += jump_length
    return levels


def known_mask(mask: Tensor, y: Tensor) -> Tensor:
    """The mask as a bool tensor of y's shape; it must broadcast to y and hold only 0 and 1."""
    mask = torch.as_tensor(mask, device=y.device)
    try:
        shape = torch.broadcast_shapes(mask.shape, y.shape)
    except RuntimeError:
        shape = None
    if shape != y.shape:
        raise ValueError(f"the mask {tuple(mask.shape)} must broadcast to the data {tuple(y.shape)}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("the mask must hold only 0 (unknown) and 1 (known)")
    return mask.bool().expand(y.shape)


def project(process: NoiseProcess, x: Tensor, y: Tensor, mask: Tensor, t: float, generator=None) -> Tensor:
    """x with its known part replaced by a draw of q(x_t | x₀ = y) = N(α(t)·y, σ(t)²·I)."""
    return torch.where(mask, process.perturb(y, full_like_t(y, t), randn_like(y, generator)), x)


def renoise(process: NoiseProcess, x: Tensor, s: float, t: float, generator=None) -> Tensor:
    """A draw of q(x_t | x_s) for t noisier than s: α_{t|s}·x + σ_{t|s}·z (RePaint's jump back)."""
    alpha_ts, sigma_ts2, _ = transition_variances(process, full_like_t(x, t), full_like_t(x, s))
    return append_dims(alpha_ts, x) * x + append_dims(sigma_ts2.clamp_min(0).sqrt(), x) * randn_like(x, generator)


def inpaint(
    score_fn: ScoreFn,
    process: NoiseProcess,
    sampler: Sampler,
    y: Tensor,
    mask: Tensor,
    resample: int = 1,
    jump_length: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Draw:
    """Fill in the unknown part of ``y`` (``mask`` 0) with ``sampler``: replacement (r = 1) or RePaint (r > 1).

    The sampler must step along a fixed grid (``sampler.steps_on_grid``: Ancestral, DDIM, Euler–Maruyama, reverse
    diffusion, predictor–corrector, Euler, Heun, DPM-Solver, EDM Heun). All noise comes from ``generator``.

    Args:
        y: the data (B, ...); only its known part is read.
        mask: 1 where y is known, 0 where it is to be generated; broadcastable to y.
        resample: r, how many times each block of ``jump_length`` intervals is traversed (1: replacement).
        jump_length: j, the levels of one jump back (RePaint: r = 10, j = 10 on 250 steps); < the grid's intervals.

    Returns:
        the :class:`~lit_score.samplers.base.Draw`: x of y's shape with x = y exactly where the mask is 1, and the NFE
        summed over all intervals.
    """
    if not sampler.steps_on_grid:
        raise ValueError(f"{type(sampler).__name__} does not step along a fixed grid: inpainting needs one that does"
                         " (e.g. Ancestral, DDIM, EulerMaruyama, Heun)")
    check_number("resample", resample, ge=1, integer=True)
    check_number("jump_length", jump_length, ge=1, integer=True)
    mask = known_mask(mask, y)
    grid = sampler.grid(process, y.device).tolist()
    num_intervals = len(grid) - 1
    if resample > 1 and jump_length >= num_intervals:
        raise ValueError(f"jump_length must be below the sampler's {num_intervals} grid intervals to resample,"
                         f" got {jump_length}")
    levels = repaint_schedule(num_intervals, jump_length, resample)
    step, counted = sampler.interval(), CountingScore(score_fn)
    x = process.prior_sample(y.shape, generator, device=y.device).to(y.dtype)
    x = project(process, x, y, mask, grid[0], generator)
    for i in Sampler.steps(len(levels) - 1, progress, "inpaint"):
        t, s = grid[num_intervals - levels[i]], grid[num_intervals - levels[i + 1]]
        if levels[i + 1] < levels[i]:
            with process.window(t, s):
                x = step(counted, x, process, generator=generator)
            x = project(process, x, y, mask, s, generator)
        else:
            x = renoise(process, x, t, s, generator)
    x = sampler.finish(counted, process, x, torch.tensor(grid[-1], dtype=torch.float64))
    return Draw(torch.where(mask, y, x), counted.calls, {})


__all__ = ["inpaint", "known_mask", "project", "renoise", "repaint_schedule"]
