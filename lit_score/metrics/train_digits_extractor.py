"""Train the digits feature extractor's classifier: ``python -m lit_score.metrics.train_digits_extractor``.

Deterministic (fixed seeds, ``torch.use_deterministic_algorithms(True)``, one intra-op thread, no loader
workers, one ``torch.Generator`` for shuffling and shifts) training of
:class:`~lit_score.metrics.digits_extractor.DigitsClassifier` on the TRAIN split of
``Digits(image_size=16, val_fraction=0.1, seed=0)``; its held-out split is the test split. Images go through the
evaluation path: float [-1, 1] -> uint8 exactly as a generated sample would be, replicated to RGB, then
:func:`~lit_score.metrics.digits_extractor.preprocess`.

Options: ``--output PATH`` (default ``./digits_classifier.pt``; pass the shipped file's path to replace it),
``--epochs N``, ``--seed S``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lit_score.data import Digits
from lit_score.data.digits import load_digit_images
from lit_score.metrics.digits_extractor import (
    IMAGE_SIZE,
    DigitsClassifier,
    default_weights_path,
    preprocess,
    weights_sha256,
)
from lit_score.metrics.fidelity import to_uint8  # as a sample is quantised for evaluation

EPOCHS = 8
SEED = 0
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # pixels, both axes


def _labels(images: Tensor) -> Tensor:
    """Class labels of digits images (N, 1, 16, 16), found by exact match in the full labelled set.

    The datamodule serves images only; every one of the 1,797 digits images is distinct, so the match is unique.
    """
    from sklearn.datasets import load_digits

    index = {x.numpy().tobytes(): int(y) for x, y in zip(load_digit_images(IMAGE_SIZE), load_digits().target)}
    return torch.tensor([index[x.numpy().tobytes()] for x in images])


def load_split(split: str) -> tuple[Tensor, Tensor]:
    """(network inputs (N, 1, 16, 16) via the uint8 evaluation path, labels (N,)) of "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f'split must be "train" or "test", got {split!r}')
    datamodule = Digits(image_size=IMAGE_SIZE, val_fraction=0.1, seed=0)
    datamodule.setup("fit")
    images = (datamodule.train_dataset if split == "train" else datamodule.val_dataset).data
    return preprocess(to_uint8(images)), _labels(images)


def random_shift(x: Tensor, generator: torch.Generator, max_shift: int = MAX_SHIFT) -> Tensor:
    """Shift each image (B, 1, H, W) by its own random (dy, dx) in [-max_shift, max_shift]², padding with -1."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # background is -1
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator)
    rows = rearrange(dy + torch.arange(h), "b h -> b h 1")
    cols = rearrange(dx + torch.arange(w), "b w -> b 1 w")
    shifted = padded[rearrange(torch.arange(b), "b -> b 1 1"), 0, rows, cols]  # (B, H, W)
    return rearrange(shifted, "b h w -> b 1 h w")


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Deterministic kernels, one thread and a seeded global RNG inside; previous modes and RNG state restored."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)  # a tiny model is fastest on one thread, and the result then ignores the core count
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@torch.no_grad()
def evaluate_accuracy(model: DigitsClassifier, split: str = "test") -> float:
    """Fraction of the "train" or "test" split that ``model`` classifies correctly (in eval mode; mode restored)."""
    x, y = load_split(split)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    accuracy = (model(x.to(device)).argmax(dim=1).cpu() == y).float().mean().item()
    model.train(was_training)
    return accuracy


def fit(model: nn.Module, x: Tensor, y: Tensor, batch_loss, epochs: int, generator: torch.Generator) -> nn.Module:
    """The training loop of the digits feature networks: Adam (``LR``, ``WEIGHT_DECAY``) with a cosine learning
    rate over ``epochs`` of shuffled batches of ``BATCH_SIZE``, each randomly shifted; ``batch_loss(model, x, y)``
    gives the loss. Returns the model in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
            loss = batch_loss(model, random_shift(x[index], generator), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def train(epochs: int = EPOCHS, seed: int = SEED) -> tuple[DigitsClassifier, float]:
    """Train a :class:`DigitsClassifier` with Adam and a cosine learning rate; return it (eval mode), test accuracy."""
    x, y = load_split("train")
    with _deterministic(seed):
        model = DigitsClassifier()
        generator = torch.Generator().manual_seed(seed)
        fit(model, x, y, lambda m, xb, yb: F.cross_entropy(m(xb), yb), epochs, generator)
        return model, evaluate_accuracy(model, "test")


def save_state_dict(model: DigitsClassifier, path: str | Path) -> None:
    """Save ``model.state_dict()`` (weights_only-loadable); the bytes do not depend on ``path``'s name."""
    buffer = io.BytesIO()  # torch.save into a file names the archive's records after it; a buffer does not
    torch.save(model.state_dict(), buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")  # written whole, then renamed: a kill never leaves half a file
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    """Train, print train/test accuracy, wall time and sha256, and save the state_dict to ``--output``."""

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("digits_classifier.pt"),
                        help="where to save the state_dict (default ./digits_classifier.pt; the shipped file is "
                             f"{default_weights_path()}: pass it to replace it)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model, test_accuracy = train(epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    save_state_dict(model, args.output)
    print(f"train accuracy {evaluate_accuracy(model, 'train'):.4f}, test accuracy {test_accuracy:.4f}")
    print(f"trained in {seconds:.1f} s; saved {args.output} ({args.output.stat().st_size} bytes)")
    print(f"sha256 {weights_sha256(args.output)}")


if __name__ == "__main__":
    main()
