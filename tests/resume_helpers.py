"""Callbacks the resume tests put into a `lit-score fit` subprocess (importable with PYTHONPATH=tests)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send ``signal_name`` to this process at the end of training step ``step`` (SIGKILL: die at once, as a
    pre-empted job does; SIGTERM / SIGINT: what a scheduler or Ctrl-C sends)."""

    def __init__(self, step: int, signal_name: str = "SIGKILL", times: int = 1) -> None:
        self.step, self.signal_name, self.times = step, signal_name, times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), getattr(signal, self.signal_name))


class StopAt(Callback):
    """Request a stop after step ``step``, as max_time / early stopping do."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
