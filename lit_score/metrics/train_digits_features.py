"""Train a digits feature network: ``python -m lit_score.metrics.train_digits_features [--candidate NAME]``.

The default candidate, ``corrupt_class``, makes the shipped ``digits-v2`` weights
(``lit_score/metrics/weights/digits_v2.pt``): the v1 classifier's architecture with an 11th class, "corrupted",
trained on the TRAIN split of ``Digits(image_size=16, val_fraction=0.1, seed=0)`` (1,617 images, ±1 pixel shifts)
where half of every batch is replaced by copies under a random *training* corruption (:data:`TRAIN_CORRUPTIONS`:
Gaussian noise, salt-and-pepper, blur, uniform-noise images; levels drawn per chunk). Swirl and elastic warps are
never shown, so the disturbance benchmark also measures how the features generalise to unseen damage.
The other candidates of :mod:`lit_score.metrics.digits_candidates` train with the same data, optimiser and seed
handling (the benchmark trains them in-process). Deterministic as ``train_digits_extractor`` (one thread,
deterministic kernels, one generator).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_score.metrics import disturbances as D
from lit_score.metrics.digits_candidates import CANDIDATES, build
from lit_score.metrics.digits_extractor import NUM_CLASSES, weights_sha256
from lit_score.metrics.train_digits_extractor import (
    _deterministic,
    fit,
    load_split,
    save_state_dict,
)

EPOCHS = 12
SEED = 0
CANDIDATE = "corrupt_class"
CORRUPTED = NUM_CLASSES  # label of the extra class
#: training corruptions and the range their level is drawn from (uniformly, per chunk of a batch)
TRAIN_CORRUPTIONS = {
    "gaussian_noise": (D.gaussian_noise, (0.08, 0.6)),
    "salt_and_pepper": (D.salt_and_pepper, (0.02, 0.3)),
    "blur": (D.blur, (0.8, 2.0)),
    "pure_noise": (D.pure_noise, (1.0, 1.0)),
}
DENOISER_SIGMA = 0.5  # the denoiser candidate sees x + sigma * eps, sigma ~ U(0, DENOISER_SIGMA)


def corrupt(x: Tensor, generator: torch.Generator) -> Tensor:
    """x (B, 1, H, W) split into one chunk per training corruption, each at a random level of its range."""
    chunks = []
    for chunk, (fn, (lo, hi)) in zip(x.chunk(len(TRAIN_CORRUPTIONS)), TRAIN_CORRUPTIONS.values()):
        level = lo + (hi - lo) * torch.rand((), generator=generator).item()
        chunks.append(fn(chunk, level, generator))
    return torch.cat(chunks)


def _loss(candidate: str, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    if candidate in ("autoencoder", "denoiser"):
        noisy = x
        if candidate == "denoiser":
            sigma = DENOISER_SIGMA * torch.rand(len(x), 1, 1, 1, generator=generator)
            noisy = x + sigma * torch.randn(x.shape, generator=generator)
        return F.mse_loss(model(noisy), x)
    if candidate.startswith("corrupt_class"):
        half = torch.randperm(len(x), generator=generator)[: len(x) // 2]
        x, y = x.clone(), y.clone()
        x[half], y[half] = corrupt(x[half], generator), CORRUPTED
    return F.cross_entropy(model(x), y)


def train(candidate: str = CANDIDATE, epochs: int = EPOCHS, seed: int = SEED) -> nn.Module:
    """Train a candidate's network with Adam and a cosine learning rate; return it in eval mode."""
    x, y = load_split("train")
    with _deterministic(seed):
        model = build(candidate)
        generator = torch.Generator().manual_seed(seed)
        return fit(model, x, y, lambda m, xb, yb: _loss(candidate, m, xb, yb, generator), epochs, generator)


@torch.no_grad()
def corrupt_class_accuracy(model: nn.Module, split: str = "test", seed: int = 1) -> tuple[float, float]:
    """(digit accuracy on clean images, share of corrupted copies called "corrupted") of an 11-class network."""
    x, y = load_split(split)
    generator = torch.Generator().manual_seed(seed)
    clean = (model(x).argmax(1) == y).float().mean().item()
    flagged = (model(corrupt(x, generator)).argmax(1) == CORRUPTED).float().mean().item()
    return clean, flagged


def main(argv: list[str] | None = None) -> None:
    """Train, print accuracies (11-class candidates), wall time and sha256, and save the state_dict."""

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", choices=CANDIDATES, default=CANDIDATE)
    parser.add_argument("--output", type=Path, default=Path("digits_v2.pt"),
                        help="where to save the state_dict (shipped: lit_score/metrics/weights/digits_v2.pt)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = train(args.candidate, args.epochs, args.seed)
    seconds = time.perf_counter() - start
    save_state_dict(model, args.output)
    if args.candidate.startswith("corrupt_class"):
        clean, flagged = corrupt_class_accuracy(model)
        print(f"test digit accuracy {clean:.4f}, corrupted test copies flagged {flagged:.4f}")
    print(f"trained {args.candidate} in {seconds:.1f} s; saved {args.output} ({args.output.stat().st_size} bytes)")
    print(f"sha256 {weights_sha256(args.output)}")


if __name__ == "__main__":
    main()
