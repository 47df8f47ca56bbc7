"""What an evaluation leaves behind: ``metrics.json`` and ``samples.png``, a guidance curve's figure, a logger's
numbers and the printed summary. Rendering only: the numbers are an
:class:`~lit_score.evaluation.evaluate.EvaluationResult`'s.

===========================  =======================================================================================
name                         what it writes
===========================  =======================================================================================
:func:`write_outputs`        ``metrics.json`` and a picture of the first seed set's samples (framed: off-manifold)
:func:`plot_curve`           each headline metric against the guidance scale (``guidance_curve.png``)
:func:`log_result`           the headline numbers as ``eval/<name>`` and the protocol as hyper-parameters
:func:`print_summary`        one line per metric (mean ± s.e., floors), the protocol's sizes and wall times
===========================  =======================================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from lit_score.atomic import jsonable, save_figure, write_json
from lit_score.data import GenerativeDataModule
from lit_score.evaluation.evaluate import EvaluationResult
from lit_score.visualize import save_picture


def write_outputs(result: EvaluationResult, output: Path, datamodule: GenerativeDataModule, title: str,
                  labels: torch.Tensor | None = None) -> Path:
    """``metrics.json`` and a picture of the first seed set's samples (grid or scatter beside the data; a row per
    class, or coloured by class, with the samples' class ``labels``)."""
    if not result.samples:  # bits/dim only: nothing was generated, so there is no picture
        return write_json(output / "metrics.json", result.to_dict())
    x = result.samples[0]
    reference = None if datamodule.is_image else datamodule.reference_draw(min(len(x), 2000),
                                                                           torch.Generator().manual_seed(0))
    nfe = result.protocol.get("nfe")
    shown = min(len(x), 2000 if not datamodule.is_image else (256 if labels is not None else 64))
    flagged = torch.zeros(shown, dtype=torch.bool)  # framed red: off the data manifold by k-NN realism
    flagged[[i for i in result.per_seed[0].get("realism_flagged_index", []) if i < shown]] = True
    save_picture(x[:shown], output / "samples.png", datamodule.data_range, reference,
                 f"{title} · NFE {nfe:g}" if nfe is not None else title,
                 None if labels is None else labels[:shown].cpu(), marked=flagged)
    return write_json(output / "metrics.json", result.to_dict())


def plot_curve(rows: list[dict[str, Any]], kind: str, path: Path) -> Path:
    """Each numeric headline metric of the rows against the swept scale ``kind``, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in rows[0].items()
             if k not in (kind, "nfe") and not k.endswith("_floor") and isinstance(v, (int, float))]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    scales = [r[kind] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(scales, [r[name] for r in rows], marker="o")
        ax.set_xlabel(kind.replace("_", " "))
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a/b": 1} (for loggers' hyper-parameter tables)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = json.dumps(jsonable(value)) if isinstance(value, (list, tuple)) else jsonable(value)
    return out


def log_result(logger: Logger, result: EvaluationResult, step: int = 0) -> None:
    """The headline numbers as ``eval/<name>`` and the protocol as hyper-parameters."""
    metrics = {f"eval/{k}": v for k, v in result.headline().items() if isinstance(v, (int, float)) and v == v}
    logger.log_metrics(metrics, step=step)
    logger.log_hyperparams(flatten({"eval_protocol": result.protocol}))
    logger.finalize("success")


def _metric_line(name: str, summary: dict[str, Any]) -> str:
    """``  fid   12.3 ± 0.4 (s.e., halves)  (floor 1.2, ratio 10.3)``."""
    mean, std = summary.get("mean"), summary.get("std")
    text = "n/a" if mean is None or mean != mean else f"{mean:.6g}"
    if summary.get("sem") is not None and summary["sem"] == summary["sem"]:
        text += f" ± {summary['sem']:.2g} (s.e., {summary.get('sem_from')})"
    elif std is not None:
        text += f" ± {std:.2g}"
    if "floor" in summary and "ratio" in summary:
        text += f"  (floor {summary['floor']:.4g}, ratio {summary['ratio']:.3g})"
    elif "floor" in summary:
        floor_sem = summary.get("floor_sem")
        text += f"  (data floor at this n {summary['floor']:.4g}" + (
            f" ± {floor_sem:.2g})" if floor_sem is not None and floor_sem == floor_sem else ")")
    return f"  {name:<20} {text}"


def print_summary(result: EvaluationResult, output: Path) -> None:
    """What was evaluated (samples, seed sets, NFE, weights, wall times), a line per metric, and where it went."""
    rows = [_metric_line(name, summary) for name, summary in result.metrics.items()]
    p = result.protocol
    nfe = "n/a" if p.get("nfe") is None else f"{p['nfe']:g}"
    if p["num_samples"]:
        print(f"lit-score evaluate: {p['num_samples']} samples x {len(p['seeds'])} seed set(s), NFE {nfe}, "
              f"weights {p.get('weights') or 'n/a'}; generation {p['wall_time']['generation_s']:.1f} s, features "
              f"{p['wall_time']['features_s']:.1f} s")
    else:
        print(f"lit-score evaluate: no samples generated (bits/dim only), weights {p.get('weights') or 'n/a'};"
              f" likelihood {p['wall_time']['likelihood_s']:.1f} s")
    print("\n".join(rows))
    print(f"wrote {output / 'metrics.json'}")
