"""The one generation path: exactly N samples, sharded over DDP ranks, each batch seeded by its seed index.

Everything that needs many samples (``evaluate``, ``compare``, the in-training quality callback, sample grids and
``lit-score predict``) goes through the functions here:

| name | what |
|---|---|
| seed set ``s`` | one independent draw of N samples (``--seeds 0,1,2`` gives three) |
| seed index ``i`` | 0 … N−1, the position of a sample in its set |
| generation batch | seed indices [k·b, min(N, (k+1)·b)) for batch size b, drawn by one ``pl_module.sample`` call |
| ``batch_seed(s, k·b)`` | the seed of that call's ``torch.Generator`` |

A sample's value therefore depends only on (checkpoint, sampler, seed set, seed index, generation batch size),
never on the world size when the batch size is fixed (``generate`` and ``evaluate`` always fix it; sample grids
default to one batch per rank, faster but world-size dependent). Ranks share out whole batches (``trainer.predict``
with Lightning's unrepeated distributed sampler, or round-robin inside a fit loop) and the gathered result is put
back in seed-index order.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_score.atomic import savez
from lit_score.samplers.base import Draw

# torch's CPU generator keeps only the low 32 bits of a seed (mt19937), so everything must fit in 32 bits:
# 12 bits of seed set, 20 bits of seed index (up to 1,048,576 samples per set) — no two batches ever share a seed.
_INDEX_BITS, _SEED_BITS = 20, 12


def batch_seed(seed: int, start: int) -> int:
    """Generator seed of the generation batch of seed set ``seed`` that starts at seed index ``start``."""
    if not 0 <= seed < 2**_SEED_BITS or not 0 <= start < 2**_INDEX_BITS:
        raise ValueError(f"seed sets are numbered 0 … {2**_SEED_BITS - 1} and hold at most {2**_INDEX_BITS} samples,"
                         f" got seed {seed}, seed index {start}")
    return (seed << _INDEX_BITS) + start


class SeedBatches(Dataset):
    """Item k is one generation batch: ``{"seed": s, "start": k·b, "index": LongTensor of its seed indices}``.

    Serve it with ``batch_size=None`` (see :func:`seed_loader`) so that DDP samplers shard whole batches.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        batch_seed(seed, num_samples - 1)  # validates the seed and the count
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        start = k * self.batch_size
        stop = min(self.num_samples, start + self.batch_size)
        return {"seed": self.seed, "start": start, "index": torch.arange(start, stop)}


def seed_loader(num_samples: int, batch_size: int, seed: int = 0) -> DataLoader:
    """A loader of whole generation batches (no collation), for ``trainer.predict``."""
    return DataLoader(SeedBatches(num_samples, batch_size, seed), batch_size=None, shuffle=False)


def seed_batch_draw(pl_module, batch: dict[str, Any], sampler=None, progress: bool = False, edit=None) -> Draw:
    """``pl_module.draw`` for one generation batch, with the generator of its first seed index and the class labels
    of its seed indices (``pl_module.condition_labels``; None for an unconditional model); with an ``edit``
    (SDEdit / inpainting, :class:`~lit_score.control.edit.Edit`) the rows of its seed indices are edited. Returns the
    :class:`~lit_score.samplers.base.Draw`: samples, NFE and what the sampler measured."""
    generator = torch.Generator(pl_module.device).manual_seed(batch_seed(int(batch["seed"]), int(batch["start"])))
    labels = pl_module.condition_labels(batch["index"])
    edit = None if edit is None else edit.rows(batch["index"])
    return pl_module.draw(len(batch["index"]), sampler=sampler, generator=generator, progress=progress,
                          labels=labels, edit=edit)


def draw_seed_batch(pl_module, batch: dict[str, Any], sampler=None, progress: bool = False, edit=None) -> Tensor:
    """The samples of :func:`seed_batch_draw`."""
    return seed_batch_draw(pl_module, batch, sampler, progress, edit).samples


def gather_rows(strategy, x: Tensor, chunk_rows: int = 4096) -> Tensor:
    """Every rank's rows (n_r, ...) concatenated in rank order, on every rank (CPU); ranks may hold different n_r.

    Rows travel padded to the largest n_r in chunks of ``chunk_rows``, so accelerator memory stays bounded.
    """
    device = strategy.root_device
    counts = strategy.all_gather(torch.tensor(x.shape[0], device=device)).reshape(-1).tolist()
    most = max(counts)
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype)
    padded[: x.shape[0]] = x.detach().cpu()
    parts = []
    for start in range(0, most, chunk_rows):
        chunk = strategy.all_gather(padded[start : start + chunk_rows].to(device))  # (world, rows, ...)
        parts.append(chunk.cpu())
    gathered = torch.cat(parts, dim=1) if parts else padded[None, :0].expand(len(counts), *padded.shape)
    return torch.cat([gathered[r, : counts[r]] for r in range(len(counts))])


def generate_local(
    trainer: pl.Trainer,
    pl_module,
    n: int,
    sampler=None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[Draw, Tensor]:
    """This rank's share of n samples from inside a fit/validation loop: its :class:`~lit_score.samplers.base.Draw`
    (samples (n_r, ...), and the NFE and measurements of its last generation batch) and seed indices (n_r,).

    Ranks take generation batches round-robin (rank r draws batches r, r + world, …); a rank left without a batch
    returns empty tensors (and NFE 0). For metrics that sync their own states (torchmetrics);
    :func:`draw_across_ranks` gathers the shares.
    """
    world, rank = trainer.world_size, trainer.global_rank
    batches = SeedBatches(n, batch_size or math.ceil(n / world), seed)
    mine = [batches[k] for k in range(rank, len(batches), world)]
    if not mine:  # more ranks than batches: this rank draws nothing (its row shape still has to match)
        empty = torch.zeros((0, *pl_module.require_shape()), device=pl_module.device)
        return Draw(empty, 0, {}), torch.zeros(0, dtype=torch.long)
    draws = [seed_batch_draw(pl_module, batch, sampler, progress) for batch in mine]
    samples = torch.cat([draw.samples for draw in draws])
    return Draw(samples, draws[-1].nfe, draws[-1].measurements), torch.cat([batch["index"] for batch in mine])


def generate_across_ranks(
    trainer: pl.Trainer,
    pl_module,
    n: int,
    sampler=None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """The samples of :func:`draw_across_ranks`."""
    return draw_across_ranks(trainer, pl_module, n, sampler, seed, batch_size, progress).samples


def draw_across_ranks(
    trainer: pl.Trainer,
    pl_module,
    n: int,
    sampler=None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> Draw:
    """n samples from inside a fit/validation loop: ranks take generation batches round-robin; every rank gets all n
    samples, and the NFE and measurements of its own last generation batch (NFE 0 on a rank that drew none).

    ``batch_size`` fixes the generation batches (the result is then independent of the world size); by default it is
    ⌈n / world⌉, one batch per rank (fastest, but the samples then depend on the world size).
    """
    local, index = generate_local(trainer, pl_module, n, sampler, seed, batch_size, progress)
    if trainer.world_size == 1:
        return local
    samples, order = gather_rows(trainer.strategy, local.samples), gather_rows(trainer.strategy, index)
    return local._replace(samples=samples[torch.argsort(order)].to(local.samples.device))


class SampleCollector(BasePredictionWriter):
    """Collects what ``trainer.predict`` generates from :func:`seed_loader` batches; rank 0 ends with all of it.

    Each batch's prediction is its samples; ``predict_step`` records the batch's NFE in the batch (``batch["nfe"]``).
    After the predict epoch, ``samples`` (N, ...) on rank 0 are in seed-index order and ``nfe`` lists the NFE of each
    generation batch; with ``path`` they are also written there as ``.npz`` (``samples``, ``nfe``, ``index``, plus
    ``metadata``), which is how a caller reads them back from a forked or spawned DDP run.
    """

    def __init__(self, path: str | Path | None = None, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path) if path is not None else None
        self.metadata = dict(metadata or {})
        self.samples: Tensor | None = None
        self.nfe: list[int] = []
        self._parts: list[tuple[Tensor, Tensor, int]] = []

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._parts = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not isinstance(batch, dict) or "index" not in batch:
            raise TypeError("SampleCollector needs the generation batches of lit_score.evaluation.seed_loader")
        self._parts.append((batch["index"].cpu(), prediction.detach().cpu(), int(batch["nfe"])))

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        shape = tuple(pl_module.require_shape())
        index = torch.cat([p[0] for p in self._parts]) if self._parts else torch.zeros(0, dtype=torch.long)
        samples = torch.cat([p[1] for p in self._parts]) if self._parts else torch.zeros((0, *shape))
        nfe = torch.tensor([p[2] for p in self._parts], dtype=torch.long)
        if trainer.world_size > 1:
            index, samples = gather_rows(trainer.strategy, index), gather_rows(trainer.strategy, samples)
            nfe = gather_rows(trainer.strategy, nfe)
        self._parts = []
        if not trainer.is_global_zero:
            return
        order = torch.argsort(index)
        self.samples, self.nfe = samples[order], nfe.tolist()
        if self.path is not None:
            save_generation(self.path, self.samples, self.nfe, index[order], self.metadata)


def save_generation(path: Path, samples: Tensor, nfe: list[int], index: Tensor, metadata: dict[str, Any]) -> Path:
    """Write samples + per-batch NFE + seed indices (+ metadata) as one .npz, atomically (temp file, then rename)."""
    extras = {k: np.asarray(v) for k, v in metadata.items()}
    return savez(path, samples=samples.float().numpy(), nfe=np.asarray(nfe), index=index.numpy(), **extras)


@dataclass
class Generation:
    """What :func:`generate` made: ``samples`` (N, ...) in seed-index order on CPU, the NFE of every generation
    batch, and how: seed set, generation batch size and wall time."""

    samples: Tensor
    nfe: list[int]
    seed: int
    batch_size: int
    seconds: float
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe_mean(self) -> float:
        return float(np.mean(self.nfe)) if self.nfe else 0.0


@contextmanager
def sampling_with(pl_module, sampler) -> Iterator[None]:
    """Temporarily make ``sampler`` the module's own (what ``predict_step`` draws with); restored on exit."""
    if sampler is None:
        yield
        return
    previous = pl_module.sampler
    pl_module.sampler = sampler
    try:
        yield
    finally:
        pl_module.sampler = previous


def generate(
    pl_module,
    num_samples: int,
    *,
    sampler=None,
    seed: int = 0,
    batch_size: int | None = None,
    path: str | Path | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> Generation | None:
    """Draw exactly ``num_samples`` samples with ``trainer.predict`` (sharded over the trainer's devices).

    Returns the :class:`Generation` on rank 0 (read back from ``path`` when given, which a forked / spawned DDP run
    needs) and None on the other ranks. ``trainer_kwargs`` go to ``pl.Trainer`` (accelerator, devices, strategy,
    num_nodes, precision); logging and checkpointing are off.
    """
    batch_size = batch_size or min(num_samples, 1000)
    collector = SampleCollector(path, {"seed": seed, "batch_size": batch_size})
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False,
              "enable_progress_bar": progress, **(trainer_kwargs or {})}
    kwargs["callbacks"] = [*kwargs.get("callbacks", []), collector]
    trainer = pl.Trainer(**kwargs)
    start = time.perf_counter()
    with sampling_with(pl_module, sampler), warnings.catch_warnings():
        # whole batches carry their own seed indices: Lightning's batch-index tracking has nothing to infer
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
        trainer.predict(pl_module, dataloaders=seed_loader(num_samples, batch_size, seed), return_predictions=False)
    seconds = time.perf_counter() - start
    if trainer.global_rank != 0:
        return None
    if collector.samples is None:  # the work ran in forked / spawned processes: read what rank 0 wrote
        if collector.path is None or not collector.path.is_file():
            raise RuntimeError("generation ran in child processes: pass path= so rank 0 can hand the samples back")
        with np.load(collector.path) as data:
            collector.samples, collector.nfe = torch.from_numpy(data["samples"]), data["nfe"].tolist()
    if collector.samples.shape[0] != num_samples:
        raise RuntimeError(f"generated {collector.samples.shape[0]} samples, expected {num_samples}")
    return Generation(collector.samples, collector.nfe, seed, batch_size, seconds, trainer.world_size)
