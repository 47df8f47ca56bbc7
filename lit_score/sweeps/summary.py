"""A sweep's runs ranked, and the files that say so: ``summary.csv``, ``summary.md`` and the header of ``best.yaml``.

Runs rank best first: finished with a finite metric (by the goal), then finished without one, then the rest.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lit_score.atomic import atomic_file
from lit_score.evaluation.report import markdown_table


def scored(run: dict) -> bool:
    """Whether a run finished with a finite metric (what ranks it)."""
    value = run.get("metric")
    return run["state"] == "finished" and isinstance(value, (int, float)) and math.isfinite(value)


def ranked(runs: list[dict], goal: str) -> list[dict]:
    """Runs best first: finished with a finite metric (by the goal), then finished without one, then the rest."""
    sign = -1.0 if goal == "maximize" else 1.0

    def key(r: dict):
        finite = scored(r)
        return (0 if finite else 1 if r["state"] == "finished" else 2, sign * r["metric"] if finite else 0.0,
                r["name"])

    return sorted(runs, key=key)


def summary_rows(runs: list[dict], metric: str, keys: list[str]) -> list[dict]:
    """One row per ranked run: its rank (scored runs only), state, metric, parameters, wall time, folder, error."""
    return [{"rank": i + 1 if scored(r) else "", "run": r["name"], "state": r["state"], metric: r.get("metric"),
             **{k: r["params"].get(k) for k in keys}, "wall_s": r.get("wall_s"),
             "run_dir": r.get("run_dir"), "error": r.get("error") or ""} for i, r in enumerate(runs)]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with atomic_file(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(heading: str, intro: str, rows: list[dict], metric: str, keys: list[str], best: dict | None,
             best_path: Path) -> str:
    """``summary.md``: the ranked table (parameters by their shortest unique names) and the best run's config."""
    short = short_names(keys)
    head = ["rank", "run", metric, *short.values(), "state", "wall s"]
    lines = [heading, "", intro, "",
             markdown_table(head, [[str(row["rank"]), row["run"], fmt(row[metric]), *(fmt(row[k]) for k in keys),
                                    row["state"], "–" if row["wall_s"] is None else f"{row['wall_s']:.0f}"]
                                   for row in rows])]
    lines += ["", "Columns: " + "; ".join(f"`{s}` = `{k}`" for k, s in short.items()) + "."]
    if best is not None:
        lines += ["", f"Best: {best['name']} ({metric} = {fmt(best['metric'])}); its config:"
                      f" `lit-score fit --config {best_path}`."]
    return "\n".join(lines) + "\n"


def short(key: str) -> str:
    return key.rpartition(".")[2]


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest unique dotted suffix of each key (``lr``, ``ot_coupling``, ``process.class_path``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k.endswith(name) for k in keys) == 1 or n == len(parts):
                out[key] = ".".join(p for p in parts[-n:] if p != "init_args") or name
                break
    return out


def fmt(value) -> str:
    if value is None or value == "":
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
