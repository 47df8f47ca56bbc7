r"""Reflow pairs on disk and the data module that serves them (Liu, Gong & Liu 2022, "Flow straight and fast").

=======================  ==========================================================================================
symbol                   meaning
=======================  ==========================================================================================
ε (``noise``)            the start of a probability-flow ODE path, in the process's noise units: the sampler began at
                         x_{t_max} = σ(t_max)·ε (the paper's Z₀; the prior draw of ``lit-score sample``)
x (``samples``)          where the path ended at t_min (the paper's Z₁: the teacher's sample)
(ε, x)                   the coupling a k-rectified flow induces; the (k+1)-rectified flow is trained on it
=======================  ==========================================================================================

A pair folder (written by :func:`lit_score.distillation.draw_pairs` / ``lit-score pairs``) holds ``manifest.json``
(the protocol: checkpoint and its sha256, weights, sampler, seed, shard size, count, shape; then the shards and their
NFE) and ``shard_00000.pt`` … , each a ``torch.save`` dict of tensors ``noise``, ``samples`` (and ``labels`` (n,)
for a class-conditional model), with ints ``start`` (its first pair's index) and ``nfe``.

:class:`ReflowPairs` yields :class:`Coupling` batches ``(x, labels, noise)``: ``x`` and ``labels`` where the families
read a batch's data and labels (``batch[0]``, ``batch[1]``: None unless the pairs carry labels and ``labels`` is on),
and ``noise``, which :class:`~lit_score.models.DiffusionModule` hands to a loss that declares ``takes_coupling``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_score.data.base import GenerativeDataModule, TensorData, num_held_out

MANIFEST = "manifest.json"
FORMAT = "lit-score reflow pairs"


def shard_name(index: int) -> str:
    """The file name of shard ``index``."""
    return f"shard_{index:05d}.pt"


class Coupling(NamedTuple):
    """A batch of pairs: the samples x (B, *shape), their class labels (B,) or None, the paired noise ε (B, *shape)."""

    x: Tensor
    labels: Tensor | None
    noise: Tensor


def collate_couplings(items: list[tuple]) -> Coupling:
    """Stack items (x, ε) or (x, ε, y) into one :class:`Coupling`."""
    x, noise = torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])
    labels = torch.stack([item[2] for item in items]) if len(items[0]) > 2 else None
    return Coupling(x, labels, noise)


class CoupledData(Dataset):
    """Items (x_i, ε_i) or (x_i, ε_i, y_i) of aligned tensors."""

    def __init__(self, samples: Tensor, noise: Tensor, labels: Tensor | None = None) -> None:
        self.samples, self.noise, self.labels = samples, noise, labels

    def __len__(self) -> int:
        return self.samples.shape[0]

    def __getitem__(self, index: int) -> tuple:
        item = (self.samples[index], self.noise[index])
        return item if self.labels is None else (*item, self.labels[index])


def read_manifest(root: str | Path) -> dict:
    """The manifest of the pair folder ``root``, refused in one line where there is none or it is not one."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{root} holds no reflow pairs ({MANIFEST} missing): draw them with lit-score pairs"
                         f" --ckpt_path RUN.ckpt --num_pairs N --output {root}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a manifest of reflow pairs (format {manifest.get('format')!r})")
    return manifest


def load_shard(root: str | Path, index: int) -> dict:
    """Shard ``index`` of ``root`` (tensors and ints only: ``weights_only``)."""
    return torch.load(Path(root) / shard_name(index), map_location="cpu", weights_only=True)


def load_pairs(root: str | Path) -> tuple[Tensor, Tensor, Tensor | None, dict]:
    """All pairs of a complete folder in index order: (samples, noise, labels or None, manifest)."""
    manifest = read_manifest(root)
    num_shards = manifest["protocol"]["num_shards"]
    missing = [i for i in range(num_shards) if not (Path(root) / shard_name(i)).is_file()]
    if missing:
        raise ValueError(f"{root} lacks {len(missing)} of its {num_shards} shards (first: {shard_name(missing[0])}):"
                         " rerun the same lit-score pairs command to draw them")
    shards = [load_shard(root, i) for i in range(num_shards)]
    labels = torch.cat([s["labels"] for s in shards]) if "labels" in shards[0] else None
    return (torch.cat([s["samples"] for s in shards]), torch.cat([s["noise"] for s in shards]), labels, manifest)


class ReflowPairs(GenerativeDataModule):
    """The reflow pairs of a folder as :class:`Coupling` batches (module docstring), for the (k+1)-rectified flow.

    Args:
        root: the pair folder (``lit-score pairs --output``); it must be complete.
        batch_size, num_workers, seed: as every data module (``seed`` draws the held-out split).
        val_size: held-out pairs, a count or a fraction (validation loss on the coupling).
        labels: yield the pairs' class labels (pairs drawn from a class-conditional model carry them).
        reference: the data the teacher learnt (e.g. ``Toy2D``), whose samples the metrics compare against
            (``SampleQuality``, ``lit-score evaluate``); None: the teacher's own samples x stand in for the data.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 0.05,
        seed: int = 0,
        labels: bool = False,
        reference: GenerativeDataModule | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size, seed, labels)
        self.root, self.reference = str(root), reference
        self.manifest = read_manifest(root)
        self.check_labels()
        if labels and not self.manifest["protocol"]["conditional"]:
            raise ValueError(f"the pairs of {root} carry no labels (drawn from an unconditional model): drop labels")
        self.train_pairs: CoupledData | None = None
        self.val_pairs: CoupledData | None = None
        self.save_hyperparameters()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["protocol"]["shape"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["protocol"]["num_classes"])

    @property
    def label(self) -> str:
        return f"ReflowPairs({Path(self.root).name})"

    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        samples, noise, labels, self.manifest = load_pairs(self.root)
        order = torch.randperm(samples.shape[0], generator=self._generator())
        held = num_held_out(self.val_size, samples.shape[0])
        keep = labels is not None and self.labels
        splits = [order[held:], order[:held]]
        self.train_pairs, self.val_pairs = (CoupledData(samples[i], noise[i], labels[i] if keep else None)
                                            for i in splits)
        self.train_dataset, self.val_dataset = (TensorData(samples[i]) for i in splits)
        if keep:
            self.train_labels, self.val_labels = (labels[i] for i in splits)
        if self.reference is not None:
            self.reference.setup(stage)
        self.reference_dataset = (self.reference.reference_dataset if self.reference is not None
                                  else self.train_dataset)

    def _loader(self, dataset: Dataset, shuffle: bool, labels: Tensor | None = None) -> DataLoader:
        """Coupling batches of the split ``dataset`` stands for (the pairs, not the plain samples)."""
        pairs = self.train_pairs if dataset is self.train_dataset else self.val_pairs
        return self.batches_of(pairs, shuffle, collate_couplings)

    # --- what the metrics compare against: the reference data where given -------------------------------------------
    @property
    def has_exact_sampler(self) -> bool:
        return self.reference.has_exact_sampler if self.reference is not None else False

    @property
    def has_density(self) -> bool:
        return self.reference.has_density if self.reference is not None else False

    def log_prob(self, x: Tensor) -> Tensor:
        return self.reference.log_prob(x) if self.reference is not None else super().log_prob(x)

    @property
    def data_range(self) -> tuple[float, float]:
        return self.reference.data_range if self.reference is not None else super().data_range

    @property
    def default_feature_extractor(self) -> str:
        """The reference's (``digits-v2`` for digits pairs), so that FID of a reflowed model is measured as its
        teacher's was."""
        return (self.reference.default_feature_extractor if self.reference is not None
                else super().default_feature_extractor)

    def reference_samples(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        self._ensure_setup()
        if self.reference is not None:
            return self.reference.reference_samples(n, generator)
        return super().reference_samples(n, generator)

    def reference_draw(self, n: int, generator: torch.Generator | None = None, split: str = "train") -> Tensor:
        self._ensure_setup()
        if self.reference is not None:
            return self.reference.reference_draw(n, generator, split)
        return super().reference_draw(n, generator, split)


__all__ = ["FORMAT", "MANIFEST", "CoupledData", "Coupling", "ReflowPairs", "collate_couplings", "load_pairs",
           "load_shard", "read_manifest", "shard_name"]
