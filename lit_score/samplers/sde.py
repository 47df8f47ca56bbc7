r"""Reverse-SDE predictors: Euler–Maruyama and reverse diffusion (Song et al. 2021), for any process.

For a step t → s < t with Δ = t − s:

| sampler | x_mean | x_s |
|---|---|---|
| Euler–Maruyama | x − Δ·[f(t)·x − g(t)²·s_θ(x, t)] | x_mean + g(t)·√Δ·z |
| reverse diffusion | x − (α_{t|s} − 1)·x + σ²_{t|s}·s_θ(x, t) | x_mean + σ_{t|s}·z |

Reverse diffusion discretises the reverse SDE with the forward process's own one-step discretisation
x_t = x_s + f_i(x_s) + G_i·z (Song et al. 2021, App. E: x_s = x_t − f_i(x_t) + G_i² s_θ + G_i z). For a
general linear process we take the exact forward transition q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I) with
α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α_{t|s}² σ_s² (Kingma et al. 2021, eq. 33), i.e. f_i(x) = (α_{t|s} − 1)x
and G_i = σ_{t|s}. On DDPM's grid this is score_sde's VP discretisation (α_{t|s}² = 1 − β_i, G_i² = β_i); on
a VE process it is SMLD's (f_i = 0, G_i² = σ_t² − σ_s²).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess
from lit_score.samplers.ancestral import transition_variances
from lit_score.samplers.base import Sampler, ScoreFn
from lit_score.samplers.stepping import sample_on_grid
from lit_score.utils import append_dims, randn_like


def euler_maruyama_step(
    score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One Euler–Maruyama step t → s of the reverse SDE dx = [f·x − g²·∇log p_t] dt + g dw̄; (x_s, x_mean)."""
    dt = append_dims(s - t, x)
    x_mean = x + dt * process.reverse_drift(x, t, score_fn(x, t))
    return x_mean + append_dims(process.diffusion(t), x) * (-dt).sqrt() * randn_like(x, generator), x_mean


def reverse_diffusion_step(
    score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One reverse-diffusion predictor step t → s (Song et al. 2021, App. E); (x_s, x_mean)."""
    alpha_ts, sigma_ts2, _ = transition_variances(process, t, s)
    x_mean = append_dims(2 - alpha_ts, x) * x + append_dims(sigma_ts2, x) * score_fn(x, t)
    return x_mean + append_dims(sigma_ts2.clamp_min(0).sqrt(), x) * randn_like(x, generator), x_mean


class EulerMaruyama(Sampler):
    """Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6); 1 NFE per step."""

    steps_on_grid = True

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step t → s; returns (x_s, x_mean)."""
        return euler_maruyama_step(score_fn, process, x, t, s, generator)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="euler-maruyama")


class ReverseDiffusion(Sampler):
    """The reverse-diffusion predictor (Song et al. 2021, App. E) with the exact forward transition; 1 NFE per step."""

    steps_on_grid = True

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step t → s; returns (x_s, x_mean)."""
        return reverse_diffusion_step(score_fn, process, x, t, s, generator)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="reverse diffusion")


__all__ = ["EulerMaruyama", "ReverseDiffusion", "euler_maruyama_step", "reverse_diffusion_step"]
