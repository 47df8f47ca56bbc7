r"""SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations").

A guide x_g (a stroke painting, a corrupted or an out-of-domain sample) is noised to an intermediate time and any
sampler runs the rest of the way (DESIGN.md 3c: a sampler started at t₀ < t_max):

| symbol | meaning |
|---|---|
| s ∈ [0, 1] | ``strength``: how much of the process is re-run, measured in log-SNR |
| λ₀ = λ(t_min) + s·(λ(t_max) − λ(t_min)) | the start's log-SNR λ = log(α/σ), linear in the strength |
| t₀ = λ⁻¹(λ₀) | the start time (``process.t_from_log_snr``), snapped onto a discrete process's grid |
| x_{t₀} = α(t₀)·x_g + σ(t₀)·ε | the perturbed guide (the paper's Algorithm 1, line 2, for VE and VP alike) |
| x = sampler from x_{t₀} inside ``process.window(t₀, t_min)`` | the sampler, unchanged, over [t_min, t₀] |

The strength is read on the log-SNR axis so that it means the same noise fraction on every process: on the paper's VE
SDE (σ geometric in t) this is exactly its t₀ ∈ [0, 1]; a strength affine in t would put half of EDM's t = σ ∈ [0.002,
80] at σ = 40, erasing any guide at almost every strength. (diffusers' img2img on DDPM takes the step fraction,
linear in t, instead: on a VP schedule the two readings differ; pass a strength accordingly.) Conventions:

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
from lit_score.samplers.base import Draw, Sampler, ScoreFn, full_like_t


def sdedit_time(process: NoiseProcess, strength: float) -> float:
    """t₀ with log-SNR λ(t_min) + strength·(λ(t_max) − λ(t_min)), snapped onto a discrete process's grid (t_max
    exactly at strength 1, t_min at 0)."""
    strength = check_number("strength", strength, ge=0.0, le=1.0)
    if strength == 1:
        return process.t_max
    if strength == 0:
        return process.t_min
    ends = torch.tensor([process.t_min, process.t_max], dtype=torch.float64, device=process.device)
    lam_min, lam_max = process.log_snr(ends).tolist()  # λ at t_min (large) and at t_max (small)
    lam = torch.tensor([lam_min + strength * (lam_max - lam_min)], dtype=torch.float64, device=process.device)
    t0 = process.discretize(process.t_from_log_snr(lam).to(torch.float64))
    t0 = float(t0.item())
    return min(max(t0, process.t_min), process.t_max)


def sdedit(
    score_fn: ScoreFn,
    process: NoiseProcess,
    sampler: Sampler,
    guide: Tensor,
    strength: float,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Draw:
    """SDEdit (Meng et al. 2022, Algorithm 1): perturb ``guide`` to t₀ and run ``sampler`` from there to t_min.

    Any sampler that carries x through the noise levels works (grid or adaptive, ODE or SDE). Returns the run's
    :class:`~lit_score.samplers.base.Draw` (NFE 0 when the guide is returned unchanged). ε and the sampler draw from
    ``generator``.

    Args:
        guide: the guide x_g, any shape (B, ...).
        strength: s ∈ [0, 1]; 1 is ordinary sampling from the same noise, 0 returns the guide.
    """
    if not (sampler.requires_process and sampler.traverses_noise_levels):
        raise ValueError(f"{type(sampler).__name__} does not carry x through the noise levels: SDEdit needs a sampler"
                         " that does (e.g. Ancestral, DDIM, EulerMaruyama, DPMSolver)")
    t0 = sdedit_time(process, strength)
    if t0 <= process.t_min:
        return Draw(guide.clone(), 0, {})
    eps = torch.randn(guide.shape, generator=generator, device=guide.device, dtype=guide.dtype)
    if t0 == process.t_max:  # exactly process.prior_sample's draw
        x = process.prior_std * eps
    else:
        x = process.perturb(guide, full_like_t(guide, t0), eps)
    with process.window(t0, process.t_min):
        return sampler.draw(score_fn, x, process, generator=generator, progress=progress)


__all__ = ["sdedit", "sdedit_time"]
