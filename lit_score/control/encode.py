r"""Probability-flow ODE encoding and decoding, and latent interpolation (DESIGN.md 3c).

The probability-flow ODE dx/dt = f·x − ½g²·∇log p_t (Song et al. 2021, eq. 13) is a bijection between p_{t_min} and
p_{t_max}; run forward in time it encodes data into the prior's latent space (DDIM's inversion, Song, Meng & Ermon
2021, sec. 5.4), backward it decodes. Encoding is an ODE sampler, unchanged, run inside
``process.window(t_min, t_max)``: only samplers that declare ``reversible`` (deterministic probability-flow solvers
whose updates hold with t increasing: Euler, Heun, AdaptiveODE, DPMSolver, DDIM with η = 0, EDMHeun without churn)
are accepted.

Both directions run the sampler without its final denoise (a Tweedie step has no inverse) and on the same grid, read
in opposite directions (the grids are symmetric in their ends), so ``decode(encode(x))`` returns x up to the solver's
discretisation error twice (or its tolerance, for AdaptiveODE). x is treated as a sample of p_{t_min}, i.e. data up to
the σ(t_min) the process starts from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess
from lit_score.samplers.base import Draw, Sampler, ScoreFn
from lit_score.utils import append_dims


def ode_sampler(sampler: Sampler) -> Sampler:
    """``sampler`` without its final denoise, after checking that it can run in both directions of time."""
    if not sampler.reversible:
        raise ValueError(f"{type(sampler).__name__} is not a reversible probability-flow ODE solver: encode with"
                         " DDIM(eta=0), DPMSolver, Heun, Euler, EDMHeun(S_churn=0) or AdaptiveODE")
    return sampler.with_settings(denoise=False) if sampler.denoise else sampler


def encode(score_fn: ScoreFn, process: NoiseProcess, sampler: Sampler, x0: Tensor, progress: bool = False) -> Draw:
    """z = x(t_max) of the probability-flow ODE from x(t_min) = x0, by a reversible ``sampler``: the run's
    :class:`~lit_score.samplers.base.Draw` (samples z, NFE)."""
    ode = ode_sampler(sampler)
    with process.window(process.t_min, process.t_max):
        return ode.draw(score_fn, x0, process, progress=progress)


def decode(score_fn: ScoreFn, process: NoiseProcess, sampler: Sampler, z: Tensor, progress: bool = False) -> Draw:
    """x0 = x(t_min) of the probability-flow ODE from x(t_max) = z: the inverse of :func:`encode` with the same
    ``sampler`` (its grid read t_max → t_min, no final denoise); the run's :class:`~lit_score.samplers.base.Draw`."""
    return ode_sampler(sampler).draw(score_fn, z, process, progress=progress)


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical interpolation per sample, sin((1−α)θ)/sin θ·z₀ + sin(αθ)/sin θ·z₁, θ the angle between z₀ and z₁.

    Gaussian latents in high dimension lie near a sphere; a straight line between two of them passes through
    lower-norm, atypical points, the arc does not (DDIM's interpolation, Song et al. 2021a, sec. 5.3 and App. D.5).
    ``alpha`` is a number or a per-sample (B,) tensor; parallel latents fall back to the straight line.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs latents of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)
    theta = cos.clamp(-1, 1).arccos()
    alpha = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device).expand_as(theta)
    sin = theta.sin()
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - alpha, ((1 - alpha) * theta).sin() / safe)
    w1 = torch.where(parallel, alpha, (alpha * theta).sin() / safe)
    return append_dims(w0, z0) * z0 + append_dims(w1, z1) * z1


def interpolate(
    score_fn: ScoreFn,
    process: NoiseProcess,
    sampler: Sampler,
    x_a: Tensor,
    x_b: Tensor,
    num: int = 8,
    progress: bool = False,
) -> Draw:
    """Paths (num, B, ...) from x_a to x_b through latent space: encode both, slerp at α = 0, 1/(num−1), …, 1, decode.

    The ends are decode(encode(x)) ≈ x. One encoding call (2B samples) and one decoding call (num·B samples); the
    :class:`~lit_score.samplers.base.Draw` holds the paths and the NFE of both calls, summed.
    """
    if num < 2:
        raise ValueError(f"num must be >= 2 (the two ends at least), got {num}")
    if x_a.shape != x_b.shape:
        raise ValueError(f"interpolate needs two batches of one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    encoded = encode(score_fn, process, sampler, torch.cat([x_a, x_b]), progress)
    z_a, z_b = encoded.samples.chunk(2)
    alphas = torch.linspace(0, 1, num, dtype=z_a.dtype, device=z_a.device)
    path = torch.stack([slerp(z_a, z_b, alpha) for alpha in alphas])  # (num, B, ...)
    decoded = decode(score_fn, process, sampler, path.flatten(0, 1), progress)
    return Draw(decoded.samples.reshape(path.shape), encoded.nfe + decoded.nfe, {})


__all__ = ["decode", "encode", "interpolate", "ode_sampler", "slerp"]
