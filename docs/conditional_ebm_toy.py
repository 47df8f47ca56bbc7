"""Per-class quality of a conditional EBM on the labelled 8 Gaussians (configs/ebm/conditional_toy.yaml), and a
composition of two of its labels; writes docs/figures/ebm_conditional_toy.png.

    python docs/conditional_ebm_toy.py runs/ebm_conditional_toy/version_0/checkpoints/last.ckpt

For every mode k: 1,000 chains with label k (the checkpoint's sampler, from uniform noise and from the replay buffer's
chains of label k), their energy distance to 1,000 fresh draws of mode k, and that
distance over the data-vs-data floor (median of five pairs of 1,000 draws of mode k).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from lit_score.data.toy import eight_gaussians_with_modes
from lit_score.metrics.distances import energy_distance
from lit_score.models import EBM

N = 1000


def mode_samples(k: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of mode k of the (standardised) 8 Gaussians."""
    out = []
    while sum(len(o) for o in out) < n:
        x, mode = eight_gaussians_with_modes(16 * n, generator)
        out.append(x[mode == k])
    return torch.cat(out)[:n]


def ratio(samples: torch.Tensor, k: int) -> float:
    g = torch.Generator().manual_seed(100 + k)
    floor = statistics.median(float(energy_distance(mode_samples(k, N, g), mode_samples(k, N, g))) for _ in range(5))
    distance = statistics.median(float(energy_distance(part, mode_samples(k, N, g))) for part in samples.split(N))
    return distance / floor


def main(checkpoint: str, out: str = "docs/figures/ebm_conditional_toy.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = EBM.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    samples: dict[str, list[torch.Tensor]] = {"noise": [], "buffer": []}
    for start in samples:
        model.set_sample_start(start)
        for k in range(model.num_classes):
            x = model.sample(N, generator=torch.Generator().manual_seed(k), labels=torch.full((N,), k))
            samples[start].append(x)
            print(f"start {start:6s} mode {k}: {ratio(x, k):.2f}x the floor")
    composed = model.compose([0, 1])  # E(x, 0) + E(x, 1): the product of the experts of two neighbouring modes
    conj = model.sample_energy(composed, 2 * N, generator=torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    data, modes = eight_gaussians_with_modes(8000, torch.Generator().manual_seed(1))
    colours = plt.get_cmap("tab10")
    for ax, (title, sets) in zip(axes[:2], samples.items()):
        for k, x in enumerate(sets):
            ax.scatter(*x[:400].T, s=2, color=colours(k), label=f"y = {k}")
        ax.set_title(f"E(x, y) samples, chains from {title}")
    axes[2].scatter(*data.T, s=1, color="0.8", label="data")
    axes[2].scatter(*conj[:1000].T, s=2, color="k", label="E(x, 0) + E(x, 1)")
    axes[2].set_title("composition: E(x, 0) + E(x, 1)")
    for ax in axes:
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
    axes[0].legend(markerscale=4, fontsize=7, loc="lower left")
    axes[2].legend(markerscale=4, fontsize=7, loc="lower left")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"composition mean {conj.mean(0).tolist()}, std {conj.std(0).tolist()}; figure {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
