r"""improved DDPM's hybrid objective for a learned reverse variance (Nichol & Dhariwal 2021, sec. 3.1).

| symbol | meaning |
|---|---|
| v, f = (v + 1)/2 | the network's second half of channels and the interpolation fraction |
| Σ_θ = exp(f·log β_n + (1 − f)·log β̃_n) | the learned reverse variance ("learned_range", eq. 15) |
| L_simple = ‖ε̂ − ε‖² (mean over dims) | the mean's objective, on the raw output of any parameterisation |
| L_t | one term of the bound at the drawn n, in bits/dim, with the mean under stop-gradient |
| L_hybrid = L_simple + λ·N·L_t | λ = 0.001; N·L_t is the uniform-n estimate of L_vlb = Σ_n L_n (eq. 16) |

The stop-gradient keeps L_vlb from moving the mean (only Σ_θ learns from it), as in the paper; improved-diffusion's
``RESCALED_MSE`` is the same: its vb term is multiplied by N/1000. The bound's term is
:func:`~lit_score.metrics.likelihood.vlb_step_bpd`, the same function ``ddpm_vlb`` evaluates, with the decoder a
discretised Gaussian on 8-bit data or, for continuous data, a Gaussian density.
``objective="vlb"`` is the paper's L_vlb = N·L_t alone, training mean and variance (no stop-gradient), and
``time_sampling="loss_aware"`` its importance sampling of n ∝ sqrt(E[L_n²]) from the history of each step's loss
(sec. 3.3, :mod:`lit_score.losses.time_sampling`), which the paper needs to make L_vlb trainable; L_hybrid uses
uniform n in the paper, and either objective takes either sampling here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.time_sampling import LossAwareSteps
from lit_score.losses.vlb import vlb_step_bpd
from lit_score.utils import batch_mean, randn_like


class HybridLoss(DiffusionLoss):
    """L_simple + λ·N·L_t (or N·L_t alone) for a model with a learned variance on a discrete process (per sample, (B,)).

    Args:
        vlb_weight: λ (0.001 in the paper).
        decoder: ``discretized`` (8-bit data in [−1, 1], the paper's) or ``gaussian`` (continuous data).
        objective: ``hybrid`` (L_simple + λ·N·L_t, the mean under stop-gradient in L_t) or ``vlb`` (N·L_t, the
            bound in bits/dim, training mean and variance).
        time_sampling: ``uniform`` n or ``loss_aware`` (n ∝ sqrt(E[ℓ_n²]) of this loss's history, weight 1/(N·p_n)).
        history, uniform_prob: the loss-aware sampler's H (10) and uniform mixture weight (0.001).
    """

    trains_variance = True

    def __init__(
        self,
        vlb_weight: float = 0.001,
        decoder: Literal["discretized", "gaussian"] = "discretized",
        objective: Literal["hybrid", "vlb"] = "hybrid",
        time_sampling: Literal["uniform", "loss_aware"] = "uniform",
        history: int = 10,
        uniform_prob: float = 0.001,
    ) -> None:
        check_number("vlb_weight", vlb_weight, ge=0.0)
        if decoder not in ("discretized", "gaussian"):
            raise ValueError(f"unknown decoder {decoder!r}: use discretized or gaussian")
        if objective not in ("hybrid", "vlb"):
            raise ValueError(f"unknown objective {objective!r}: use hybrid or vlb")
        if time_sampling not in ("uniform", "loss_aware"):
            raise ValueError(f"unknown time_sampling {time_sampling!r}: use uniform or loss_aware")
        self.vlb_weight, self.decoder, self.objective = float(vlb_weight), decoder, objective
        self.steps = LossAwareSteps("HybridLoss", history, uniform_prob) if time_sampling == "loss_aware" else None

    def terms(
        self, score_model, x0: Tensor, generator: torch.Generator | None = None, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(L_simple, L_t in bits/dim), each (B,), from one network evaluation at one n per sample (drawn uniformly
        unless ``t`` = n/N is given); the mean enters L_t under stop-gradient unless the objective is ``vlb``."""
        process = score_model.process
        num_steps = process.num_timesteps
        if num_steps is None or num_steps < 2:
            raise ValueError(f"HybridLoss trains on a discrete chain (N >= 2): {type(process).__name__} has none; use"
                             " DiscreteVP")
        if not score_model.learned_variance:
            raise ValueError("HybridLoss learns the reverse variance: build the model with learned_variance true and"
                             " a network with twice the data's channels")
        if t is None:
            t = process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        noise = randn_like(x0, generator)
        x_t = process.perturb(x0, t, noise)
        out, frac = score_model.raw_and_variance(x_t, t)
        simple = batch_mean((out - score_model.training_target(x0, noise, t)) ** 2)
        mean_out = out if self.objective == "vlb" else out.detach()  # hybrid: L_vlb trains only the variance
        x0_hat = score_model.predict(x_t, t, mean_out)[0]
        n = (t * num_steps).round().long()
        vlb = vlb_step_bpd(process, x0, x_t, x0_hat, n, num_steps, variance="learned", frac=frac, decoder=self.decoder)
        return simple, vlb

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process, n, step_weight, t = score_model.process, None, None, None
        if self.steps is not None and score_model.training:
            t, n, step_weight = self.steps.draw(process, x0.shape[0], generator, x0.device, x0.dtype)
        simple, vlb = self.terms(score_model, x0, generator, t)
        bound = process.num_timesteps * vlb
        loss = bound if self.objective == "vlb" else simple + self.vlb_weight * bound
        if step_weight is None:
            return loss
        self.steps.update(n, loss)
        return step_weight * loss

    def __repr__(self) -> str:
        extra = f", objective={self.objective!r}" if self.objective != "hybrid" else ""
        if self.steps is not None:
            extra += f", time_sampling='loss_aware', history={self.steps.history}"
        return f"HybridLoss(vlb_weight={self.vlb_weight:g}, decoder={self.decoder!r}{extra})"
