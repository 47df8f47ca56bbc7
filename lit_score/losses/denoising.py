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
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.losses.base import DiffusionLoss
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


class DenoisingLoss(DiffusionLoss):
    """Per-sample denoising loss (B,).

    Args:
        weighting: w(t): ``none`` (1) or ``sigma2`` (σ(t)², λ(σ) = σ²) on the raw-output error, or
            ``likelihood`` (g(t)² on the score error, Song et al. 2021b).
        reduce: ``mean`` or ``sum`` of the squared error over data dimensions.
        importance_sampling: with ``likelihood``, draw t ∝ g²/σ² itself instead of the process's
            training distribution (which it assumes uniform on [t_min, t_max]); same expectation.
    """

    def __init__(
        self,
        weighting: Literal["none", "sigma2", "likelihood"] = "none",
        reduce: Literal["mean", "sum"] = "mean",
        importance_sampling: bool = False,
    ) -> None:
        if weighting not in ("none", "sigma2", "likelihood"):
            raise ValueError(f"unknown weighting {weighting!r}: use none, sigma2 or likelihood")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"unknown reduce {reduce!r}: use mean or sum")
        if importance_sampling and weighting != "likelihood":
            raise ValueError("importance_sampling only applies to weighting='likelihood'")
        self.weighting, self.reduce, self.importance_sampling = weighting, reduce, importance_sampling

    def weight(self, score_model: NetworkScore, t: Tensor) -> Tensor:
        """w(t), shape (B,) (for ``likelihood``: g(t)², which multiplies the score error)."""
        if self.weighting == "sigma2":
            return score_model.process.sigma(t) ** 2
        if self.weighting == "likelihood":
            return score_model.process.g2(t)
        return torch.ones_like(t)

    def __call__(self, score_model: NetworkScore, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        if self.importance_sampling:
            if type(process).discretize is not NoiseProcess.discretize:  # a discrete grid overrides the identity
                raise ValueError(f"importance sampling draws continuous times: {type(process).__name__} is discrete")
            t, ratio = log_snr_importance_time(process, x0.shape[0], generator, x0.device)
            t = t.to(x0.dtype)
        else:
            t = process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        noise = self.couple(x0, randn_like(x0, generator))
        x_t = process.perturb(x0, t, noise)
        out = score_model.raw(x_t, t)
        if self.weighting == "likelihood":
            sigma = process.sigma(t)
            err = ((score_model.predict(x_t, t, out)[1] - noise) / append_dims(sigma, x0)) ** 2  # score error
            weight = sigma**2 * ratio if self.importance_sampling else self.weight(score_model, t)
        else:
            err = (out - score_model.training_target(x0, noise, t)) ** 2
            weight = self.weight(score_model, t)
        return weight * (batch_mean(err) if self.reduce == "mean" else batch_sum(err))

    def couple(self, x0: Tensor, noise: Tensor) -> Tensor:
        """Pair the batch's noise with its data: independent here; flow matching's minibatch OT re-pairs it."""
        return noise

    def __repr__(self) -> str:
        extra = ", importance_sampling=True" if self.importance_sampling else ""
        return f"DenoisingLoss(weighting={self.weighting!r}, reduce={self.reduce!r}{extra})"
