"""What ``lit-score compare`` does (:class:`Compare`): train (or take) several models, evaluate each on one protocol
and a sampler × NFE grid, and write a report. Orchestration only: training is :func:`lit_score.training.fit` (the
command passes its own, which reports a run's failure as ``lit-score fit`` would), numbers are
:func:`~lit_score.evaluation.evaluate`, rendering is :mod:`lit_score.evaluation.report`; a new family or sampler appears
here with no change to this file. The command line is :mod:`lit_score.cli.compare`.

    lit-score compare --config configs/compare/toy.yaml          # train every family on moons, same seed and budget
    lit-score compare --ckpts a.ckpt b.ckpt --output runs/cmp    # or compare existing checkpoints

A compare config::

    output: runs/compare/toy
    shared: {seed_everything: 0, trainer.max_epochs: 60}   # CLI keys stacked over every run's config
    runs:
      - {name: ddpm, config: configs/ddpm/toy.yaml, overrides: {trainer.precision: 32-true}}
      - {name: old, ckpt: runs/ddpm_toy/version_3/checkpoints/last.ckpt}
    samplers:                                              # each at each num_steps, on every model that can use it
      - {sampler: {class_path: lit_score.samplers.DDIM}, num_steps: [10, 50]}
      - {label: cm-2, runs: [ddpm], sampler: {...}}        # only on the runs named
    evaluation: {num_samples: 2000, seeds: [0], metrics: null}   # keyword arguments of evaluate()

A run's override may name an earlier run's checkpoint as ``${ckpt:NAME}`` (a distillation student's teacher trained
in the same compare: ``{model.init_args.loss.init_args.teacher.init_args.checkpoint: ${ckpt:teacher}}``); the student's
key then hashes the teacher's checkpoint path, which holds the teacher's own key, so a changed teacher retrains it.

Re-running resumes: a finished run (``runs/<name>/<key>/done.json``) and a finished evaluation
(``evals/<name>/<label>_<key>.json``) are reused; the keys hash the resolved inputs, so a change retrains or
re-evaluates only what it touches.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
import traceback
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lit_score.atomic import torch_save, write_json
from lit_score.evaluation.evaluate import (
    EvaluationError,
    EvaluationResult,
    content_key,
    default_metrics,
    describe_sampler,
    evaluate,
)
from lit_score.evaluation.report import write_report
from lit_score.evaluation.run_specs import build_sampler, check_references, cli_overrides, resolve_references
from lit_score.loading.checkpoint import checkpoint_datamodule, checkpoint_summary, load_for_evaluation
from lit_score.loading.sampler import data_range_problem
from lit_score.metrics.fidelity import resolve_feature_extractor
from lit_score.samplers import Sampler
from lit_score.training import fit
from lit_score.validation import EVALUATE_RULES, InvalidInput, check_options

#: part of every evaluation's cache key: bumped when the evaluation protocol changes, so a resumed compare never mixes
#: numbers of two protocols (2: issue 23's digits-v2 default, floors at the models' n, standard errors, realism)
EVALUATION_PROTOCOL = 2


def _key(*parts: Any) -> str:
    return content_key(parts)


class Compare:
    """The state of one compare: where it writes, what it trains and evaluates, and what is already done."""

    def __init__(self, output: Path, runs: list[dict], samplers: list[dict], evaluation: dict, shared: dict,
                 accelerator: str = "auto", progress: bool = True, fit: Callable[[list[str]], None] = fit) -> None:
        self.output, self.runs, self.samplers = output, runs, samplers
        self.evaluation, self.shared, self.progress, self.fit = dict(evaluation), dict(shared), progress, fit
        self.device = torch.device("cuda" if accelerator in ("auto", "gpu") and torch.cuda.is_available() else "cpu")
        accepted = set(inspect.signature(evaluate).parameters) - {"model", "datamodule", "samples", "sampler",
                                                                  "checkpoint", "progress", "trainer_kwargs",
                                                                  "output", "samples_source"}
        unknown = set(self.evaluation) - accepted - {"weights"}
        if unknown:
            raise EvaluationError(f"unknown evaluation keys {sorted(unknown)}: use {', '.join(sorted(accepted))}")
        if self.evaluation.get("feature_extractor"):  # a missing weights file stops us before any training
            resolve_feature_extractor(self.evaluation["feature_extractor"],
                                      self.evaluation.get("feature_extractor_weights_path"))
        self.check_plan()
        names = [r["name"] for r in runs]
        if len(set(names)) != len(names):
            raise EvaluationError(f"run names must be unique, got {names}")
        for run in runs:
            if ("config" in run) == ("ckpt" in run):
                raise EvaluationError(f"run {run['name']!r} needs exactly one of config (to train) or ckpt (to take)")
            for path in [run.get("config"), run.get("ckpt")]:
                if path is not None and not Path(path).is_file():
                    raise EvaluationError(f"run {run['name']!r}: {path} does not exist")
        check_references(runs)
        for entry in samplers:
            only = entry.get("runs")
            if only is not None and (not isinstance(only, list) or not only or set(only) - set(names)):
                raise EvaluationError(f"a samplers entry's runs must be a non-empty list of run names ({names}),"
                                      f" got {only!r}")

    def check_plan(self) -> None:
        """Every sampler of the grid is built and every evaluation number checked before the first run trains (a
        0-step sampler must not fail after minutes of training, leaving partial evaluations)."""
        given = dict(self.evaluation)
        rules = {k: r for k, r in EVALUATE_RULES.items() if k in given and r.kind in ("count", "number", "ints")}
        try:
            check_options(given, rules)
        except InvalidInput as err:
            raise EvaluationError(f"the compare config's evaluation: {str(err).replace('--', '', 1)}") from None
        for label, entry, steps in self.sampler_grid():
            spec = None if entry is None else entry.get("sampler")
            if spec is None:
                continue
            try:
                build_sampler(spec, steps, entry.get("steps_key", "num_steps"))
            except (ValueError, TypeError, ArgumentError) as err:
                lines = [line.strip().removeprefix("- ") for line in str(err).splitlines() if line.strip()]
                cause = next((line for line in reversed(lines) if " must " in line), lines[-1] if lines else err)
                raise EvaluationError(f"samplers entry {label}: {cause} — fix it in the compare config's samplers"
                                      ) from None

    def run_folder(self, run: dict, trained: dict[str, dict] | None = None) -> tuple[Path, dict[str, Any]]:
        """``runs/<name>/<key>/`` of a run to train and its resolved overrides (shared keys, then the run's, with
        ``${ckpt:NAME}`` replaced from ``trained``): the key hashes the config's text and the overrides."""
        overrides = {**self.shared, **resolve_references(run.get("overrides") or {}, trained or {})}
        return self.output / "runs" / run["name"] / _key(Path(run["config"]).read_text(), overrides), overrides

    # --- training --------------------------------------------------------------------------------------------------
    def train(self, run: dict, trained: dict[str, dict] | None = None) -> dict[str, Any]:
        """``lit-score fit`` of one run into ``runs/<name>/<key>/`` (CSV logs), or the finished one of an earlier
        call; ``${ckpt:NAME}`` in its overrides becomes the checkpoint of ``trained[NAME]`` (an earlier run)."""
        if "ckpt" in run:
            ckpt = Path(run["ckpt"])
            return {"name": run["name"], "ckpt": str(ckpt), "run_dir": str(ckpt.parent.parent), "train_seconds": None,
                    "trained_here": False}
        run_dir, overrides = self.run_folder(run, trained)
        key = run_dir.name
        done = run_dir / "done.json"
        if done.is_file():
            return json.loads(done.read_text())
        if run_dir.exists():  # an interrupted earlier attempt: start it again from scratch
            shutil.rmtree(run_dir)
        logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                  "init_args": {"save_dir": str(self.output / "runs"), "name": run["name"], "version": key}}
        argv = ["--config", str(run["config"]), *cli_overrides(overrides), "--trainer.logger", json.dumps(logger)]
        start = time.perf_counter()
        self.fit(argv)
        seconds = time.perf_counter() - start
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            found = sorted((run_dir / "checkpoints").glob("*.ckpt"))
            if not found:
                raise EvaluationError(f"run {run['name']!r} wrote no checkpoint: its config needs a ModelCheckpoint")
            ckpt = found[-1]
        record = {"name": run["name"], "ckpt": str(ckpt), "run_dir": str(run_dir), "train_seconds": seconds,
                  "config": str(run["config"]), "overrides": overrides, "key": key, "trained_here": True}
        write_json(done, record)
        return record

    # --- evaluation ------------------------------------------------------------------------------------------------
    def sampler_grid(self) -> list[tuple[str, dict | None, int | None]]:
        """(label, sampler spec or None for the model's own, num_steps) for every evaluation of a run."""
        grid: list[tuple[str, dict | None, int | None]] = [("default", None, None)]
        for entry in self.samplers:
            spec = entry.get("sampler")
            if spec is None and not entry.get("start"):
                raise EvaluationError("a samplers entry needs a sampler, a start, or both")
            if spec is None and entry.get("num_steps"):
                raise EvaluationError("a samplers entry without a sampler uses the model's own: drop its num_steps")
            name = entry.get("label") or (spec["class_path"].rpartition(".")[2] if spec else "default")
            if entry.get("start") and not entry.get("label"):
                name = f"{name}-from-{entry['start']}"
            for steps in entry.get("num_steps") or [None]:
                grid.append((name if steps is None else f"{name}-{steps}", entry, steps))
        return grid

    def evaluate_run(self, trained: dict, label: str, entry: dict | None, steps: int | None) -> dict[str, Any]:
        """One evaluation (cached by its key); failures are recorded, not raised, so one bad pairing cannot sink
        the whole report."""
        spec = None if entry is None else entry.get("sampler")
        sampler = None if spec is None else build_sampler(spec, steps, entry.get("steps_key", "num_steps"))
        start = None if entry is None else entry.get("start")
        settings = {k: v for k, v in self.evaluation.items()}
        key = _key(EVALUATION_PROTOCOL, trained["ckpt"], Path(trained["ckpt"]).stat().st_mtime_ns,
                   describe_sampler(sampler), settings,
                   *([start] if start else []))
        path = self.output / "evals" / trained["name"] / f"{label}_{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        row: dict[str, Any] = {"run": trained["name"], "sampler_label": label, "num_steps": steps,
                               "train_seconds": trained.get("train_seconds")}
        try:
            self.measure(row, trained, entry, sampler, start, settings, path)
        except (EvaluationError, ValueError, FileNotFoundError) as err:  # a pairing that cannot run
            row.update({"status": "failed", "error": f"{type(err).__name__}: {str(err).splitlines()[0]}",
                        "traceback": traceback.format_exc(limit=3)})
        write_json(path, row)
        return row

    def measure(self, row: dict[str, Any], trained: dict, entry: dict | None, sampler: Sampler | None,
                start: str | None, settings: dict[str, Any], path: Path) -> None:
        """Evaluate one pairing into ``row`` ("skipped" with the reason when the model cannot take the sampler or
        the start), keeping the figure samples of a run's own sampler beside the row's JSON at ``path``."""
        model, weights = load_for_evaluation(trained["ckpt"], settings.pop("weights", "auto"), self.device)
        data = checkpoint_datamodule(trained["ckpt"])
        row["family"] = type(model).__name__
        problem = None if sampler is None else model.sampler_problem(sampler) or data_range_problem(sampler, data)
        problem = None if problem is None else f"{type(sampler).__name__}: {problem}"
        if problem is None and start:
            problem = model.sample_start_problem(start)
        if problem is not None:
            row.update({"status": "skipped", "error": problem})
            return
        if start:
            model.set_sample_start(start)
        if entry is not None:  # bits/dim does not depend on the sampler: measured with the default one only
            metrics = settings.get("metrics")
            settings["metrics"] = [m for m in metrics if m != "bpd"] if metrics else None
            settings["skip_inapplicable"] = True
            if settings["metrics"] is None:
                settings["metrics"] = [m for m in default_metrics(model, data) if m != "bpd"]
        else:
            settings.setdefault("skip_inapplicable", True)
        result = evaluate(model, data, sampler=sampler, checkpoint=checkpoint_summary(trained["ckpt"], weights),
                          progress=False, trainer_kwargs={"accelerator": "gpu" if self.device.type == "cuda"
                                                          else "cpu", "enable_progress_bar": False}, **settings)
        row.update({"status": "ok", "metrics": result.metrics, "protocol": result.protocol,
                    "parameters": result.protocol["parameters"], "nfe": result.protocol["nfe"],
                    "sample_seconds_per_sample": result.protocol["wall_time"]["generation_s"]
                    / (result.protocol["num_samples"] * len(result.protocol["seeds"]))
                    if result.protocol["num_samples"] else None,
                    "data_is_image": data.is_image})
        if entry is None and result.samples:  # the report's sample figure shows each run's own sampler
            row["figure_samples"] = str(save_figure_samples(result, data, path.with_suffix(".pt")))

    @staticmethod
    def data_floor(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The data row of image data: every evaluation already measured n real images against its own reference at
        its n (:mod:`lit_score.metrics.image_quality`'s floor plan); the row lifts the first own-sampler evaluation's
        floor with its standard error. Same n, same reference and seed sets as the model rows. None for other data
        (their floors are per row) or when no row has a floor."""
        for row in rows:
            metrics = row.get("metrics") or {}
            if row.get("status") != "ok" or not row.get("data_is_image") or "floor" not in metrics.get("fid", {}):
                continue
            floor = {name: {"mean": s["floor"], "std": None, "sem": s.get("floor_sem"), "sem_from": s.get("sem_from")}
                     for name, s in metrics.items() if "floor" in s}
            plans = row["protocol"].get("floor", {}).get("plans") or [{}]
            n, scheme = row["protocol"]["num_samples"], plans[0].get("scheme")
            return {"run": f"data (n={n}, {scheme})", "family": "data", "sampler_label": "—", "status": "ok",
                    "metrics": floor, "protocol": row["protocol"], "nfe": None, "data_is_image": True}
        return None

    @staticmethod
    def applies(entry: dict | None, run: dict) -> bool:
        """Whether a grid entry is measured on ``run``: the model's own sampler always, an entry with ``runs`` only on
        the runs it names (a consistency student's re-noising times are not a flow model's)."""
        return entry is None or entry.get("runs") is None or run["name"] in entry["runs"]

    def run(self) -> dict[str, Path]:
        grid = self.sampler_grid()
        tasks = sum(1 + sum(self.applies(entry, run) for _, entry, _ in grid) for run in self.runs)
        bar = tqdm(total=tasks, desc="compare", disable=not self.progress, dynamic_ncols=True)
        trained, rows = [], []
        for run in self.runs:
            bar.set_postfix_str(f"fit {run['name']}")
            trained.append(self.train(run, {record["name"]: record for record in trained}))
            bar.update(1)
            for label, entry, steps in (cell for cell in grid if self.applies(cell[1], run)):
                bar.set_postfix_str(f"evaluate {run['name']} · {label}")
                rows.append(self.evaluate_run(trained[-1], label, entry, steps))
                bar.update(1)
        bar.close()
        floor = self.data_floor(rows)
        return write_report(self.output, trained, rows + ([floor] if floor else []), self.evaluation)


def save_figure_samples(result: EvaluationResult, data, path: Path) -> Path:
    """The samples the report's figure shows of a run (its first seed set, with the data beside toy samples and
    k-NN realism's off-manifold samples flagged)."""
    shown = result.samples[0][: (64 if data.is_image else 2000)]
    reference = None if data.is_image else data.reference_draw(len(shown), torch.Generator().manual_seed(0))
    flagged = torch.zeros(len(shown), dtype=torch.bool)  # k-NN realism's off-manifold samples
    flagged[[i for i in result.per_seed[0].get("realism_flagged_index", []) if i < len(shown)]] = True
    return torch_save({"samples": shown, "reference": reference, "data_range": data.data_range, "flagged": flagged},
                      path)
