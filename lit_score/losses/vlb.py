"""The terms of DDPM's variational bound (Ho et al. 2020, §3.3; Nichol & Dhariwal 2021, eq. 4–5): Gaussian KL, the
discretised Gaussian decoder, and one bound term per sample. Maths shared by the hybrid and VDM losses and by the
:func:`~lit_score.metrics.likelihood.ddpm_vlb` metric; it lives with the losses, below the metrics that report it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess
from lit_score.samplers.ancestral import learned_range_variance, posterior_mean, transition_variances
from lit_score.utils import append_dims, batch_sum


def wide(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample (B,) tensor broadcast to x's full shape."""
    return append_dims(v, x).expand_as(x)



def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, var1) ‖ N(mean2, var2)) in nats."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise log P(bin of x) under N(mean, std²) for 8-bit data on [−1, 1] (bins of width 2/255; the end bins
    extend to ±∞): Ho et al. 2020, §3.3, eq. 13 — with the exact normal CDF, and the tail side for precision."""
    half = 1 / 255
    z_hi, z_lo = (x - mean + half) / std, (x - mean - half) / std
    ndtr = torch.special.ndtr  # Φ(z_hi) − Φ(z_lo), computed on the side of the mean where it does not cancel
    centre = torch.where(x > mean, ndtr(-z_lo) - ndtr(-z_hi), ndtr(z_hi) - ndtr(z_lo))
    log_centre = torch.log(centre.clamp_min(1e-12))
    return torch.where(
        x < -0.999, torch.special.log_ndtr(z_hi), torch.where(x > 0.999, torch.special.log_ndtr(-z_lo), log_centre)
    )


def step_kl(
    process: NoiseProcess,
    x0: Tensor,
    x_t: Tensor,
    x0_hat: Tensor,
    t: Tensor,
    s: Tensor,
    *,
    variance: Literal["beta_tilde", "beta", "learned"] = "beta_tilde",
    frac: Tensor | None = None,
) -> Tensor:
    """Elementwise KL(q(x_s | x_t, x₀) ‖ p(x_s | x_t)) in nats for any s < t (per-sample (B,) times): the model's mean
    μ̃(x_t, x̂₀) with the variance β̃_{t,s}, σ²_{t|s} or the learned interpolation between them. One step of DDPM's bound
    (s = t − 1/N, :func:`vlb_step_bpd`) or a strided one (Watson et al. 2021's L(t → s))."""
    _, sigma_ts2, beta_tilde = transition_variances(process, t, s)
    if variance == "learned":
        model_var = learned_range_variance(frac, sigma_ts2, beta_tilde)
    else:
        model_var = wide(beta_tilde if variance == "beta_tilde" else sigma_ts2, x0)
    true_mean, model_mean = posterior_mean(process, x_t, x0, t, s), posterior_mean(process, x_t, x0_hat, t, s)
    return normal_kl(true_mean, wide(beta_tilde, x0), model_mean, model_var)


def vlb_step_bpd(
    process: NoiseProcess,
    x0: Tensor,
    x_t: Tensor,
    x0_hat: Tensor,
    n: Tensor,
    num_steps: int,
    *,
    variance: Literal["beta_tilde", "beta", "learned"] = "beta_tilde",
    frac: Tensor | None = None,
    decoder: Literal["discretized", "gaussian"] = "discretized",
) -> Tensor:
    """One term of DDPM's bound per sample, in bits/dim (B,): L_{n−1} = KL(q(x_{n−1} | x_n, x₀) ‖ p(x_{n−1} | x_n)) for
    n ≥ 2 and the decoder −log p(x₀ | x₁) for n = 1, on the grid t = n/N; the one place both :func:`ddpm_vlb` and
    :class:`~lit_score.losses.HybridLoss` compute it.

    The model's mean is μ̃(x_n, x̂₀); its variance β̃_n, β_n (σ²_{t|s}), or the learned interpolation between them
    (``frac``, :func:`~lit_score.samplers.ancestral.learned_range_variance`). The decoder is N(x̂₀, β̃₂) (fixed) or its
    variance interpolated between β₁ and β̃₂ (improved-diffusion's clipped log β̃₁), as a discretised Gaussian on the
    8-bit grid or, for continuous data, a Gaussian density.
    """
    if variance == "learned" and frac is None:
        raise ValueError("variance='learned' needs the model's interpolation fraction frac")
    t_kl = n.clamp_min(2).to(x0.dtype) / num_steps  # n = 1 rows take the decoder below: keep their KL finite
    kl = step_kl(process, x0, x_t, x0_hat, t_kl, t_kl - 1 / num_steps, variance=variance, frac=frac)
    one, two, zero = (torch.full_like(t_kl, k / num_steps) for k in (1, 2, 0))
    beta_tilde_2 = transition_variances(process, two, one)[2]
    if variance == "learned":
        dec_var = learned_range_variance(frac, process.sigma(one) ** 2, beta_tilde_2)
    else:
        dec_var = wide(beta_tilde_2, x0)
    dec_mean = posterior_mean(process, x_t, x0_hat, one, zero)  # = x̂₀ (α₀ = 1, σ₀ = 0)
    # rows n ≥ 2 keep the KL below; their decoder inputs are replaced by harmless ones so that the unused branch has a
    # finite gradient (x̂₀ far from x₀ at high noise puts the discretised CDF's tail at |z| ~ 1e5, whose float32
    # backward is not finite, and 0·inf would reach the network through torch.where)
    decoding = append_dims(n == 1, x0)
    dec_mean = torch.where(decoding, dec_mean, x0)
    dec_var = torch.where(decoding, dec_var, wide(beta_tilde_2, x0))
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, dec_mean, dec_var.sqrt())
    else:
        nll = 0.5 * (torch.log(2 * math.pi * dec_var) + (x0 - dec_mean) ** 2 / dec_var)
    terms = torch.where(decoding, nll, kl)
    return batch_sum(terms) / (x0[0].numel() * math.log(2))


__all__ = ["discretized_gaussian_log_likelihood", "normal_kl", "step_kl", "vlb_step_bpd", "wide"]
