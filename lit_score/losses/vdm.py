r"""VDM's continuous-time variational bound (Kingma, Salimans, Poole & Ho 2021, eq. 11, 17, Appendix I.2).

For x_t = α_t x + σ_t ε with γ = −log SNR (any process: γ = −2λ), per sample in nats

| term | value |
|---|---|
| L_prior | KL(q(z₁ | x) ‖ N(0, σ(t_max)² I)) |
| L_recon | −log p(x | z₀), z₀ = α₀x + σ₀ε: N(x; z₀/α₀, σ̃₀²) (continuous data) or the discretised Gaussian (8-bit) |
| L_∞ | ½ E_{t∼U[t_min, t_max]} (t_max − t_min)·γ'(t)·‖ε̂(z_t, t) − ε‖² (eq. 17) |

returned as (L_prior + L_recon + L_∞)/(D log 2), an upper bound on −log₂ p(x) per dimension, whose mean over data is
the VLB in bits/dim. On a learned schedule the network is conditioned on the normalised γ (c_noise = 999·ν(t)), as
VDM conditions on γ: then E[L_∞] depends on the schedule only through its end points (eq. 20). Times are antithetic
by default (t_i = (u + i/B) mod 1, VDM's low-discrepancy sampler).

With a :class:`~lit_score.processes.LearnedVP` the end points γ₀, γ₁ take the VLB's gradient and the schedule's shape
ν takes the gradient of the *variance* of the estimator instead (sec. 5.3): L_∞ is invariant to ν in expectation
(eq. 20), so its gradient there is noise; ∂E[L²]/∂ν = 2·E[L·∂L/∂ν] is obtained in the same backward pass by scaling
the incoming gradient of each sample's (ν(t_i), ν'(t_i)) by 2·L_i (L_i its L_∞ term in nats, the only term that
depends on ν: ν(0) = 0 and ν(1) = 1 fix L_prior and L_recon); through the returned bits/dim the shape's gradient is
thus ∂E[L_∞²]/∂η/(D log 2), nats² per bit-dimension — a positive scale, stated because gradient clipping sees it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lit_score.losses.base import DiffusionLoss
from lit_score.losses.vlb import discretized_gaussian_log_likelihood, normal_kl
from lit_score.utils import append_dims, batch_sum, rand, randn_like


def antithetic_times(batch: int, t_min: float, t_max: float, generator=None, device=None) -> Tensor:
    """t_i = t_min + (t_max − t_min)·((u + i/B) mod 1): uniform marginally, evenly spread over the batch."""
    u = rand((1,), generator, device=device)
    frac = torch.remainder(u + torch.arange(batch, device=u.device, dtype=u.dtype) / batch, 1.0)
    return t_min + (t_max - t_min) * frac


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale`` (read at backward time)."""

    @staticmethod
    def forward(ctx, x, holder):
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.holder["scale"], None


class VDMLoss(DiffusionLoss):
    """VDM's continuous-time VLB in bits/dim per sample (B,), for any process; the variance trick for a learned one.

    Args:
        decoder: ``gaussian`` (continuous data) or ``discretized`` (8-bit data in [−1, 1]).
        antithetic: low-discrepancy times over the batch.
        variance_minimisation: train a learned schedule's shape by the estimator's variance (sec. 5.3).
    """

    trains_schedule = True

    def __init__(self, decoder: Literal["gaussian", "discretized"] = "gaussian", antithetic: bool = True,
                 variance_minimisation: bool = True) -> None:
        if decoder not in ("gaussian", "discretized"):
            raise ValueError(f"unknown decoder {decoder!r}: use gaussian or discretized")
        self.decoder, self.antithetic, self.variance_minimisation = decoder, antithetic, variance_minimisation

    def terms(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sample nats (B,) of ``prior``, ``recon`` and ``diffusion`` (L_∞)."""

        process = score_model.process
        batch, t_min, t_max = x0.shape[0], process.t_min, process.t_max
        if self.antithetic:
            t = antithetic_times(batch, t_min, t_max, generator, x0.device).to(x0.dtype)
        else:
            t = process.sample_time(batch, generator=generator, device=x0.device).to(x0.dtype)
        holder: dict[str, Tensor] = {"scale": torch.ones((), device=x0.device)}
        learned = process.learnable_schedule
        if learned and score_model.target != "eps":
            raise ValueError(f"VDMLoss on a learned schedule trains an eps-prediction network (VDM's), not target"
                             f" {score_model.target!r}: set target eps")
        if learned:
            nu, dnu = process.shape(t)
            if self.variance_minimisation and process.learn_shape and torch.is_grad_enabled():
                nu, dnu = _ScaleGrad.apply(nu, holder), _ScaleGrad.apply(dnu, holder)
            gamma, dgamma = process.gamma_from_shape(nu, dnu)
            gamma, dgamma = gamma.to(x0.dtype), dgamma.to(x0.dtype)
            alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
        else:
            gamma = -2 * process.log_snr(t)
            dgamma = torch.func.jvp(lambda s: -2 * process.log_snr(s), (t,), (torch.ones_like(t),))[1]
            alpha, sigma = process.alpha(t), process.sigma(t)
        noise = randn_like(x0, generator)
        x_t = append_dims(alpha, x0) * x0 + append_dims(sigma, x0) * noise
        if learned:  # the network sees the (scaled) normalised γ: c_noise = 999·ν(t), as LearnedVP.c_noise
            eps_hat = score_model.network_output(x_t, 999.0 * nu.to(x0.dtype))  # labels of a conditional view too
        else:
            eps_hat = score_model.predict(x_t, t)[1]
        diffusion = 0.5 * (t_max - t_min) * dgamma * batch_sum((eps_hat - noise) ** 2)
        holder["scale"] = 2 * diffusion.detach()  # read by the shape's backward (variance minimisation)
        ends = torch.tensor([t_min, t_max], device=x0.device, dtype=x0.dtype)
        a_end, s_end = process.alpha(ends), process.sigma(ends)
        var_1 = (s_end[1] ** 2).expand_as(x0)  # the prior N(0, σ(t_max)² I) the samplers start from
        prior = batch_sum(normal_kl(a_end[1] * x0, var_1, torch.zeros_like(x0), var_1))
        z0 = a_end[0] * x0 + s_end[0] * randn_like(x0, generator)
        mean, std = z0 / a_end[0], s_end[0] / a_end[0]
        if self.decoder == "gaussian":
            recon = batch_sum(0.5 * torch.log(2 * math.pi * std**2) + 0.5 * ((x0 - mean) / std) ** 2)
        else:
            recon = -batch_sum(discretized_gaussian_log_likelihood(x0, mean, std.expand_as(x0)))
        return {"prior": prior, "recon": recon, "diffusion": diffusion}

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        terms = self.terms(score_model, x0, generator)
        return (terms["prior"] + terms["recon"] + terms["diffusion"]) / (x0[0].numel() * math.log(2))

    def __repr__(self) -> str:
        return (f"VDMLoss(decoder={self.decoder!r}, antithetic={self.antithetic}, "
                f"variance_minimisation={self.variance_minimisation})")

