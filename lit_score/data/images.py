"""Image datasets read from a local ``root``: torchvision's MNIST, Fashion-MNIST, CIFAR-10, CelebA, or any folder.

Nothing downloads unless ``download: true``. Images become (C, H, W) float tensors in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from lit_score.checks import check_number
from lit_score.data.base import GenerativeDataModule, num_held_out

ImageDatasetName = Literal["mnist", "fashion_mnist", "cifar10", "celeba", "folder"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CELEBA_CROP = 140  # the centre crop of the 178 x 218 aligned faces used by NCSN / DDIM before resizing


@dataclass(frozen=True)
class _Known:
    cls: str  # torchvision.datasets class
    shape: tuple[int, int, int]  # native (C, H, W) after the standard crop
    title: str
    files: str  # what must be under root
    classes: int  # class labels of its items (0: none used here)


_KNOWN: dict[str, _Known] = {
    "mnist": _Known("MNIST", (1, 28, 28), "MNIST", "MNIST/raw", 10),
    "fashion_mnist": _Known("FashionMNIST", (1, 28, 28), "Fashion-MNIST", "FashionMNIST/raw", 10),
    "cifar10": _Known("CIFAR10", (3, 32, 32), "CIFAR-10", "cifar-10-batches-py", 10),
    "celeba": _Known("CelebA", (3, 64, 64), "CelebA", "celeba/ (img_align_celeba/ and the list_*.txt files)", 0),
}


def folder_classes(root: str | Path, files: list[Path]) -> tuple[list[str], Tensor]:
    """(class names, label per file): the first sub-folder under ``root`` of each file, names sorted (as
    torchvision's ``ImageFolder``); one clear line when a file lies directly in ``root``."""
    root = Path(root)
    parts = [f.relative_to(root).parts for f in files]
    loose = [f for f, p in zip(files, parts) if len(p) < 2]
    if loose:
        raise ValueError(f"labels from an image folder need one sub-folder per class under {root}, but"
                         f" {loose[0].name} lies directly in it: move the images into class folders or drop labels")
    names = sorted({p[0] for p in parts})
    index = {name: k for k, name in enumerate(names)}
    return names, torch.tensor([index[p[0]] for p in parts], dtype=torch.long)


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursively), sorted; a clear error if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist: pass --data.root pointing at a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        kinds = "/".join(IMAGE_EXTENSIONS)
        raise FileNotFoundError(f"no images ({kinds}) found under {root}: add some or fix --data.root")
    return files


class ImageFiles(Dataset):
    """PIL images read from a list of files."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as image:
            image.load()
            return image.copy()


class ConvertMode:
    """Convert a PIL image to a mode ("L" for 1 channel, "RGB" for 3)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)


class Transformed(Dataset):
    """Apply a transform to each item of a dataset, dropping labels: yields plain tensors."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        return self.transform(item[0] if isinstance(item, tuple) else item)


class ImageData(GenerativeDataModule):
    """Images in [-1, 1] from a torchvision dataset under ``root`` or from any folder of image files.

    ``val_size`` (a count if int, a fraction if float): for the torchvision datasets, how much of the official
    test split (CelebA: valid split) to validate on, as a fixed random subset; for a folder, how many images
    to hold out of it. ``image_size`` / ``channels`` default to the dataset's own (for a folder: the shorter
    side and channel count of its first image); other sizes are resized, then centre-cropped to a square.
    ``labels: true`` yields (x, y) batches: the dataset's classes (MNIST, Fashion-MNIST, CIFAR-10), or for a folder
    the sub-folder each image lies in (one per class, names sorted: :func:`folder_classes`).
    """

    def __init__(
        self,
        root: str,
        dataset: ImageDatasetName = "folder",
        image_size: int | None = None,
        channels: int | None = None,
        download: bool = False,
        random_flip: bool | None = None,
        batch_size: int = 128,
        num_workers: int = 4,
        val_size: int | float = 0.05,
        seed: int = 0,
        labels: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_size=val_size, seed=seed, labels=labels)
        if dataset != "folder" and dataset not in _KNOWN:
            raise ValueError(f"unknown dataset {dataset!r}; choose folder or one of {sorted(_KNOWN)}")
        check_number("image_size", image_size, ge=1, integer=True, allow_none=True)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.save_hyperparameters()
        self.root, self.dataset, self.download = root, dataset, download
        self.random_flip = dataset not in ("mnist", "fashion_mnist") if random_flip is None else random_flip
        if dataset == "folder":
            self.files = find_images(root)
            with Image.open(self.files[0]) as first:
                native = (1 if first.mode in ("1", "L", "LA", "I", "I;16", "F") else 3, min(first.size))
        else:
            native = (_KNOWN[dataset].shape[0], _KNOWN[dataset].shape[1])
        self.channels = channels or native[0]
        self.image_size = image_size or native[1]
        self.class_names: list[str] = []
        self.file_labels: Tensor | None = None
        if labels and dataset == "folder":
            self.class_names, self.file_labels = folder_classes(root, self.files)
        self.check_labels()

    @property
    def num_classes(self) -> int:
        """10 for MNIST / Fashion-MNIST / CIFAR-10; a labelled folder's number of class folders; else 0."""
        if self.dataset == "folder":
            return len(self.class_names)
        return _KNOWN[self.dataset].classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(channels, image_size, image_size)."""
        return (self.channels, self.image_size, self.image_size)

    def _transform(self, train: bool) -> transforms.Compose:
        ops: list[Any] = [ConvertMode("L" if self.channels == 1 else "RGB")]
        if self.dataset == "celeba":
            ops.append(transforms.CenterCrop(CELEBA_CROP))
        if self.dataset in ("folder", "celeba") or self.image_size != _KNOWN[self.dataset].shape[-1]:
            ops += [transforms.Resize(self.image_size, antialias=True), transforms.CenterCrop(self.image_size)]
        if train and self.random_flip:
            ops.append(transforms.RandomHorizontalFlip())
        ops += [transforms.ToTensor(), transforms.Normalize([0.5] * self.channels, [0.5] * self.channels)]
        return transforms.Compose(ops)

    def _torchvision(self, train: bool, download: bool) -> Dataset:
        known = _KNOWN[self.dataset]
        cls = getattr(datasets, known.cls)
        if self.dataset == "celeba":
            kwargs: dict[str, Any] = {"split": "train" if train else "valid", "target_type": []}
        else:
            kwargs = {"train": train}
        try:
            return cls(self.root, download=download, **kwargs)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"no {known.title} found under {self.root}: put {known.files} there or pass --data.download true"
            ) from error

    def prepare_data(self) -> None:
        """Download the torchvision dataset when ``download`` is set (called on one process only)."""
        if self.download and self.dataset != "folder":
            self._torchvision(train=True, download=True)
            self._torchvision(train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Open the training and validation splits (files are read lazily, one image at a time)."""
        if self.train_dataset is not None:
            return
        generator = self._generator()
        if self.dataset == "folder":
            images = ImageFiles(self.files)
            order = torch.randperm(len(images), generator=generator).tolist()
            n_val = num_held_out(self.val_size, len(images))
            train, val = Subset(images, order[n_val:]), Subset(images, order[:n_val])
            if self.labels:
                self.train_labels, self.val_labels = self.file_labels[order[n_val:]], self.file_labels[order[:n_val]]
        else:
            train, test = self._torchvision(train=True, download=False), self._torchvision(train=False, download=False)
            n_val = self.val_size if isinstance(self.val_size, int) else round(self.val_size * len(test))
            val = Subset(test, torch.randperm(len(test), generator=generator)[: min(n_val, len(test))].tolist())
            if self.labels:  # torchvision's MNIST / CIFAR-10 keep every item's class in .targets
                self.train_labels = torch.as_tensor(train.targets).long()
                self.val_labels = torch.as_tensor(test.targets).long()[torch.tensor(val.indices, dtype=torch.long)]
        self.train_dataset = Transformed(train, self._transform(train=True))
        self.val_dataset = Transformed(val, self._transform(train=False))
        self.reference_dataset = Transformed(train, self._transform(train=False))

    @property
    def label(self) -> str:
        name = self.dataset if self.dataset != "folder" else f"folder-{Path(self.root).name}"
        return f"{name}-{self.channels}x{self.image_size}px-seed{self.seed}-val{self.val_size:g}"
