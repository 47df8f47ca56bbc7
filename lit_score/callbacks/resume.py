"""Callbacks that make a long run trustworthy: exact resume, saving on a stop signal, skipping non-finite steps.

``lit-score fit`` adds all four to every run (a config that lists one of them keeps its own settings):

=================  ==========================================================================================
ResumeState        every RNG stream (torch, numpy, python, CUDA) of every rank and the position of every
                   :class:`~lit_score.data.base.ResumableLoader` into each checkpoint, restored at
                   ``on_train_start`` of a resumed fit (after whatever start-up draws: ``seed_everything``, model
                   set-up, the sanity check)
GracefulStop       SIGTERM / SIGUSR1 (pre-emption, SLURM requeue) and a first Ctrl-C: finish the step, write
                   ``last.ckpt``, exit non-zero (:class:`TrainingStopped`); a second Ctrl-C stops at once
FinalCheckpoint    ``last.ckpt`` holds the final weights at any end of training (``max_time``, ``max_steps``,
                   early stopping), where Lightning's ModelCheckpoint can leave it behind; no checkpoint of
                   non-finite weights is written (decided by all ranks together)
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
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

STOP_SIGNALS = tuple(name for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


# --- random state ----------------------------------------------------------------------------------------------
def collect_rng_state() -> dict:
    """This process's RNG streams as plain types and tensors (a checkpoint loads them weights-only). Lightning's
    private ``_collect_rng_states`` gathers the same streams but keeps numpy's state as an ndarray, which a
    weights-only load refuses."""
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


def _resumable_loaders(trainer: pl.Trainer) -> list:
    from lit_score.data.base import ResumableLoader

    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    loaders = combined.flattened if combined is not None else []
    return [loader for loader in loaders if isinstance(loader, ResumableLoader)]


NOT_RESUMABLE = ("You're resuming from a checkpoint that ended before the epoch ended and your dataloader is"
                 " not resumable")


class ResumeState(Callback):
    """Saves every rank's RNG streams and its training loaders' positions (:class:`ResumableLoader`) in each
    checkpoint, and restores both in ``on_train_start`` of a resumed fit — after every start-up draw
    (``seed_everything``, model set-up, the sanity check) and before the first batch is read.

    With another world size on resume, rank r takes what rank r had; ranks without a saved state keep their own
    seeds (warned: the run is then not an exact continuation).
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict | None = None
        self._silenced = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._unsilence()

    def on_train_end(self, trainer, pl_module) -> None:
        self._unsilence()

    def _unsilence(self) -> None:
        if self._silenced is not None:
            if self._silenced in warnings.filters:
                warnings.filters.remove(self._silenced)
                warnings._filters_mutated()
            self._silenced = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        trainer = self._trainer
        if trainer is None:
            return {}
        epoch_length = trainer.num_training_batches
        loaders = [loader.resume_state(epoch_length) for loader in _resumable_loaders(trainer)]
        # dump_checkpoint runs on every rank, so this gather is collective-safe
        return {"ranks": gather_objects(trainer, {"rng": collect_rng_state(), "loaders": loaders})}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks") or []
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if rank < len(ranks):
            self._pending = ranks[rank]
        elif ranks:
            warnings.warn(f"rank {rank}: the checkpoint holds the random state of {len(ranks)} rank(s); this rank"
                          " keeps its own seeds, so the resumed run is not an exact continuation", stacklevel=2)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        restore_rng_state(self._pending["rng"])
        loaders, saved = _resumable_loaders(trainer), self._pending["loaders"]
        if len(loaders) == len(saved):
            for loader, loader_state in zip(loaders, saved):
                loader.resume_from(loader_state)
            combined = getattr(trainer.fit_loop, "_combined_loader", None)
            if loaders and combined is not None and len(loaders) == len(combined.flattened):
                # every training loader's position is restored here, so Lightning's "dataloader is not resumable"
                # warning (raised when its epoch loop restarts, just after this hook) is wrong: silenced until the
                # first batch, and only that message
                warnings.filterwarnings("ignore", message=NOT_RESUMABLE)
                self._silenced = warnings.filters[0]
        else:
            rank_zero_warn(f"the checkpoint records {len(saved)} resumable training loader(s), this run has"
                           f" {len(loaders)}: the data order restarts")
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


def _slurm_requeues(trainer: pl.Trainer) -> bool:
    """Lightning itself handles SIGUSR1 (checkpoint + ``scontrol requeue``) under SLURM with auto-requeue."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

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
        from lit_score.checkpointing import NonFiniteWeightsError, nonfinite_names

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
