r"""SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations").

A guide x_g (a stroke painting, a corrupted or an out-of-domain sample) is noised to an intermediate time and any
sampler runs the rest of the way (DESIGN.md 3c: a sampler started at t₀ < t_max):

| symbol | meaning |
|---|---|
| s ∈ [0, 1] | ``strength``: how much of the process is re-run (the paper's t₀ on its [0, 1] time axis) |
| t₀ = t_min + s·(t_max − t_min) | the start time, snapped onto a discrete process's grid (``process.discretize``) |
| x_{t₀} = α(t₀)·x_g + σ(t₀)·ε | the perturbed guide (the paper's Algorithm 1, line 2, for VE and VP alike) |
| x = sampler from x_{t₀} inside ``process.window(t₀, t_min)`` | the sampler, unchanged, over [t_min, t₀] |

t₀ is affine in the strength so that both ends are the process's own ends for every process (the paper's t₀ ∈ [0, 1]
assumes t_min ≈ 0, where the two readings agree; EDM's t is σ ∈ [0.002, 80] and DDPM's t_min is 1/N). Conventions:

- ``strength = 1`` starts from the prior draw σ(t_max)·ε with the same ε (the prior already neglects α(t_max)·x_g), so
  it is exactly ordinary sampling from ``process.prior_sample`` with the same generator;
- a strength whose t₀ is at or below t_min (0, or below DDPM's first step after snapping) returns the guide unchanged
  with no score evaluation;
- the sampler's ``num_steps`` span [t_min, t₀]: the NFE does not shrink with the strength (the paper's budget, steps
  proportional to t₀, is a sampler with ``num_steps`` scaled by the strength).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t


def sdedit_time(process: NoiseProcess, strength: float) -> float:
    """t₀ = t_min + strength·(t_max − t_min), snapped onto a discrete process's grid (t_max exactly at strength 1)."""
    strength = check_number("strength", strength, ge=0.0, le=1.0)
    if strength == 1:
        return process.t_max
    t0 = process.t_min + strength * (process.t_max - process.t_min)
    t0 = float(process.discretize(torch.tensor([t0], dtype=torch.float64, device=process.device)).item())
    return min(max(t0, process.t_min), process.t_max)


def sdedit(
    score_fn: ScoreFn,
    process: NoiseProcess,
    sampler: Sampler,
    guide: Tensor,
    strength: float,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """SDEdit (Meng et al. 2022, Algorithm 1): perturb ``guide`` to t₀ and run ``sampler`` from there to t_min.

    Any sampler that carries x through the noise levels works (grid or adaptive, ODE or SDE); the NFE of the run is
    ``sampler.nfe`` afterwards (0 when the guide is returned unchanged). ε and the sampler draw from ``generator``.

    Args:
        guide: the guide x_g, any shape (B, ...).
        strength: s ∈ [0, 1]; 1 is ordinary sampling from the same noise, 0 returns the guide.
    """
    if not (sampler.requires_process and sampler.traverses_noise_levels):
        raise ValueError(f"{type(sampler).__name__} does not carry x through the noise levels: SDEdit needs a sampler"
                         " that does (e.g. Ancestral, DDIM, EulerMaruyama, DPMSolver)")
    t0 = sdedit_time(process, strength)
    if t0 <= process.t_min:
        sampler.nfe = 0
        return guide.clone()
    eps = torch.randn(guide.shape, generator=generator, device=guide.device, dtype=guide.dtype)
    if t0 == process.t_max:  # exactly process.prior_sample's draw
        x = process.prior_std * eps
    else:
        x = process.perturb(guide, full_like_t(guide, t0), eps)
    with process.window(t0, process.t_min):
        return sampler(score_fn, x, process, generator=generator, progress=progress)


__all__ = ["sdedit", "sdedit_time"]
