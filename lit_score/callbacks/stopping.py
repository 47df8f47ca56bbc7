"""Ending a run with its weights on disk: a stop signal saves a checkpoint first, and ``last.ckpt`` holds the final
weights however training ended.

=================  ==========================================================================================
GracefulStop       SIGTERM / SIGUSR1 (pre-emption, SLURM requeue) and a first Ctrl-C: finish the step, write
                   ``last.ckpt``, exit non-zero (:class:`TrainingStopped`); a second Ctrl-C stops at once
FinalCheckpoint    ``last.ckpt`` holds the final weights at any end of training (``max_time``, ``max_steps``,
                   early stopping), where Lightning's ModelCheckpoint can leave it behind; no checkpoint of
                   non-finite weights is written (decided by all ranks together)
=================  ==========================================================================================

``lit-score fit`` adds both to every run (:mod:`lit_score.callbacks.resume` lists the four long-run callbacks).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_score.callbacks.collective import any_rank
from lit_score.callbacks.samples import run_dir
from lit_score.checkpointing import NonFiniteWeightsError, nonfinite_names

STOP_SIGNALS = tuple(name for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


class TrainingStopped(RuntimeError):
    """Training was stopped by a signal after its checkpoint was written; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where ``last.ckpt`` goes: the first ModelCheckpoint's folder, else ``<run>/checkpoints``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None:
            return Path(cb.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return run_dir(trainer) / "checkpoints" / "last.ckpt"


def _slurm_requeues(trainer: pl.Trainer) -> bool:
    """Lightning itself handles SIGUSR1 (checkpoint + ``scontrol requeue``) under SLURM with auto-requeue."""
    environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


class GracefulStop(Callback):
    """On SIGTERM / SIGUSR1 / Ctrl-C: finish the step, save ``last.ckpt``, exit with 128 + the signal.

    The decision is taken by all ranks together, at the end of an optimizer step (not inside gradient accumulation:
    accumulated gradients are not part of a checkpoint). A second Ctrl-C stops at once without saving (exit 130).
    Under SLURM with auto-requeue SIGUSR1 is left to Lightning (save + requeue).

    Args:
        signals: the signals that stop a run with a checkpoint (names from :mod:`signal`).
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = STOP_SIGNALS) -> None:
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}: use names such as SIGTERM, SIGUSR1, SIGINT")
        self.signals = tuple(signals)
        self._received: int | None = None
        self._previous: dict[int, object] = {}

    # handlers live only while training runs, in the main thread
    def on_train_start(self, trainer, pl_module) -> None:
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            if name == "SIGUSR1" and _slurm_requeues(trainer):
                continue
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self._received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a checkpoint
            raise TrainingStopped("stopped by a second Ctrl-C, at once: no checkpoint was written for this step;"
                                  " resume from the last one with --ckpt_path last", signum)
        self._received = signum
        hint = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
        print(f"lit-score: {signal.Signals(signum).name} received: saving a checkpoint after this step{hint}",
              file=sys.stderr, flush=True)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return  # mid-accumulation: decide after the optimizer step
        if not any_rank(trainer, self._received is not None):
            return
        path = save_last(trainer)
        signum = self._received if self._received is not None else signal.SIGTERM
        name = signal.Signals(signum).name
        raise TrainingStopped(f"stopped by {name} at step {trainer.global_step}: saved {path}; resume with"
                              f" `lit-score fit --config … --ckpt_path {path}`", signum)


def save_last(trainer: pl.Trainer) -> Path:
    """Write ``last.ckpt`` now (every rank calls it) and tell the ModelCheckpoints that keep one, so they go on
    writing that file rather than a ``last-v1.ckpt`` beside it."""
    path = last_checkpoint_path(trainer)
    trainer.save_checkpoint(path)
    for cb in trainer.checkpoint_callbacks:
        same_folder = cb.dirpath is not None and Path(cb.dirpath).resolve() == path.parent.resolve()
        if isinstance(cb, ModelCheckpoint) and cb.save_last and same_folder:
            # the very string ModelCheckpoint compares its next "last" name with ("./runs/…" is not "runs/…"), and its
            # record that a last checkpoint exists: otherwise its on_train_end writes last-v1.ckpt and deletes ours
            cb.last_model_path = cb.format_checkpoint_name({}, cb.CHECKPOINT_NAME_LAST)
            cb._last_checkpoint_saved = cb.last_model_path
    return path


class FinalCheckpoint(Callback):
    """Make ``last.ckpt`` hold the final weights, however training ended (``max_time``, ``max_steps``, early
    stopping, the last epoch): Lightning's ModelCheckpoint can leave it behind (step-based schedules, stops
    mid-epoch). At ``on_train_end`` it writes one if a ModelCheckpoint keeps a last checkpoint (``save_last``) and
    no checkpoint was written at the final step. It also refuses, on every rank together, to write a checkpoint of
    non-finite weights (so a DDP run stops cleanly instead of waiting for rank 0's writer).

    ``lit-score fit`` puts it first among the callbacks, so its ``on_train_end`` runs before an EMA callback copies
    the averaged weights into the model (the checkpoint keeps both, as every other one does).
    """

    def __init__(self) -> None:
        self._saved_step: int | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        bad = nonfinite_names(pl_module.named_parameters())
        if any_rank(trainer, bool(bad)):
            raise NonFiniteWeightsError(
                f"refusing to write a checkpoint at step {trainer.global_step}: weights"
                f" {', '.join(bad[:3]) or 'on another rank'} are not finite (the run diverged); the previous"
                " checkpoints are intact"
            )
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        keeps = any(isinstance(cb, ModelCheckpoint) and cb.save_last for cb in trainer.checkpoint_callbacks)
        if keeps and trainer.global_step > 0 and self._saved_step != trainer.global_step:
            save_last(trainer)
