"""Callbacks that make a long run trustworthy: exact resume (here), saving on a stop signal
(:mod:`~lit_score.callbacks.stopping`), skipping non-finite steps (:mod:`~lit_score.callbacks.nonfinite`).

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
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lit_score.callbacks.collective import any_rank, gather_objects
from lit_score.callbacks.nonfinite import NonFiniteGuard, NonFiniteStepsError
from lit_score.callbacks.stopping import (
    STOP_SIGNALS,
    FinalCheckpoint,
    GracefulStop,
    TrainingStopped,
    last_checkpoint_path,
    save_last,
)
from lit_score.data.base import ResumableLoader

__all__ = [  # the stopping and non-finite callbacks live in their own modules; their old import paths still work
    "NOT_RESUMABLE", "STOP_SIGNALS", "FinalCheckpoint", "GracefulStop", "NonFiniteGuard", "NonFiniteStepsError",
    "ResumeState", "TrainingStopped", "any_rank", "collect_rng_state", "gather_objects", "last_checkpoint_path",
    "restore_rng_state", "save_last",
]

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


def _resumable_loaders(trainer: pl.Trainer) -> list:
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
