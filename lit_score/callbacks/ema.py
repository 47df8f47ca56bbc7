"""An exponential moving average of the weights with a warm-up of its decay, as the diffusion references keep one.

    trainer:
      callbacks:
        - class_path: lit_score.callbacks.EMA
          init_args: {decay: 0.999}          # warmup: score_sde (the default), power or none

| symbol | meaning |
|---|---|
| θ_n | the training weights after the n-th averaged optimizer step (n = 0: the first one, copied) |
| θ̄_n | the average after it: θ̄_0 = θ_0, θ̄_n = β_n·θ̄_{n−1} + (1 − β_n)·θ_n |
| β_n | the decay used at update n; ``decay`` is its ceiling |

| warmup | β_n |
|---|---|
| ``score_sde`` | min(decay, (1 + n)/(10 + n)) |
| ``power`` | clamp(1 − (1 + n/γ⁻¹)^(−p), min_decay, decay), γ⁻¹ = ``inv_gamma``, p = ``power`` |
| ``none`` | decay |

Sources: ``score_sde`` is score_sde's ``ExponentialMovingAverage(use_num_updates=True)`` (TensorFlow's
``num_updates`` rule, and diffusers' ``EMAModel`` default); ``power`` is k-diffusion's ``EMAWarmup`` (p = 2/3 for runs
of a million steps or more, 3/4 for shorter ones; diffusers' ``use_ema_warmup``); ``none`` is Lightning's
``EMAWeightAveraging`` and improved-diffusion's fixed rate.

Why a warm-up. Without one, θ̄ keeps a share decayᴺ of the first weights after N updates: 13.5 % at decay 0.999
over 2,000 steps, 8 % at 0.995 over 500. On a short run that share is an untrained network mixed into the average,
and the mixture is a worse model than either end (issue 9: a VP score model on digits whose raw weights sample
digits by DDIM had EMA weights whose ε-prediction at t = 1 was 25× worse; the probability-flow ODE, which
amplifies an ε error by σ/α ≈ 150 there, then diverged). With ``score_sde``'s warm-up the average spans about the
last n/9 updates until n/9 reaches the ceiling's window 1/(1 − decay), so early weights leave it; on a long run
(n ≫ 10/(1 − decay)) it is the plain EMA.

Mechanics are Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` (which this subclasses): the
average is swapped in for validation, copied into the model when training ends, and saved in the checkpoint's
``state_dict`` with the training weights as ``current_model_state`` (``lit-score evaluate --weights ema|raw``). A
checkpoint written after training ends (ModelCheckpoint's ``save_last`` in its ``on_train_end``, which runs after
this callback's; ``trainer.save_checkpoint`` after ``fit``) keeps the training weights set aside before that copy:
Lightning's callback would write the average under both keys.
n is the ``AveragedModel``'s ``n_averaged``, saved in the checkpoint, so a resumed run continues the same schedule;
n counts updates, not optimizer steps, when ``update_every_n_steps`` > 1. Non-float buffers are copied, not averaged.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from torch import Tensor

from lit_score.checks import check_number

Warmup = Literal["score_sde", "power", "none"]


def ema_decay(n: int, decay: float, warmup: Warmup = "score_sde", power: float = 2 / 3, inv_gamma: float = 1.0,
              min_decay: float = 0.0) -> float:
    """β_n, the decay of the n-th update (n ≥ 1; the 0-th copies the weights) under ``warmup`` (module docstring)."""
    if warmup == "none":
        return decay
    if warmup == "score_sde":
        return min(decay, (1 + n) / (10 + n))
    if warmup == "power":
        return min(decay, max(min_decay, 1 - (1 + n / inv_gamma) ** -power))
    raise ValueError(f"warmup must be score_sde, power or none, got {warmup!r}")


class EMA(EMAWeightAveraging):
    """Lightning's EMA weight averaging with a warm-up of the decay (see the module docstring).

    Args:
        decay: the ceiling of β_n (the decay itself with ``warmup: none``).
        warmup: ``score_sde`` (default), ``power`` or ``none``.
        power, inv_gamma, min_decay: the ``power`` warm-up's p, γ⁻¹ and floor.
        update_every_n_steps, update_starting_at_step, update_starting_at_epoch, device, use_buffers: as
            :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`.
    """

    def __init__(
        self,
        decay: float = 0.999,
        warmup: Warmup = "score_sde",
        power: float = 2 / 3,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        check_number("decay", decay, ge=0.0, le=1.0)
        check_number("power", power, gt=0.0)
        check_number("inv_gamma", inv_gamma, gt=0.0)
        check_number("min_decay", min_decay, ge=0.0, le=1.0)
        ema_decay(1, decay, warmup)  # refuses an unknown warm-up now, not at the first update
        self.decay, self.warmup, self.power, self.inv_gamma, self.min_decay = decay, warmup, power, inv_gamma, min_decay
        # EMAWeightAveraging.__init__ fixes avg_fn to a constant decay, and AveragedModel takes one averaging function
        # only: so WeightAveraging's __init__ gets ours, and the attributes EMAWeightAveraging.should_update reads are
        # set here as its __init__ sets them
        WeightAveraging.__init__(self, device=device, use_buffers=use_buffers, multi_avg_fn=self._average)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch
        self._final_raw_state: dict[str, Tensor] | None = None  # the training weights once fit has ended

    def decay_at(self, n: int) -> float:
        """β_n for this callback's settings."""
        return ema_decay(n, self.decay, self.warmup, self.power, self.inv_gamma, self.min_decay)

    @torch.no_grad()
    def _average(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        """θ̄ ← β_n·θ̄ + (1 − β_n)·θ for one device/dtype group of tensors (torch's ``multi_avg_fn`` contract)."""
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(int(num_averaged)))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._final_raw_state = None
        super().on_fit_start(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """Keep the training weights before Lightning copies the average into the model, so that a checkpoint
        written after this (ModelCheckpoint's own ``save_last`` at ``on_train_end``, which runs after this callback,
        or ``trainer.save_checkpoint`` after ``fit``) still holds them as ``current_model_state``."""
        self._final_raw_state = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._final_raw_state is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._final_raw_state  # the model holds the average now
