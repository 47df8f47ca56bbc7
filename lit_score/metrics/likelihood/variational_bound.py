"""DDPM's discrete variational bound (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021) in bits/dim, an upper bound on
the NLL of 8-bit data; each step's term is :func:`lit_score.losses.vlb.vlb_step_bpd`, shared with the hybrid loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_score.losses.vlb import normal_kl, vlb_step_bpd, wide
from lit_score.metrics.likelihood.estimate import LikelihoodEstimate
from lit_score.processes import DiscreteVP
from lit_score.samplers.base import ScoreFn, predict_x0_eps
from lit_score.scores.function import as_score_function
from lit_score.utils import batch_sum, randn_like


@dataclass
class VLBResult:
    """DDPM's bound in bits/dim: total (B,), the prior term L_N (B,), and ``terms`` (B, N) whose column n − 1
    is L_{n−1} (column 0 the decoder −log p(x₀ | x₁), the others KL(q(x_{n−1} | x_n, x₀) ‖ p(x_{n−1} | x_n)))."""

    bits_per_dim: Tensor
    prior_bpd: Tensor
    terms: Tensor

    def estimate(self, num_dims: int, variance: str = "beta_tilde") -> LikelihoodEstimate:
        """The common record for data of ``num_dims`` values per sample (one network evaluation per step; the
        decoder is the discretised Gaussian, so the bound is on the 8-bit data itself)."""
        settings = {"bound": "upper (NLL <= VLB)", "variance": variance, "decoder": "discretised Gaussian"}
        nats = self.bits_per_dim * num_dims * math.log(2)
        return LikelihoodEstimate("vlb", nats, self.bits_per_dim, "discrete8bit", self.terms.shape[1], settings)


def ddpm_vlb(
    score_model: ScoreFn,
    process: DiscreteVP,
    x0: Tensor,
    *,
    variance: Literal["beta_tilde", "beta", "learned"] = "beta_tilde",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
) -> VLBResult:
    """DDPM's variational bound L_N + Σ_{n≥2} L_{n−1} + L_0 in bits/dim (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021).

    ``process`` is a DiscreteVP (step n at t = n/N). Each KL term uses one draw of x_n ~ q(x_n | x₀) (drawn
    from ``generator`` for n = N, …, 1) and the model posterior mean μ̃(x_n, x̂₀) with the fixed variance
    β̃_n (``beta_tilde``) or β_n (``beta``), or the model's own (``learned``: a model with a learned variance,
    whose network evaluation gives mean and variance together); the decoder is the discretised Gaussian at x̂₀ with
    variance β̃₂ (improved-diffusion's clipped β̃₁) or the learned one (:func:`vlb_step_bpd`). The prior term is
    KL(q(x_N | x₀) ‖ N(0, σ_N² I)), the process prior that the samplers start from (DDPM's N(0, I) differs by < 1e-5
    bits/dim on its linear schedule).
    """
    if variance not in ("beta_tilde", "beta", "learned"):
        raise ValueError(f"unknown variance {variance!r}: use beta_tilde, beta or learned")
    if variance == "learned" and not as_score_function(score_model).learned_variance:
        raise ValueError("ddpm_vlb(variance='learned') needs a model with a learned variance: use beta_tilde or beta")
    num_steps = process.num_timesteps
    if num_steps is None or num_steps < 2:
        raise ValueError(f"ddpm_vlb needs a discrete VP process (DiscreteVP, N >= 2), got {process!r}")
    batch, scale = x0.shape[0], x0[0].numel() * math.log(2)

    def step(n: int) -> Tensor:
        return torch.full((batch,), n / num_steps, device=x0.device, dtype=x0.dtype)

    terms = torch.zeros(batch, num_steps, device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        for n in range(num_steps, 0, -1):
            t = step(n)
            x_t = process.perturb(x0, t, randn_like(x0, generator))
            frac = None
            if variance == "learned":
                x0_hat, _, frac = score_model.predict_with_variance(x_t, t)
            else:
                x0_hat = predict_x0_eps(score_model, process, x_t, t)[0]
            x0_hat = x0_hat.clamp(-1, 1) if clip_denoised else x0_hat
            index = torch.full((batch,), n, device=x0.device)
            terms[:, n - 1] = vlb_step_bpd(process, x0, x_t, x0_hat, index, num_steps, variance=variance, frac=frac)
        t_max = step(num_steps)
        prior_var = torch.full_like(x0, process.prior_std**2)
        mean_n = wide(process.alpha(t_max), x0) * x0
        prior = batch_sum(normal_kl(mean_n, wide(process.sigma(t_max) ** 2, x0), torch.zeros_like(x0), prior_var))
    prior_bpd = prior / scale
    return VLBResult(bits_per_dim=prior_bpd + terms.sum(dim=1), prior_bpd=prior_bpd, terms=terms)
