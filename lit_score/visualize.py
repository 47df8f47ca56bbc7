"""Writing samples as a person looks at them: PNG grids for images, scatter plots for 2-D, and raw .npz."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from lit_score.atomic import save_figure, save_image, savez


def image_grid(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0), nrow: int | None = None,
               marked: Tensor | None = None) -> Tensor:
    """A uint8 (H, W, C) grid of images x (B, C, H, W) scaled from ``data_range``; the images where the (B,) bool
    ``marked`` is True (e.g. flagged off the data manifold by k-NN realism) get a red frame (the grid is then RGB)."""
    from torchvision.utils import make_grid

    lo, hi = data_range
    x = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    if marked is not None and bool(marked.any()):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0)
    if marked is not None and bool(marked.any()):
        h, w = x.shape[-2] + 2, x.shape[-1] + 2  # a cell with its leading padding
        red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
        for i in torch.nonzero(marked.cpu()).flatten().tolist():
            y0, x0 = (i // nrow) * h, (i % nrow) * w
            cell = grid[:, y0:y0 + h + 2, x0:x0 + w + 2]
            inner = cell[:, 2:-2, 2:-2].clone()
            cell[:] = red
            cell[:, 2:-2, 2:-2] = inner
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0)


MIN_GRID_SIDE = 512  # px: small images (8x8 digits, 32x32 CIFAR) are upscaled to a size a person can read


def save_image_grid(x: Tensor, path: Path, data_range: tuple[float, float] = (-1.0, 1.0),
                    min_side: int = MIN_GRID_SIDE, nrow: int | None = None, marked: Tensor | None = None) -> Path:
    """Save images x (B, C, H, W) as one PNG grid, upscaled by an integer factor (nearest neighbour: every pixel
    stays a sharp square) until its longer side is at least ``min_side`` pixels; the .npz keeps the raw tensors."""
    from PIL import Image

    grid = image_grid(x, data_range, nrow, marked).numpy()
    factor = max(1, math.ceil(min_side / max(grid.shape[:2])))
    if factor > 1:
        grid = grid.repeat(factor, axis=0).repeat(factor, axis=1)
    return save_image(Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid), path)


def class_rows(x: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Images x (B, C, H, W) rearranged one row per class (classes ascending, the null label −1 last, samples in
    seed-index order), every row as long as the shortest (at most 16): (images, row length) for :func:`image_grid`."""
    labels = labels.detach().cpu()
    classes = sorted(labels.unique().tolist(), key=lambda k: (k < 0, k))
    rows = [x[(labels == k).nonzero().flatten()] for k in classes]
    width = max(1, min(16, min(len(r) for r in rows)))
    return torch.cat([r[:width] for r in rows]), width


def save_scatter(x: Tensor, path: Path, reference: Tensor | None = None, title: str | None = None,
                 labels: Tensor | None = None) -> Path:
    """Scatter plot of the first two coordinates of x (B, D), beside ``reference`` data when given; coloured by class
    when ``labels`` (B,) are given.

    The view spans the 0.5–99.5 percentiles of samples and data together (so a few far samples do not shrink the
    picture to a dot); each panel's title counts the points outside the view (with the largest |coordinate|) and
    the non-finite ones, so no sample goes unseen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("samples", x)] + ([("data", reference)] if reference is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), squeeze=False)
    points = [p.detach().float().cpu().reshape(p.shape[0], -1).numpy() for _, p in panels]
    both = np.concatenate(points)[:, :2]
    both = both[np.isfinite(both).all(axis=1)]
    lo, hi = (np.percentile(both, 0.5, axis=0), np.percentile(both, 99.5, axis=0)) if len(both) else (-3, 3)
    pad = 0.1 * (np.asarray(hi) - np.asarray(lo)) + 1e-3
    view_lo, view_hi = np.asarray(lo) - pad, np.asarray(hi) + pad
    for ax, (name, _), pts in zip(axes[0], panels, points):
        xy = np.stack([pts[:, 0], pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts))], axis=1)
        if labels is not None and name == "samples":
            colour = labels.detach().cpu().numpy()
            classes = max(int(colour.max()) + 1, 1)
            cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20", classes)
            dots = ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.6, c=colour, cmap=cmap, vmin=-0.5, vmax=classes - 0.5)
            fig.colorbar(dots, ax=ax, label="class", fraction=0.046, pad=0.04)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
        ax.set_xlim(view_lo[0], view_hi[0])
        ax.set_ylim(view_lo[1], view_hi[1])
        ax.set_title(f"{name} (n={len(xy)}){outside_note(xy, view_lo, view_hi)}", fontsize=9)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def outside_note(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> str:
    """", 7 outside the view (max |x| 71.2), 2 non-finite" for the points a scatter's axes leave out."""
    finite = np.isfinite(xy).all(axis=1)
    out = finite & ((xy < lo) | (xy > hi)).any(axis=1)
    note = ""
    if out.any():
        note += f", {int(out.sum())} outside the view (max |x| {np.abs(xy[out]).max():.3g})"
    if (~finite).any():
        note += f", {int((~finite).sum())} non-finite"
    return note


def save_picture(
    x: Tensor,
    path: Path,
    data_range: tuple[float, float] = (-1.0, 1.0),
    reference: Tensor | None = None,
    title: str | None = None,
    labels: Tensor | None = None,
    marked: Tensor | None = None,
) -> Path:
    """One PNG of samples as a person looks at them: a grid of (at most 256) images — one row per class when class
    ``labels`` (B,) are given, images where the (B,) bool ``marked`` is True framed red — else a scatter over the data
    (coloured by class)."""
    path = Path(path)
    if x.ndim == 4:
        if labels is not None:
            if marked is not None:  # the same rearrangement as the images
                marked = class_rows(rearrange(marked.float(), "b -> b 1 1 1"), labels)[0].flatten().bool()
            x, width = class_rows(x, labels)
            return save_image_grid(x[: 16 * width], path, data_range, nrow=width,
                                   marked=None if marked is None else marked[: 16 * width])
        return save_image_grid(x[:256], path, data_range, marked=None if marked is None else marked[:256])
    return save_scatter(x, path, reference, title, labels)


def save_samples(
    x: Tensor,
    stem: Path,
    data_range: tuple[float, float] = (-1.0, 1.0),
    reference: Tensor | None = None,
    title: str | None = None,
    metadata: dict | None = None,
    labels: Tensor | None = None,
) -> dict[str, Path]:
    """Write ``stem.png`` (grid for images — a row per class with ``labels`` —, scatter otherwise) and ``stem.npz``
    (raw samples, their ``labels`` when given, and the metadata), each atomically."""
    stem = Path(stem)
    png = save_picture(x, stem.with_suffix(".png"), data_range, reference, title, labels)
    npz = stem.with_suffix(".npz")
    extras = {k: np.asarray(v) for k, v in (metadata or {}).items()}
    if labels is not None:
        extras["labels"] = labels.detach().cpu().numpy()
    savez(npz, compressed=True, samples=x.detach().float().cpu().numpy(), **extras)
    return {"png": png, "npz": npz}
