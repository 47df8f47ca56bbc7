"""Quality against training step of a compare's few-step runs: every step checkpoint a run kept (those so far, for a
run still training), measured on the compare's own protocol (its ``evaluation`` settings and the samplers entries that
apply to the run), as a table and a figure.

    python benchmarks/fewstep_curves.py --config configs/compare/fewstep_digits.yaml \\
        --runs ict ect meanflow shortcut --labels default jumps-2 flow-jumps-2 \\
        --figure docs/figures/teacherfree_digits_fid_vs_step.png

A run keeps step checkpoints when its ``ModelCheckpoint`` has ``every_n_train_steps`` and ``save_top_k: -1`` (the
teacher-free runs of ``fewstep_digits.yaml``). ``default`` is the run's own sampler (one jump for a flow-map model); a
label that does not apply to a run (``jumps-2`` re-noises to EDM times: consistency runs only) is left out for it.
Evaluations are cached under ``<output>/curves`` by :class:`lit_score.evaluation.compare.Compare`'s keys (checkpoint
path and time, sampler, settings), so a rerun measures only new checkpoints. ``--reference RUN:LABEL`` draws a run's
finished compare row (``<output>/metrics.json``) as a horizontal line, the data floor is drawn too.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from lit_score.atomic import save_figure, write_json
from lit_score.evaluation.compare import Compare

STEP = re.compile(r"step=(\d+)")


def finished_runs(plan: Compare) -> dict[str, dict]:
    """The done records of the compare's finished runs, and ``{"run_dir", "in_progress": True}`` for a run still
    training (its step checkpoints so far: a curve can be watched); a run naming an unfinished one's checkpoint is
    left out. Nothing is trained and no folder is touched."""
    trained: dict[str, dict] = {}
    for run in plan.runs:
        if "ckpt" in run:
            trained[run["name"]] = {"name": run["name"], "ckpt": run["ckpt"], "run_dir": str(Path(run["ckpt"]).parent)}
            continue
        try:
            folder, _ = plan.run_folder(run, trained)
        except KeyError:  # ${ckpt:NAME} of a run that has not finished
            continue
        if (folder / "done.json").is_file():
            trained[run["name"]] = json.loads((folder / "done.json").read_text())
        elif folder.is_dir():
            trained[run["name"]] = {"name": run["name"], "run_dir": str(folder), "in_progress": True}
    return trained


def step_checkpoints(record: dict) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in a finished run's folder, by step."""
    folder = Path(record["run_dir"]) / "checkpoints"
    found = [(int(STEP.search(p.name).group(1)), p) for p in folder.glob("*.ckpt") if STEP.search(p.name)]
    if not found:
        raise SystemExit(f"{folder} holds no step checkpoints: give the run a ModelCheckpoint with every_n_train_steps"
                         " and save_top_k -1")
    return sorted(found)


def measure(plan: Compare, curves: Compare, runs: list[str], labels: list[str], every: int = 1) -> list[dict]:
    """One row per (run, label, step checkpoint): ``curves``' evaluation (the compare's protocol) of that checkpoint."""
    finished, rows = finished_runs(plan), []
    for run in (r for r in plan.runs if r["name"] in runs):
        if run["name"] not in finished:
            raise SystemExit(f"run {run['name']!r} of {plan.output} has not started: run the compare first")
        if finished[run["name"]].get("in_progress"):
            print(f"{run['name']} is still training: its step checkpoints so far", flush=True)
        for step, ckpt in step_checkpoints(finished[run["name"]]):
            if step % every:
                continue
            trained = {"name": run["name"], "ckpt": str(ckpt), "train_seconds": None}
            for label, entry, steps in curves.sampler_grid():
                if label in labels and curves.applies(entry, run):
                    row = curves.evaluate_run(trained, label, entry, steps)
                    rows.append({**row, "step": step})
                    shown = "{} {:.4g} ± {}".format(*headline(row)) if row.get("status") == "ok" else row.get("error")
                    print(f"{run['name']:>10} step {step:>6} {label:>14} NFE {row.get('nfe')}: {shown}", flush=True)
    return rows


def headline(row: dict) -> tuple[str, float, float | None]:
    """(name, value, standard error) of a row's headline number: FID on images, energy distance ÷ floor otherwise."""
    metrics = row.get("metrics") or {}
    if "fid" in metrics:
        return "FID", metrics["fid"]["mean"], metrics["fid"].get("sem")
    ratio = metrics["energy_distance"]
    return "energy distance / data floor", ratio["ratio"], None


def plot(rows: list[dict], references: dict[str, float], figure: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row.get("status") == "ok"]
    groups = sorted({row["nfe"] for row in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4), squeeze=False)
    for ax, nfe in zip(axes[0], groups):
        for run, label in dict.fromkeys((row["run"], row["sampler_label"]) for row in rows if row["nfe"] == nfe):
            pts = sorted((row["step"], *headline(row)[1:]) for row in rows
                         if row["nfe"] == nfe and (row["run"], row["sampler_label"]) == (run, label))
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], marker="o",
                        markersize=4, capsize=3, label=f"{run} ({label})")
        name = headline(rows[0])[0]
        if name == "FID":
            ax.axhline(rows[0]["metrics"]["fid"]["floor"], color="k", lw=0.8, ls=":", label="data floor")
        else:
            ax.axhline(1.0, color="k", lw=0.8, ls=":", label="data floor")
        for k, (reference, value) in enumerate(references.items()):
            ax.axhline(value, lw=1.0, ls=("--", "-.", (0, (5, 1, 1, 1)))[k % 3],
                       color=("tab:gray", "tab:brown", "tab:olive")[k % 3], label=reference)
        ax.set(xlabel="training step", ylabel=name, title=f"{nfe:g} NFE", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, figure)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a compare config whose runs kept step checkpoints")
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--labels", nargs="+", default=["default"], help="sampler labels of the compare's grid")
    parser.add_argument("--reference", nargs="*", default=[], help="RUN:LABEL rows of the compare's metrics.json")
    parser.add_argument("--every", type=int, default=1, help="only the checkpoints of steps divisible by this")
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    output = Path(config["output"])
    plan, curves = (Compare(folder, config["runs"], config.get("samplers") or [], config.get("evaluation") or {},
                            config.get("shared") or {}, progress=False) for folder in (output, output / "curves"))
    rows = measure(plan, curves, args.runs, args.labels, args.every)
    finished = json.loads((output / "metrics.json").read_text())["evaluations"] if args.reference else []
    references = {}
    for wanted in args.reference:
        run, _, label = wanted.partition(":")
        row = next((r for r in finished if r["run"] == run and r["sampler_label"] == label), None)
        if row is None:
            raise SystemExit(f"{output / 'metrics.json'} has no row {wanted}: run the compare first")
        references[f"{run} {label} ({row['nfe']:g} NFE)"] = headline(row)[1]
    write_json(output / "curves" / "curves.json", {"rows": rows, "references": references})
    if args.figure:
        plot(rows, references, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
