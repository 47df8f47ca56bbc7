r"""Denoising regression: the one objective behind DDPM's L_simple, NCSN's and score SDEs' DSM and flow matching.

For x_t = α x₀ + σ ε with t ~ the process's training distribution, the network's raw output is
regressed onto the target of its parameterisation (ε, x₀, v, −ε/σ or the velocity; see
:class:`~lit_score.scores.NetworkScore`):

    ℓ(x₀) = w(t) · reduce_d ‖raw(x_t, t) − target‖²

With target ``eps`` and w = 1 this is DDPM's L_simple (Ho et al. 2020, eq. 14); with target ``score``
and w = σ² it is DSM with λ(σ) = σ² (Song & Ermon 2019, eq. 6).

Likelihood weighting (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of score-based
diffusion models", Thm. 1) is stated on the *score* error whatever the target:

    ℓ(x₀) = g(t)² · reduce_d ‖s_θ(x_t, t) − ∇ log p_{0t}(x_t | x₀)‖²,   s_θ − ∇ log p_{0t} = −(ε̂ − ε)/σ,

so for target ``eps`` it is (g²/σ²)‖ε̂ − ε‖². With uniform t its mean over t is the score-matching bound
on the negative log-likelihood (up to constants). Since g²/σ² = −2 dλ/dt for every process
(λ = log α/σ; follows from g² = dσ²/dt − 2fσ²), importance sampling t ∝ g²/σ² is sampling λ uniformly on
[λ(t_max), λ(t_min)]; the weight g²/(T·p(t)) then becomes σ²·Z/T with Z = 2(λ(t_min) − λ(t_max)) and
T = t_max − t_min, i.e. a constant times ‖ε̂ − ε‖² — the same expectation as uniform t, lower variance.

Weightings stated on ε-MSE as functions of λ (``snr``, ``snr_plus_one``, ``min_snr``, ``soft_min_snr``, ``edm``;
table and sources in :mod:`lit_score.losses.weighting`) apply to any target as w(λ)/r(t) on the raw-output error,
r = :meth:`~lit_score.scores.NetworkScore.eps_error_scale`. EDM's objective (Karras et al. 2022, eq. 8) is target
``edm`` with weighting ``none`` (λ(σ)·c_out² = 1: unit weight on F) or, the same number, ``edm``; its log-normal
σ training is ``time_sampling="lognormal"`` on any process: ln σ̃ ~ N(P_mean, P_std²) truncated to the process's
[σ̃(t_min), σ̃(t_max)] (exactly, by the inverse normal CDF) and mapped to t by the inverse log-SNR.
``time_sampling="loss_aware"`` draws the steps of a discrete chain ∝ sqrt(E[ℓ_n²]) from the history of this very loss
with weight 1/(N·p_n) (improved DDPM's resampler, :mod:`lit_score.losses.time_sampling`): the same objective as
uniform n, lower variance; training steps only.

A given coupling (``noise``: the ε paired with each x₀, a reflow pair of Liu et al. 2022) replaces the independent ε
draw (``takes_coupling``); t is drawn as without it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.time_sampling import LossAwareSteps
from lit_score.losses.weighting import LOG_SNR_WEIGHTINGS, eps_weight
from lit_score.processes import NoiseProcess
from lit_score.scores import NetworkScore
from lit_score.utils import append_dims, batch_mean, batch_sum, rand, randn_like


def log_snr_importance_time(
    process: NoiseProcess, batch: int, generator: torch.Generator | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """t with density ∝ g(t)²/σ(t)² on [t_min, t_max] (λ uniform) and the ratio Z/T of the uniform-time reweighting
    (a 0-d tensor; nothing is read back to the host)."""
    u = rand((batch,), generator, device=device)
    lam_hi, lam_lo = process.log_snr(torch.tensor([process.t_min, process.t_max], device=u.device)).to(u.dtype)
    t = process.t_from_log_snr(lam_lo + u * (lam_hi - lam_lo)).clamp(process.t_min, process.t_max)
    return t, 2 * (lam_hi - lam_lo) / (process.t_max - process.t_min)


def lognormal_sigma_time(
    process: NoiseProcess, batch: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """t with ln σ̃(t) ~ N(P_mean, P_std²) truncated to the process's range (EDM's training noise on any process),
    snapped to a discrete process's grid."""
    u = rand((batch,), generator, device=device)
    ends = torch.tensor([process.t_min, process.t_max], device=u.device, dtype=torch.float64)
    log_sigma = -process.log_snr(ends).detach().to(torch.float64)  # ln σ̃ at (t_min, t_max), increasing
    lo, hi = torch.special.ndtr((log_sigma - p_mean) / p_std).unbind()
    p = (lo + u.to(torch.float64) * (hi - lo)).clamp(1e-300, 1 - 1e-16)  # the inverse CDF in float64
    log_sigma_t = (p_mean + p_std * torch.special.ndtri(p)).to(u.dtype)
    t = process.t_from_log_snr(-log_sigma_t).clamp(process.t_min, process.t_max)
    return process.discretize(t)


class DenoisingLoss(DiffusionLoss):
    """Per-sample denoising loss (B,).

    Args:
        weighting: w(t): ``none`` (1) or ``sigma2`` (σ(t)², λ(σ) = σ²) on the raw-output error,
            ``likelihood`` (g(t)² on the score error, Song et al. 2021b), or one of the log-SNR weightings on ε-MSE
            (``snr``, ``snr_plus_one``, ``min_snr``, ``soft_min_snr``, ``edm``; :mod:`lit_score.losses.weighting`).
        reduce: ``mean`` or ``sum`` of the squared error over data dimensions.
        importance_sampling: with ``likelihood``, draw t ∝ g²/σ² itself instead of the process's
            training distribution (which it assumes uniform on [t_min, t_max]); same expectation.
        time_sampling: ``process`` (the process's training distribution), ``lognormal`` (EDM's ln σ̃ ~
            N(p_mean, p_std²), truncated to the process's range, on any process) or ``loss_aware`` (a discrete
            chain's n ∝ sqrt(E[ℓ_n²]) over the last ``history`` losses per step, mixed with ``uniform_prob`` of
            uniform, weight 1/(N·p_n); iDDPM sec. 3.3; uniform until every step has its history).
        p_mean, p_std: the log-normal's parameters (EDM: −1.2, 1.2).
        gamma: the SNR cap γ of ``min_snr`` / ``soft_min_snr`` (Hang et al. 2023: 5).
        sigma_data: σ_d of weighting ``edm``; None: the score model's (its ``sigma_data``).
        history, uniform_prob: the loss-aware sampler's H (iDDPM: 10) and uniform mixture weight (0.001).
    """

    def __init__(
        self,
        weighting: Literal[
            "none", "sigma2", "likelihood", "snr", "snr_plus_one", "min_snr", "soft_min_snr", "edm"
        ] = "none",
        reduce: Literal["mean", "sum"] = "mean",
        importance_sampling: bool = False,
        time_sampling: Literal["process", "lognormal", "loss_aware"] = "process",
        p_mean: float = -1.2,
        p_std: float = 1.2,
        gamma: float = 5.0,
        sigma_data: float | None = None,
        history: int = 10,
        uniform_prob: float = 0.001,
    ) -> None:
        known = ("none", "sigma2", "likelihood", *LOG_SNR_WEIGHTINGS)
        if weighting not in known:
            raise ValueError(f"unknown weighting {weighting!r}: use {', '.join(known)}")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"unknown reduce {reduce!r}: use mean or sum")
        if importance_sampling and weighting != "likelihood":
            raise ValueError("importance_sampling only applies to weighting='likelihood'")
        if time_sampling not in ("process", "lognormal", "loss_aware"):
            raise ValueError(f"unknown time_sampling {time_sampling!r}: use process, lognormal or loss_aware")
        if importance_sampling and time_sampling != "process":
            raise ValueError("importance_sampling draws its own times: leave time_sampling='process'")
        check_number("p_mean", p_mean)
        check_number("p_std", p_std, gt=0.0)
        check_number("gamma", gamma, gt=0.0)
        check_number("sigma_data", sigma_data, gt=0.0, allow_none=True)
        self.weighting, self.reduce, self.importance_sampling = weighting, reduce, importance_sampling
        self.time_sampling, self.p_mean, self.p_std = time_sampling, float(p_mean), float(p_std)
        self.gamma, self.sigma_data = float(gamma), sigma_data
        self.steps = LossAwareSteps("DenoisingLoss", history, uniform_prob) if time_sampling == "loss_aware" else None

    #: a given coupling (``noise``) replaces the independent draw of ε
    takes_coupling: bool = True

    def weight(self, score_model: NetworkScore, t: Tensor) -> Tensor:
        """w(t), shape (B,), on the raw-output error (for ``likelihood``: g(t)², which multiplies the score error)."""
        if self.weighting in LOG_SNR_WEIGHTINGS:
            sigma_data = self.sigma_data if self.sigma_data is not None else score_model.sigma_data
            w = eps_weight(self.weighting, score_model.process.log_snr(t), self.gamma, sigma_data)
            return w / score_model.eps_error_scale(t)
        if self.weighting == "sigma2":
            return score_model.process.sigma(t) ** 2
        if self.weighting == "likelihood":
            return score_model.process.g2(t)
        return torch.ones_like(t)

    def __call__(self, score_model: NetworkScore, x0: Tensor, generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> Tensor:
        process = score_model.process
        n = step_weight = None
        if self.steps is not None and score_model.training:
            t, n, step_weight = self.steps.draw(process, x0.shape[0], generator, x0.device, x0.dtype)
        elif self.importance_sampling:
            if type(process).discretize is not NoiseProcess.discretize:  # a discrete grid overrides the identity
                raise ValueError(f"importance sampling draws continuous times: {type(process).__name__} is discrete")
            t, ratio = log_snr_importance_time(process, x0.shape[0], generator, x0.device)
            t = t.to(x0.dtype)
        elif self.time_sampling == "lognormal":
            t = lognormal_sigma_time(process, x0.shape[0], self.p_mean, self.p_std, generator, x0.device).to(x0.dtype)
        else:
            t = process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        noise = self.couple(x0, randn_like(x0, generator)) if noise is None else noise
        x_t = process.perturb(x0, t, noise)
        out = score_model.raw(x_t, t)
        if self.weighting == "likelihood":
            sigma = process.sigma(t)
            err = ((score_model.predict(x_t, t, out)[1] - noise) / append_dims(sigma, x0)) ** 2  # score error
            weight = sigma**2 * ratio if self.importance_sampling else self.weight(score_model, t)
        else:
            err = (out - score_model.training_target(x0, noise, t)) ** 2
            weight = self.weight(score_model, t)
        loss = weight * (batch_mean(err) if self.reduce == "mean" else batch_sum(err))
        if step_weight is None:
            return loss
        self.steps.update(n, loss)
        return step_weight * loss

    def couple(self, x0: Tensor, noise: Tensor) -> Tensor:
        """Pair the batch's noise with its data: independent here; flow matching's minibatch OT re-pairs it."""
        return noise

    def __repr__(self) -> str:
        extra = ", importance_sampling=True" if self.importance_sampling else ""
        if self.time_sampling == "lognormal":
            extra += f", time_sampling='lognormal', p_mean={self.p_mean:g}, p_std={self.p_std:g}"
        if self.steps is not None:
            extra += (f", time_sampling='loss_aware', history={self.steps.history},"
                      f" uniform_prob={self.steps.uniform_prob:g}")
        if self.weighting in ("min_snr", "soft_min_snr"):
            extra += f", gamma={self.gamma:g}"
        if self.weighting == "edm" and self.sigma_data is not None:
            extra += f", sigma_data={self.sigma_data:g}"
        return f"DenoisingLoss(weighting={self.weighting!r}, reduce={self.reduce!r}{extra})"
