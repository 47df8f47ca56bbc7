"""The figures of a compare report: samples side by side, quality against NFE, training loss curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_score.atomic import save_figure
from lit_score.evaluation.report_table import fmt
from lit_score.visualize import image_grid


def read_loss_curve(run_dir: str | Path, key: str = "train/loss") -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` from a run's CSVLogger ``metrics.csv`` or its TensorBoard events."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        steps, values = [], []
        with open(metrics, newline="") as handle:
            for record in csv.DictReader(handle):
                if record.get(key) not in (None, ""):
                    steps.append(int(float(record["step"])))
                    values.append(float(record[key]))
        return steps, values
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        if key in accumulator.Tags().get("scalars", []):
            scalars = accumulator.Scalars(key)
            return [s.step for s in scalars], [s.value for s in scalars]
    return [], []


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def samples_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per run with its own sampler: a grid of images, or the 2-D scatter over the data."""
    shown = [r for r in rows if r.get("figure_samples") and Path(r["figure_samples"]).is_file()]
    if not shown:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.9), squeeze=False)
    for ax, row in zip(axes[0], shown):
        record = torch.load(row["figure_samples"], weights_only=True)
        x = record["samples"]
        if x.ndim == 4:
            flagged = record.get("flagged")
            ax.imshow(image_grid(x, tuple(record["data_range"]), marked=flagged).numpy().squeeze(), cmap="gray")
            if flagged is not None and bool(flagged.any()):
                ax.set_xlabel(f"red: {int(flagged.sum())} of {len(x)} off the data manifold (k-NN realism)",
                              fontsize=8)
        else:
            pts = x.reshape(len(x), -1).numpy()
            if record.get("reference") is not None:
                ref = record["reference"].reshape(len(record["reference"]), -1).numpy()
                ax.scatter(ref[:, 0], ref[:, 1], s=2, c="lightgrey", label="data")
            ax.scatter(pts[:, 0], pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts)), s=2, alpha=0.6)
            ax.set_aspect("equal")
            finite = pts[np.isfinite(pts).all(axis=1)]
            if len(finite):
                lo, hi = np.percentile(finite, 0.5, axis=0), np.percentile(finite, 99.5, axis=0)
                pad = 0.15 * (hi - lo) + 1e-3
                ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
                ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{row['run']} ({row.get('family')})\nNFE {fmt(row.get('nfe'))}", fontsize=9)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _quality(row: dict[str, Any]) -> tuple[str, float] | None:
    """The headline quality number of a row: FID on images, energy distance / floor otherwise."""
    metrics = row.get("metrics") or {}
    if "fid" in metrics:
        return "FID", metrics["fid"]["mean"]
    if "energy_distance" in metrics:
        return "energy distance / data floor", metrics["energy_distance"].get("ratio")
    return None


def nfe_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Quality vs NFE, one line per (run, sampler), log-log."""
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    label = None
    for row in rows:
        quality = _quality(row) if row.get("status") == "ok" else None
        if quality is None or row.get("nfe") is None or quality[1] is None or not math.isfinite(quality[1]):
            continue
        label = quality[0]
        sampler = "own sampler" if row["sampler_label"] == "default" else row["sampler_label"].rsplit("-", 1)[0]
        curves.setdefault((row["run"], sampler), []).append((row["nfe"], quality[1]))
    if not curves:
        return None
    plt = _plt()
    runs = list(dict.fromkeys(run for run, _ in curves))  # the compare's order: one colour per run
    samplers = list(dict.fromkeys(sampler for _, sampler in curves))  # one marker and dash per sampler
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for (run, sampler), points in curves.items():
        points.sort()
        k = samplers.index(sampler)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="osD^v<>ph*"[k % 10], markersize=4,
                linestyle=("-", "--", ":", "-.")[k % 4] if len(points) > 1 else "none",
                color=colours(runs.index(run) % colours.N), label=f"{run} · {sampler}")
    if label and "floor" in label:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="data-vs-data floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(label or "quality")
    ax.legend(fontsize=7, ncol=1 + (len(curves) > 16), loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def loss_figure(trained: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against step, one line per run (each family's own objective: compare shapes, not levels)."""
    curves = {t["name"]: read_loss_curve(t["run_dir"]) for t in trained}
    curves = {k: v for k, v in curves.items() if v[0]}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, label=name, linewidth=1)
    positive = all(v > 0 for _, values in curves.values() for v in values)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss (each family's own objective)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
