"""The compare report: ``report.md``, a self-contained ``report.html`` (figures embedded), ``metrics.csv``,
``metrics.json`` (rows with their protocols) and ``figures/*.png`` — samples side by side, quality vs NFE, loss curves.

Rendering only: every number comes from the evaluation rows :mod:`lit_score.evaluation.compare` hands over.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_score.atomic import atomic_file, jsonable, save_figure, write_json, write_text
from lit_score.metrics.image_quality import is_tie

#: metric columns of the table, in order, with their headings; only those some row has are shown
COLUMNS = [
    ("fid", "FID ↓"), ("kid", "KID ↓"), ("isc", "IS ↑"), ("precision", "precision ↑"), ("recall", "recall ↑"),
    ("realism_flagged", "off-manifold share ↓"), ("broken_share", "broken (est.) ↓"),
    ("energy_distance", "energy dist. ↓"), ("mmd", "MMD ↓"), ("sliced_wasserstein", "sliced W2 ↓"),
    ("data_nll", "data NLL of samples ↓"), ("bpd", "bits/dim ↓"),
]
_RATIO = ("energy_distance", "mmd", "sliced_wasserstein")
_HIGHER_IS_BETTER = ("isc", "precision", "recall")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """One CSV / table row: identity, cost and every metric mean (± std), ratio and floor."""
    out = {"run": row["run"], "family": row.get("family"), "sampler": row["sampler_label"],
           "sampler_class": ((row.get("protocol") or {}).get("sampler") or {}).get("class_path"),
           "nfe": row.get("nfe"), "status": row.get("status"), "parameters": row.get("parameters"),
           "train_seconds": row.get("train_seconds"),
           "ms_per_sample": None if row.get("sample_seconds_per_sample") is None
           else 1000 * row["sample_seconds_per_sample"], "error": row.get("error")}
    for name, summary in (row.get("metrics") or {}).items():
        out[name] = summary.get("mean")
        if summary.get("std") is not None:
            out[f"{name}_std"] = summary["std"]
        if summary.get("sem") is not None and math.isfinite(summary["sem"]):
            out[f"{name}_sem"] = summary["sem"]
        for extra in ("floor", "ratio"):
            if extra in summary:
                out[f"{name}_{extra}"] = summary[extra]
        if name.startswith("bpd"):
            out[f"{name}_estimator"] = summary.get("estimator")
    return out


def best_values(flats: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """(value, standard error) of the best model row (not the data row) of every column that has standard errors."""
    out: dict[str, tuple[float, float | None]] = {}
    models = [f for f in flats if f.get("status") == "ok" and f.get("family") != "data"]
    for key, _ in COLUMNS:
        rows = [f for f in models if f.get(key) is not None and math.isfinite(f[key]) and f"{key}_sem" in f]
        if len(rows) > 1:
            best = (max if key in _HIGHER_IS_BETTER else min)(rows, key=lambda f: f[key])
            out[key] = (best[key], best[f"{key}_sem"])
    return out


def _cell(flat: dict[str, Any], key: str, best: dict[str, tuple[float, float | None]] | None = None) -> str:
    if key not in flat:
        return "—"
    text = _fmt(flat[key])
    if f"{key}_sem" in flat:
        text += f" ± {_fmt(flat[f'{key}_sem'], 2)}"
    elif f"{key}_std" in flat:
        text += f" ± {_fmt(flat[f'{key}_std'], 2)}"
    if best and key in best and flat.get("family") != "data" and flat[key] is not None:
        value, sem = best[key]
        if flat[key] == value:
            text += " (best)"
        elif is_tie(flat[key], flat.get(f"{key}_sem"), value, sem):
            text += " (tie)"
    if key in _RATIO and f"{key}_ratio" in flat:
        text += f" ({_fmt(flat[f'{key}_ratio'], 3)}× floor)"
    if key.startswith("bpd") and flat.get(f"{key}_estimator"):
        text += f" [{flat[f'{key}_estimator']}]"
    return text


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headings and cells of the metrics table (pairings skipped as inapplicable are listed under it instead)."""
    flats = [flat_row(r) for r in rows if r.get("status") != "skipped"]
    estimators = sorted({k for f in flats for k in f if k.startswith("bpd_") and not k.endswith(("_std",
                                                                                                "_estimator"))})
    columns = COLUMNS + [(k, f"bits/dim ({k[4:]}) ↓") for k in estimators]
    present = [(k, h) for k, h in columns if any(k in f for f in flats)]
    headings = ["run", "family", "sampler", "NFE", *[h for _, h in present], "params", "train s", "ms / sample"]
    cells = []
    best = best_values(flats)
    for f in flats:
        if f["status"] != "ok":
            cells.append([f["run"], _fmt(f["family"]), f["sampler"], "—", *["—"] * len(present), "—", "—",
                          f"failed: {f['error']}"])
            continue
        params = "—" if f["parameters"] is None else f"{f['parameters'] / 1e6:.3g}M"
        cells.append([f["run"], f["family"], f["sampler"], _fmt(f["nfe"], 4), *[_cell(f, k, best) for k, _ in present],
                      params, _fmt(f["train_seconds"], 3), _fmt(f["ms_per_sample"], 3)])
    return headings, cells


def floors(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The data-vs-data floor of each toy distance (the same for every row of one protocol)."""
    out: dict[str, float] = {}
    for row in rows:
        for name in _RATIO:
            summary = (row.get("metrics") or {}).get(name)
            if summary and "floor" in summary:
                out.setdefault(name, summary["floor"])
    return out


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
    from lit_score.visualize import image_grid

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
        ax.set_title(f"{row['run']} ({row.get('family')})\nNFE {_fmt(row.get('nfe'))}", fontsize=9)
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
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (run, sampler), points in sorted(curves.items()):
        points.sort()
        style = "o" if len(points) == 1 else "o-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=f"{run} · {sampler}", markersize=4)
    if label and "floor" in label:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="data-vs-data floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(label or "quality")
    ax.legend(fontsize=7, ncol=2)
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


def protocol_lines(rows: list[dict[str, Any]], evaluation: dict[str, Any]) -> list[str]:
    """The shared protocol, stated once under the table."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return ["No evaluation succeeded."]
    p = ok[0]["protocol"]
    lines = [f"- {p['num_samples']} samples per seed set, seed sets {p['seeds']}, generation batch "
             f"{p.get('generation_batch_size')}; reference: {p['reference']['split']} split"
             + (" (fresh draws from the data distribution)" if p["reference"].get("fresh_draws") else "")
             + f" of {p['data']['label']}."]
    extractor = p.get("feature_extractor")
    if extractor:
        sha = str(extractor["weights_sha256"])[:16]
        lines.append(f"- Feature extractor {extractor['name']} (weights sha256 {sha}…).")
    lines.append("- Weights evaluated: " + ", ".join(sorted({f"{r['run']}: {r['protocol'].get('weights')}"
                                                             for r in ok})) + ".")
    if any("sem" in (s or {}) for r in ok for s in (r.get("metrics") or {}).values()):
        lines.append("- ± is a standard error: over the seed sets when there are at least 3, else from half-sampling "
                     "each set (the spread of the metric over random halves of the samples). \"(tie)\" marks a value "
                     "within the combined standard error of its column's best (no ranking between them).")
    floor_protocol = p.get("floor")
    if floor_protocol:
        plan = floor_protocol["plans"][0]
        lines.append(f"- The data row is n = {p['num_samples']} real images against the same reference as every model "
                     f"row ({plan['scheme']}: reference of {plan['num_reference']} images). Off-manifold share: "
                     "samples outside every real image's k-NN ball (k-NN realism < 1, Kynkäänniemi et al. 2019); "
                     "broken (est.): (share − data's share) / (1 − data's share).")
    fl = floors(rows)
    if fl:
        lines.append("- Data-vs-data floors at this n: " + ", ".join(f"{k} {v:.4g}" for k, v in fl.items())
                     + " (a model at its floor is indistinguishable from the data at this n).")
    v = p["versions"]
    lines.append(f"- lit-score {v['lit_score']}, torch {v['torch']}, torch-fidelity {v['torch_fidelity']}, "
                 f"lightning {v['lightning']}; evaluation settings {json.dumps(jsonable(evaluation))}.")
    skipped: dict[str, list[str]] = {}
    for r in rows:
        if r.get("status") == "skipped":
            skipped.setdefault(f"{r['run']} ({r['error']})", []).append(r["sampler_label"])
    lines += [f"- Not applicable: {', '.join(labels)} on {what}." for what, labels in skipped.items()]
    notes = sorted({note for r in ok for note in r["protocol"].get("notes", [])})
    lines += [f"- Note: {note}" for note in notes]
    return lines


def markdown_table(headings: list[str], cells: list[list[str]]) -> str:
    """A markdown table; ``|`` inside a cell is escaped."""
    out = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(out)


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(output: Path, trained: list[dict], rows: list[dict], evaluation: dict) -> dict[str, Path]:
    """Every report file; returns their paths."""
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    made = {"samples": samples_figure([r for r in rows if r["sampler_label"] == "default"], figures / "samples.png"),
            "quality_vs_nfe": nfe_figure(rows, figures / "quality_vs_nfe.png"),
            "loss": loss_figure(trained, figures / "loss.png")}
    headings, cells = table(rows)
    families = ", ".join(dict.fromkeys(f"{r['run']} ({r.get('family')})" for r in rows))
    captions = {"samples": "Samples of every run with its own sampler (2-D: over the data in grey).",
                "quality_vs_nfe": "Quality against the number of network evaluations, per run and sampler.",
                "loss": "Training loss (each family's own objective, so compare shapes, not levels)."}
    md = [f"# lit-score compare: {output.name}", "", f"Runs: {families}.", "", markdown_table(headings, cells), "",
          "## Protocol", "", *protocol_lines(rows, evaluation), ""]
    for name, path in made.items():
        if path is not None:
            md += [f"## {name.replace('_', ' ')}", "", f"![{name}](figures/{path.name})", "", captions[name], ""]
    md_path = output / "report.md"
    write_text(md_path, "\n".join(md))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    parts = [f"<h1>lit-score compare: {html.escape(output.name)}</h1>", f"<p>Runs: {html.escape(families)}.</p>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", "<h2>Protocol</h2><ul>",
             *[f"<li>{html.escape(line[2:])}</li>" for line in protocol_lines(rows, evaluation)], "</ul>"]
    for name, path in made.items():
        if path is not None:
            parts += [f"<h2>{name.replace('_', ' ')}</h2>", f'<img src="{_embed(path)}" alt="{name}">',
                      f"<p>{html.escape(captions[name])}</p>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}img{max-width:100%}")
    html_path = output / "report.html"
    write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>lit-score compare</title>"
                         f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")

    flats = [flat_row(r) for r in rows]
    fields = list(dict.fromkeys(k for f in flats for k in f))
    csv_path = output / "metrics.csv"
    with atomic_file(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: jsonable(f.get(k)) for k in fields} for f in flats])
    json_path = write_json(output / "metrics.json", {"runs": trained, "evaluations": rows, "evaluation": evaluation})
    return {"md": md_path, "html": html_path, "csv": csv_path, "json": json_path,
            **{k: v for k, v in made.items() if v is not None}}


def log_report(logger_config: dict[str, Any], output: Path) -> None:
    """The table (and figures) of a written report to a W&B logger (``WANDB_MODE=offline`` works)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.loggers import Logger, WandbLogger

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Logger, "logger")
    logger = parser.instantiate_classes(parser.parse_object({"logger": logger_config})).logger
    if not isinstance(logger, WandbLogger):
        raise ValueError("compare logs its table and figures to a WandbLogger only")
    data = json.loads((output / "metrics.json").read_text())
    headings, cells = table(data["evaluations"])
    logger.log_table(key="compare/metrics", columns=headings, data=cells)
    images = sorted((output / "figures").glob("*.png"))
    if images:
        logger.log_image(key="compare/figures", images=[str(p) for p in images], caption=[p.stem for p in images])
    logger.experiment.finish()
