r"""Denoising regression: the one objective behind DDPM's L_simple, NCSN's and score SDEs' DSM and flow matching.

For x_t = α x₀ + σ ε with t ~ the process's training distribution, the network's raw output is
regressed onto the target of its parameterisation (ε, x₀, v, −ε/σ or the velocity; see
:class:`~lit_score.scores.NetworkScore`):

    ℓ(x₀) = w(t) · reduce_d ‖raw(x_t, t) − target‖²

With target ``eps`` and w = 1 this is DDPM's L_simple (Ho et al. 2020, eq. 14); with target ``score``
and w = σ² it is DSM with λ(σ) = σ² (Song & Ermon 2019, eq. 6).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.scores import NetworkScore
from lit_score.utils import batch_mean, batch_sum, randn_like


class DenoisingLoss:
    """Per-sample denoising loss (B,); ``weighting`` w(t): ``none`` (1) or ``sigma2`` (σ(t)², λ(σ) = σ²)."""

    def __init__(self, weighting: Literal["none", "sigma2"] = "none", reduce: Literal["mean", "sum"] = "mean") -> None:
        if weighting not in ("none", "sigma2"):
            raise ValueError(f"unknown weighting {weighting!r}: use none or sigma2")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"unknown reduce {reduce!r}: use mean or sum")
        self.weighting, self.reduce = weighting, reduce

    def weight(self, score_model: NetworkScore, t: Tensor) -> Tensor:
        """w(t), shape (B,)."""
        if self.weighting == "sigma2":
            return score_model.process.sigma(t) ** 2
        return torch.ones_like(t)

    def __call__(self, score_model: NetworkScore, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        t = process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        noise = randn_like(x0, generator)
        x_t = process.perturb(x0, t, noise)
        out = score_model.raw(x_t, t)
        target = score_model.training_target(x0, noise, t)
        err = (out - target) ** 2
        return self.weight(score_model, t) * (batch_mean(err) if self.reduce == "mean" else batch_sum(err))

    def __repr__(self) -> str:
        return f"DenoisingLoss(weighting={self.weighting!r}, reduce={self.reduce!r})"
