"""The loaders of the datamodules: :class:`ResumableLoader`, a DataLoader that resumes mid-epoch (the data order and
position travel in each checkpoint), and :func:`ignore_stop_signals`, the worker setup that leaves stop signals to the
main process."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator

from torch import Tensor
from torch.utils.data import DataLoader


class _SkipBatches:
    """A batch sampler that drops its first ``skip`` batches of indices (no data is read for them)."""

    def __init__(self, batches, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT / SIGTERM / SIGUSR1 to the main process (which saves a checkpoint and stops them);
    Lightning's per-worker seeding still runs when ``seed_everything(workers=True)`` asked for it."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class ResumableLoader(DataLoader):
    """A DataLoader that resumes mid-epoch: a resumed run sees the batches an uninterrupted one would have seen.

    :class:`lit_score.callbacks.ResumeState` saves :meth:`resume_state` in each checkpoint and hands it back through
    :meth:`resume_from` before training restarts. The state is the shuffling generator's state at the start of the
    current epoch, its state now, and how many batches of the epoch were consumed. On resume the epoch's order is
    redrawn from the saved start state and the consumed batches are dropped at the index level (no data is read
    for them, so augmentations drawing from the global RNG stay in step); a checkpoint written at an epoch's end
    continues with the next epoch's order. Under DDP Lightning swaps in a DistributedSampler whose order is a
    function of (seed, epoch); the skip is applied when the first batch is requested, after Lightning has set the
    sampler's epoch.

    Iteration is lazy: nothing (no generator draw, no skip) happens until the first batch is requested, so an
    iterator Lightning makes and drops unused leaves the state alone. Lightning reads no batch ahead from a loader
    with a length, so the batches handed out are the batches consumed.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_start_state: Tensor | None = None
        self._handed_out, self._skip_now = 0, 0
        self._resume: tuple[Tensor | None, int] | None = None

    @property
    def _index_sampler(self):
        base = super()._index_sampler
        return _SkipBatches(base, self._skip_now) if self._skip_now else base

    def __iter__(self) -> Iterator:
        return self._batches()

    def _batches(self) -> Iterator:
        state, skip = self._resume if self._resume is not None else (None, 0)
        self._resume = None
        if self.generator is not None:
            if state is not None:
                self.generator.set_state(state)
            self._epoch_start_state = self.generator.get_state()
        self._skip_now = skip
        try:
            iterator = super().__iter__()
        finally:
            self._skip_now = 0
        self._handed_out = skip
        for batch in iterator:
            self._handed_out += 1
            yield batch

    def resume_state(self, epoch_length: int) -> dict:
        """Where the loader stands; ``epoch_length`` is the number of batches the fit loop takes per epoch."""
        generator = self.generator.get_state() if self.generator is not None else None
        return {"epoch_start_generator": self._epoch_start_state, "generator": generator,
                "consumed": self._handed_out, "epoch_length": int(epoch_length)}

    def resume_from(self, state: dict) -> None:
        """Continue from a :meth:`resume_state` at the next iteration."""
        if state["consumed"] >= state["epoch_length"] or state["epoch_start_generator"] is None:
            self._resume = (state["generator"], 0)  # the epoch was complete: the next epoch's order
        else:
            self._resume = (state["epoch_start_generator"], int(state["consumed"]))
