"""The metrics table of a compare report: one row per (run, sampler) with every metric's mean ± standard error, its
ratio to the data-vs-data floor, and "(best)" / "(tie)" marks within a column's standard errors; as cells for
markdown, HTML and W&B, and as flat rows for ``metrics.csv``."""

from __future__ import annotations

import math
from typing import Any

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


def fmt(value: Any, digits: int = 4) -> str:
    """A cell's text: ``digits`` significant digits of a float, "—" for a missing or non-finite value."""
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
    text = fmt(flat[key])
    if f"{key}_sem" in flat:
        text += f" ± {fmt(flat[f'{key}_sem'], 2)}"
    elif f"{key}_std" in flat:
        text += f" ± {fmt(flat[f'{key}_std'], 2)}"
    if best and key in best and flat.get("family") != "data" and flat[key] is not None:
        value, sem = best[key]
        if flat[key] == value:
            text += " (best)"
        elif is_tie(flat[key], flat.get(f"{key}_sem"), value, sem):
            text += " (tie)"
    if key in _RATIO and f"{key}_ratio" in flat:
        text += f" ({fmt(flat[f'{key}_ratio'], 3)}× floor)"
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
            cells.append([f["run"], fmt(f["family"]), f["sampler"], "—", *["—"] * len(present), "—", "—",
                          f"failed: {f['error']}"])
            continue
        params = "—" if f["parameters"] is None else f"{f['parameters'] / 1e6:.3g}M"
        cells.append([f["run"], f["family"], f["sampler"], fmt(f["nfe"], 4), *[_cell(f, k, best) for k, _ in present],
                      params, fmt(f["train_seconds"], 3), fmt(f["ms_per_sample"], 3)])
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

def markdown_table(headings: list[str], cells: list[list[str]]) -> str:
    """A markdown table; ``|`` inside a cell is escaped."""
    out = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(out)
