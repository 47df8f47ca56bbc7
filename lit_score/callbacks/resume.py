"""Callbacks that make a long run trustworthy: exact resume, saving on a stop signal, skipping non-finite steps.

``lit-score fit`` adds all three to every run (a config that lists one of them keeps its own settings):

=================  ==========================================================================================
RandomState        every RNG stream (torch, numpy, python, CUDA) of every rank into each checkpoint, restored
                   right before the first training batch after a resume (so whatever the start-up draws —
                   ``seed_everything``, model set-up, the sanity check — cannot shift the streams)
GracefulStop       SIGTERM / SIGUSR1 (pre-emption, SLURM requeue) and a first Ctrl-C: finish the step, write
                   ``last.ckpt``, exit non-zero (:class:`TrainingStopped`); a second Ctrl-C stops at once. Also
                   writes ``last.ckpt`` of the final weights at the last step of any run (``max_time``,
                   ``max_steps``, early stopping, the last epoch), where Lightning's ModelCheckpoint can leave it
                   behind (step-based schedules, stops mid-epoch)
NonFiniteGuard     a step whose loss or gradient is not finite is skipped with the optimizer untouched (its
                   gradients are dropped, so no parameter and no Adam moment moves) and counted
                   (``train/skipped_steps``); ``max_consecutive`` such steps in a row stop the run with one line
=================  ==========================================================================================

Every decision (stop on a signal, skip a step) is taken by all DDP ranks together (one all-reduce of a flag).
Together with :class:`lit_score.data.base.ResumableLoader` (the data order and position) and the models' own
state (the EBM's chain generator and replay buffer), a run killed at any point and resumed from its last
checkpoint ends bit-identical on CPU to one that never stopped (``tests/test_resume.py``).
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


# --- random state ----------------------------------------------------------------------------------------------
def collect_rng_state() -> dict:
    """This process's RNG streams as plain types and tensors (a checkpoint loads them weights-only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Set this process's RNG streams to a :func:`collect_rng_state` result."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(trainer: pl.Trainer, obj) -> list:
    """``obj`` of every rank, in rank order (a list of one without DDP); every rank must call it."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=False))
    return bool(flag)


class RandomState(Callback):
    """Saves every rank's RNG streams in each checkpoint and restores them before the first batch of a resumed fit.

    With another world size on resume, rank r takes the streams rank r had (ranks without one keep theirs: warned).
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        # dump_checkpoint runs on every rank, so the gather below is collective-safe
        return {"ranks": gather_objects(self._trainer, collect_rng_state())} if self._trainer is not None else {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks") or []
        rank = self._trainer.global_rank if getattr(self, "_trainer", None) is not None else 0
        if rank < len(ranks):
            self._pending = ranks[rank]
        elif ranks:
            rank_zero_warn(f"the checkpoint holds the random state of {len(ranks)} rank(s); ranks beyond keep their"
                           " own seeds, so this resumed run is not an exact continuation")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None


# --- stopping --------------------------------------------------------------------------------------------------
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
    from lit_score.callbacks.samples import run_dir

    return run_dir(trainer) / "checkpoints" / "last.ckpt"


class GracefulStop(Callback):
    """Save ``last.ckpt`` and exit non-zero on SIGTERM / SIGUSR1 / Ctrl-C; keep ``last.ckpt`` current at any stop.

    Args:
        signals: the signals that stop a run with a checkpoint (names from :mod:`signal`).
        save_final: write ``last.ckpt`` after the final training step (``max_time``, ``max_steps``, ``should_stop``,
            the last epoch) if a ModelCheckpoint keeps a last checkpoint (``save_last``) and does not write one at
            that step itself.
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = STOP_SIGNALS, save_final: bool = True) -> None:
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}: use names such as SIGTERM, SIGUSR1, SIGINT")
        self.signals, self.save_final = tuple(signals), save_final
        self._received: int | None = None
        self._previous: dict[int, object] = {}

    # handlers live only while training runs, in the main thread
    def on_train_start(self, trainer, pl_module) -> None:
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
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
        received = any_rank(trainer, self._received is not None)
        if received:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            signum = self._received if self._received is not None else signal.SIGTERM
            name = signal.Signals(signum).name
            raise TrainingStopped(f"stopped by {name} at step {trainer.global_step}: saved {path}; resume with"
                                  f" `lit-score fit --config … --ckpt_path {path}`", signum)
        if self.save_final and self._final_batch(trainer) and self._keeps_last(trainer):
            trainer.save_checkpoint(last_checkpoint_path(trainer))

    @staticmethod
    def _final_batch(trainer: pl.Trainer) -> bool:
        """Training stops after this batch: a stop was requested, max_steps is reached, or the last epoch ends."""
        last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step or (epoch_end and last_epoch)

    @staticmethod
    def _keeps_last(trainer: pl.Trainer) -> bool:
        """A ModelCheckpoint keeps last.ckpt and will not write one at this very step itself."""
        keeps = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]
        every = [cb._every_n_train_steps for cb in keeps]
        return bool(keeps) and not any(n > 0 and trainer.global_step % n == 0 for n in every)


# --- non-finite steps ------------------------------------------------------------------------------------------
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
        self._loss_finite = bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = self._loss_finite and (scaled or all(bool(torch.isfinite(g).all()) for g in grads))
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
