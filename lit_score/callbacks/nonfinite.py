"""Skipping training steps whose loss or gradient is not finite, with the optimizer untouched (:class:`NonFiniteGuard`,
added to every ``lit-score fit`` run)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lit_score.callbacks.collective import any_rank


class NonFiniteStepsError(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


class NonFiniteGuard(Callback):
    """Skip steps whose loss or gradients are not finite; stop after ``max_consecutive`` of them in a row.

    A skipped step drops every gradient before the optimizer runs, so no parameter, moment or step count moves
    (optimizers skip parameters without a gradient); the learning-rate schedule still advances. Under ``16-mixed``
    the gradient scaler already skips overflowing steps (and does so on purpose while it calibrates), so there
    only non-finite losses count.

    Args:
        max_consecutive: how many non-finite steps in a row end the run (>= 1).
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped, self.consecutive = 0, 0
        self._loss_finite = True

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.skip_nonfinite_steps = True  # the module's own check then defers to this guard

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.consecutive = int(state["skipped"]), int(state["consecutive"])

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._loss_finite &= bool(torch.isfinite(loss.detach()).all())  # every micro-batch of an accumulation

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = self._loss_finite
        if finite and not scaled and grads:  # one host sync for all gradients
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        self._loss_finite = True
        if not any_rank(trainer, not finite):
            self.consecutive = 0
            pl_module.log("train/skipped_steps", float(self.skipped))
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        self.consecutive += 1
        pl_module.log("train/skipped_steps", float(self.skipped))
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteStepsError(
                f"{self.consecutive} training steps in a row had a non-finite loss or gradient (step"
                f" {trainer.global_step}, {self.skipped} skipped in all): lower the learning rate, set"
                " --trainer.gradient_clip_val 1.0, use 32-bit precision, or check the data for NaNs; the checkpoints"
                " already written hold finite weights"
            )
        rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradient, step skipped"
                       f" ({self.consecutive} in a row, {self.skipped} in all)")
