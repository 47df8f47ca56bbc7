"""Shared base of the datamodules: batching, a held-out validation split and real samples for metrics.

Every datamodule yields plain tensors of shape (B, *sample_shape) and knows its ``sample_shape`` right after
``__init__``, because the CLI links it to the model before ``setup`` runs. A data module built with ``labels: true``
(where its data has classes: ``num_classes``) yields (x, y) batches from its train / val loaders instead, y (B,) long;
the datasets behind the metrics (``reference_samples``, ``split_dataset``) stay plain.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_score.data.loaders import ResumableLoader, ignore_stop_signals
from lit_score.generation import batch_seed, seed_loader


class TensorData(Dataset):
    """In-memory samples (N, *shape) served one at a time, optionally flipped left-right at random."""

    def __init__(self, data: Tensor, flip: bool = False) -> None:
        self.data = data
        self.flip = flip

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        x = self.data[index]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


class Labelled(Dataset):
    """Items (dataset[i], labels[i]) of a dataset of plain samples and a label tensor (N,) aligned with it."""

    def __init__(self, dataset: Dataset, labels: Tensor) -> None:
        if len(dataset) != labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {len(dataset)} samples")
        self.dataset, self.labels = dataset, labels.long()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.dataset[index], self.labels[index]


def num_held_out(size: int | float, n: int) -> int:
    """Number of items to hold out of ``n``: ``size`` items if an int, ``round(size * n)`` if a float.

    At least one item is held out and one kept whenever ``n >= 2``.
    """
    count = size if isinstance(size, int) else round(size * n)
    if n < 2:
        return 0
    return min(max(count, 1), n - 1)


def draw_indices(size: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` random indices into ``size`` items: without replacement while n <= size, with replacement beyond."""
    if n <= size:
        return torch.randperm(size, generator=generator)[:n]
    return torch.randint(size, (n,), generator=generator)


class GenerativeDataModule(pl.LightningDataModule):
    """Base datamodule: train/val loaders over plain tensors, ``sample_shape``, ``data_range`` and reference draws.

    Subclasses implement ``sample_shape`` and ``setup`` (which sets ``train_dataset``, ``val_dataset`` and
    ``reference_dataset``, the last being the training data without augmentation). ``val_size`` is a count
    (int) or a fraction (float) whose exact meaning each subclass documents.
    """

    #: the class labels of the training and held-out splits (N,), set by ``setup`` when ``labels`` is on
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None

    def __init__(
        self, batch_size: int = 128, num_workers: int = 0, val_size: int | float = 0.1, seed: int = 0,
        labels: bool = False,
    ) -> None:
        super().__init__()
        self.labels = bool(labels)
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got batch_size={batch_size},"
                             f" num_workers={num_workers}")
        if (isinstance(val_size, float) and not 0 <= val_size < 1) or (isinstance(val_size, int) and val_size < 0):
            raise ValueError(f"val_size is a count >= 0 or a fraction in [0, 1), got {val_size}")
        batch_seed(seed, 0)  # predict's seed set is this seed: refuse one it cannot use now, not at predict time
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.reference_dataset: Dataset | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (2,) for toy data or (C, H, W) for images."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """K of data with class labels (0: the data has none). Subclasses with classes override it."""
        return 0

    @property
    def can_classify(self) -> bool:
        """Whether :meth:`class_log_probs` has a reference classifier for this data."""
        return False

    def class_log_probs(self, x: Tensor) -> Tensor | None:
        """log p(y | x) (N, K) of samples x under this data's reference classifier, for the class accuracy of
        conditional samples (None where the data has none): the exact Bayes classifier of an analytic mixture, the
        shipped digits classifier for digits. Subclasses with one override it."""
        return None

    def check_labels(self) -> None:
        """Refuse ``labels: true`` on data without classes, in one line (called by subclasses' ``__init__``)."""
        if self.labels and not self.num_classes:
            raise ValueError(f"{self.label} has no class labels: drop data.init_args.labels (classes exist for"
                             " digits, MNIST, Fashion-MNIST, CIFAR-10, image folders with a sub-folder per class,"
                             " GaussianMixture components and the 8 Gaussians' modes)")

    @property
    def is_image(self) -> bool:
        """Whether samples are images (C, H, W)."""
        return len(self.sample_shape) == 3

    @property
    def data_range(self) -> tuple[float, float]:
        """(lo, hi) bounds of the data: (-1, 1) for images, unbounded (-inf, inf) otherwise."""
        return (-1.0, 1.0) if self.is_image else (-math.inf, math.inf)

    def _generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def _loader(self, dataset: Dataset, shuffle: bool, labels: Tensor | None = None) -> DataLoader:
        """Shuffled loaders are :class:`ResumableLoader` s with their own generator, seeded from the global RNG
        (``seed_everything``) when the loader is made, so checkpoints carry the data order. With ``labels`` (when
        the module's ``labels`` is on) items are (x, y)."""
        if self.labels:
            if labels is None:
                raise RuntimeError(f"{type(self).__name__}.setup set no labels for a split")
            dataset = Labelled(dataset, labels)
        return self.batches_of(dataset, shuffle)

    def batches_of(self, dataset: Dataset, shuffle: bool, collate_fn=None) -> DataLoader:
        """The loader of ``dataset`` (items collated by ``collate_fn``, default: torch's), resumable when shuffled."""
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item())) if shuffle else None
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            worker_init_fn=ignore_stop_signals if self.num_workers > 0 else None,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # page-locked host batches: asynchronous copies to the GPU
        )

    def _ensure_setup(self) -> None:
        if self.train_dataset is None:
            self.setup("fit")

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches (B, *sample_shape) of the training split ((x, y) with ``labels``)."""
        self._ensure_setup()
        return self._loader(self.train_dataset, shuffle=True, labels=self.train_labels)

    def val_dataloader(self) -> DataLoader:
        """Batches (B, *sample_shape) of the held-out split ((x, y) with ``labels``)."""
        self._ensure_setup()
        return self._loader(self.val_dataset, shuffle=False, labels=self.val_labels)

    def test_dataloader(self) -> DataLoader:
        """The held-out split again: the built-in datasets keep one held-out split for validation and test."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Generation batches of seed indices 0 … N−1 (N = size of the held-out split, ``batch_size`` per batch, seed
        set ``seed``): ``trainer.predict`` generates one sample per index, sharded over DDP ranks without duplicates
        (see :mod:`lit_score.generation`)."""
        self._ensure_setup()
        return seed_loader(len(self.val_dataset), self.batch_size, self.seed)

    @property
    def has_exact_sampler(self) -> bool:
        """Whether :meth:`reference_samples` draws fresh samples from the data distribution itself (toy data)."""
        return False

    @property
    def has_density(self) -> bool:
        """Whether :meth:`log_prob` gives the exact data log-density (analytic mixtures)."""
        return False

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data distribution at x (n, ...) → (n,), where ``has_density``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form density")

    @property
    def default_feature_extractor(self) -> str:
        """The torch-fidelity feature extractor image metrics use by default (Inception, as published numbers)."""
        return "inception-v3-compat"

    @property
    def label(self) -> str:
        """A short name of the data for reports and cache keys (the class name; subclasses add what varies)."""
        return type(self).__name__

    def split_dataset(self, split: str) -> Dataset:
        """``train`` (the training data without augmentation) or ``test`` (the held-out split), item by item."""
        self._ensure_setup()
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: use train or test")
        return self.reference_dataset if split == "train" else self.val_dataset

    def split_tensor(self, split: str) -> Tensor:
        """All of ``split`` as one float tensor (for image metrics convert item by item instead:
        :func:`lit_score.metrics.fidelity.dataset_to_uint8`)."""
        dataset = self.split_dataset(split)
        return torch.stack([dataset[i] for i in range(len(dataset))])

    def reference_draw(self, n: int, generator: torch.Generator | None = None, split: str = "train") -> Tensor:
        """``n`` reference samples: fresh draws where ``has_exact_sampler``, else drawn from ``split`` (without
        replacement while n fits, with replacement beyond)."""
        if self.has_exact_sampler or split == "train":
            return self.reference_samples(n, generator)
        data = self.split_tensor(split)
        return data[draw_indices(data.shape[0], n, generator)]

    def reference_samples(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` real training samples (n, *sample_shape) without augmentation, drawn with ``generator``.

        Drawn without replacement when ``n`` does not exceed the training set, with replacement otherwise.
        """
        self._ensure_setup()
        index = draw_indices(len(self.reference_dataset), n, generator)
        return torch.stack([self.reference_dataset[i] for i in index.tolist()])


def lit_datamodule(trainer) -> GenerativeDataModule | None:
    """The trainer's data module when it is a lit-score one (it declares ``reference_samples``, ``data_range``,
    ``labels``, ``is_image``, …); None for bare loaders or another library's ``LightningDataModule``, which declare
    none of them (callers then fall back or refuse in one line, as without a data module)."""
    datamodule = trainer.datamodule if trainer is not None else None
    return datamodule if isinstance(datamodule, GenerativeDataModule) else None

