"""``lit-score sweep``'s engine (:class:`LocalSweep`): run a W&B sweep file on this machine, with no W&B server.

The ``sweeps`` package (W&B's own engine) proposes each run from the runs so far (grid, random, bayes); each run is
the command the W&B agent would run, ``lit-score fit --config … --key=value …``, launched as its own process
(:mod:`lit_score.sweeps.launch`) with the config's own logger, callbacks and checkpoints. Per run, the folder, the
logger's name and version (the W&B run id) are set so runs never share a folder, and a
:class:`~lit_score.sweeps.MetricHistory` records what it logged.

``<output>/sweep.json`` (:mod:`lit_score.sweeps.store`) records every proposal, its state and metric. Re-running
continues the sweep: finished (and failed) runs are kept, an interrupted run resumes from its ``last.ckpt``
(``--ckpt_path``) or starts again when it wrote none. ``summary.csv`` / ``summary.md`` rank the runs by the sweep's
metric and goal (:mod:`lit_score.sweeps.summary`); ``best.yaml`` is the best run's resolved config
(:mod:`lit_score.sweeps.config`), ready for ``lit-score fit --config best.yaml``. The command line is
:mod:`lit_score.cli.sweep`.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lit_score.atomic import write_json, write_text
from lit_score.callbacks.resume import TrainingStopped
from lit_score.sweeps import summary
from lit_score.sweeps.config import (
    check_checkpoint_folders,
    flat_keys,
    is_wandb,
    logger_of,
    resolve,
    resolve_quietly_offline,
    run_folders,
)
from lit_score.sweeps.launch import Launcher, last_error, launch_process, signal_name
from lit_score.sweeps.spec import (
    METHODS,
    SweepError,
    agent_values,
    fit_args,
    grid_size,
    load_sweep,
    plain,
    sweeps_package,
)
from lit_score.sweeps.store import STATE_FILE, locked, read_state
from lit_score.training import wandb_credentials

HISTORY_CLASS = "lit_score.sweeps.MetricHistory"


class LocalSweep:
    """One sweep folder: its state, proposals, runs and summary."""

    def __init__(self, sweep_file: str | Path, output: str | Path | None = None, method: str | None = None,
                 count: int | None = None, seed: int = 0, launch: Launcher = launch_process,
                 echo: Callable[[str], None] = print) -> None:
        self.sweep_file = Path(sweep_file)
        self.sweep = load_sweep(self.sweep_file)
        if method is not None:
            if method not in METHODS:
                raise SweepError(f"--method {method!r}: use grid, random or bayes")
            self.sweep["method"] = method
        self.name = str(self.sweep.get("name") or self.sweep_file.stem)
        self.output = Path(output) if output is not None else Path("runs/sweeps") / self.name
        self.metric = self.sweep["metric"]["name"]
        self.goal = self.sweep["metric"].get("goal", "minimize")
        self.count = self._count(count)
        self.seed, self.launch, self.echo = seed, launch, echo
        self._best_written: tuple | None = None  # (run, metric) of the best.yaml on disk
        self.state: dict[str, Any] = {}

    def _count(self, count: int | None) -> int:
        if count is not None:
            if count < 1:
                raise SweepError(f"--count must be >= 1, got {count}")
            return count
        if self.sweep.get("run_cap"):
            return int(self.sweep["run_cap"])
        if self.sweep["method"] == "grid" and grid_size(self.sweep):
            return grid_size(self.sweep)
        raise SweepError(f"a {self.sweep['method']} sweep has no end: pass --count N (the number of runs in all)")

    # --- state ---------------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.output / STATE_FILE

    def load_state(self) -> None:
        """A new state, or the folder's own when it holds this sweep (same parameters and command)."""
        if not self.state_path.is_file():
            self.state = {"sweep_file": str(self.sweep_file), "name": self.name, "id": secrets.token_hex(4),
                          "parameters": self.sweep["parameters"], "command": self.sweep["command"], "runs": []}
            return
        self.state = read_state(self.state_path, self.sweep, self.output)

    def save_state(self) -> None:
        write_json(self.state_path, self.state)

    def locked(self):
        """One ``lit-score sweep`` at a time per folder (:func:`lit_score.sweeps.store.locked`)."""
        return locked(self.output)

    # --- proposals -----------------------------------------------------------------------------------------------
    def propose(self) -> dict[str, Any] | None:
        """The next parameter values from W&B's engine given every run so far (None: the grid is done). Random and
        bayes draws are seeded by (--seed, run index), so a sweep proposes the same runs again."""
        sw = sweeps_package()
        states = {"finished": sw.RunState.finished, "failed": sw.RunState.failed}
        runs = [sw.SweepRun(name=r["name"], config=agent_values(r["params"]),
                            state=states.get(r["state"], sw.RunState.running),
                            summaryMetrics={} if r.get("metric") is None else {self.metric: r["metric"]})
                for r in self.state["runs"]]
        saved = np.random.get_state()
        np.random.seed((self.seed * 1_000_003 + len(runs)) % 2**32)
        try:
            proposal = sw.next_run(dict(self.sweep), runs, validate=False)
        except (ValueError, KeyError, TypeError) as err:
            method = self.sweep["method"]
            raise SweepError(f"{self.sweep_file}: the {method} search cannot propose a run: {err}") from err
        finally:
            np.random.set_state(saved)
        if proposal is None:
            return None
        return {key: plain(spec["value"]) for key, spec in proposal.config.items()}

    # --- one run -------------------------------------------------------------------------------------------------
    def metrics_path(self, run: dict) -> Path:
        return self.output / "metrics" / f"{run['name']}.json"

    def prepare(self, run: dict) -> dict:
        """The run's resolved config: its arguments parse, its objects build, its checkpoints get their own folder."""
        try:
            config = resolve(fit_args(self.sweep, run["params"]))
        except SweepError as err:
            raise SweepError(self.explain(run, err)) from err
        check_checkpoint_folders(config)
        return config

    def execute(self, run: dict, env: dict[str, str], config: dict | None = None) -> None:
        """Check, launch and record one run (resuming it from its last.ckpt when an earlier attempt left one)."""
        base = fit_args(self.sweep, run["params"])
        logger = logger_of(config if config is not None else self.prepare(run))
        folder_args, run_dir = run_folders(self.output, self.name, self.state["id"], run["name"], logger)
        history = [f"--trainer.callbacks+={HISTORY_CLASS}",  # the last callback: the key below is its own
                   f"--trainer.callbacks.init_args.path={self.metrics_path(run)}"]
        argv = ["fit", *base, *folder_args, *history]
        last = run_dir / "checkpoints" / "last.ckpt"
        if run["state"] == "running" and last.is_file():
            argv += [f"--ckpt_path={last}"]
            self.echo(f"{run['name']}: resuming from {last}")
        elif run_dir.exists() and self.output.resolve() in run_dir.resolve().parents:
            shutil.rmtree(run_dir)  # an attempt that wrote no checkpoint: start it again in a clean folder
            self.metrics_path(run).unlink(missing_ok=True)
        log = self.output / "logs" / f"{run['name']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        run.update(state="running", run_dir=str(run_dir), log=str(log), argv=argv, attempts=run.get("attempts", 0) + 1)
        self.save_state()
        start = time.perf_counter()
        code, received = self.launch(argv, log, env)
        run["wall_s"] = round(run.get("wall_s", 0.0) + time.perf_counter() - start, 1)
        run["returncode"] = code
        if received is not None or code < 0 or code >= 128:
            signum = received or (-code if code < 0 else code - 128)
            self.save_state()
            raise TrainingStopped(f"sweep stopped by {signal_name(signum)} during {run['name']} (its last checkpoint,"
                                  f" if any, is kept): run the same command again to continue", signum)
        if code != 0:
            run.update(state="failed", error=last_error(log))
            self.echo(f"{run['name']}: failed ({run['error']}); log {log}")
        else:
            recorded = json.loads(self.metrics_path(run).read_text()) if self.metrics_path(run).is_file() else {}
            run.update(state="finished", metrics=recorded.get("last", {}))
            run["metric"] = run["metrics"].get(self.metric)
        self.save_state()

    def explain(self, run: dict, err: SweepError) -> str:
        """A run whose arguments do not parse: name the sweep parameter at fault, with the closest key there is."""
        message = str(err)
        for key in run["params"]:
            if f"'{summary.short(key)}'" in message or f"--{key}" in message:
                known = flat_keys(resolve(fit_args(self.sweep, {})))
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
                hint = f"did you mean {close[0]}?" if close else f"({message})"
                return f"sweep parameter {key} is not a `lit-score fit` key of the sweep's command: {hint}"
        return f"{run['name']} ({', '.join(f'{k}={v}' for k, v in run['params'].items())}): {message}"

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self, retry_failed: bool = False) -> dict[str, Path]:
        with self.locked():
            self.load_state()
            env = self.environment()
            self.check_metric()
            runs = self.state["runs"]
            if retry_failed:
                for r in runs:
                    if r["state"] == "failed":
                        r.update(state="proposed", error=None)
            for run in [r for r in runs if r["state"] in ("proposed", "running")]:
                self.step(run, env)
            while len(runs) < self.count:
                params = self.propose()
                if params is None:
                    self.echo(f"the grid is done after {len(runs)} runs")
                    break
                run = {"name": f"run_{len(runs):03d}", "params": params, "state": "proposed",
                       "method": self.sweep["method"]}
                config = self.prepare(run)  # before it is recorded: a proposal that cannot run leaves no trace
                runs.append(run)
                self.save_state()
                self.step(run, env, config)
            return self.summarize()

    def step(self, run: dict, env: dict[str, str], config: dict | None = None) -> None:
        config = config if config is not None else self.prepare(run)
        done = sum(r["state"] in ("finished", "failed") for r in self.state["runs"])
        shown = ", ".join(f"{summary.short(k)}={v}" for k, v in run["params"].items())
        self.echo(f"[{done + 1}/{self.count}] {run['name']}: {shown}")
        self.execute(run, env, config)
        if run["state"] == "finished":
            value = run.get("metric")
            self.echo(f"{run['name']}: {self.metric} = {summary.fmt(value)} ({run['wall_s']:.0f} s)")
            self.check_metric()
        self.summarize()

    def environment(self) -> dict[str, str]:
        """The runs' environment: this one, with the sweep's W&B group, and W&B offline when the config logs to W&B
        and no login is found (no W&B server needed; ``wandb sync`` uploads the runs later)."""
        env = {**os.environ, "WANDB_RUN_GROUP": self.name}
        if "WANDB_MODE" not in os.environ and not wandb_credentials():
            args = fit_args(self.sweep, self.state["runs"][0]["params"] if self.state["runs"] else self.propose() or {})
            try:
                config = resolve_quietly_offline(args)
            except SweepError:
                return env  # the run's own check says what is wrong, naming the parameter
            if is_wandb(logger_of(config)):
                env["WANDB_MODE"] = os.environ["WANDB_MODE"] = "offline"
                self.echo(f"no W&B login: the runs log offline under {self.output}/wandb (upload them later with"
                          f" `wandb sync {self.output}/wandb/offline-run-*`)")
        return env

    def check_metric(self) -> None:
        """The sweep's metric must be one the runs log: refused once finished runs exist and none logged it."""
        finished = [r for r in self.state["runs"] if r["state"] == "finished"]
        for r in finished:
            r["metric"] = (r.get("metrics") or {}).get(self.metric)
        if finished and not any(self.metric in (r.get("metrics") or {}) for r in finished):
            logged = sorted({k for r in finished for k in (r.get("metrics") or {})})
            names = ", ".join(logged[:12]) + (" …" if len(logged) > 12 else "") or "nothing"
            raise SweepError(f"metric {self.metric} was never logged by {finished[0]['name']} (it logged {names}): name"
                             " a logged metric in the sweep file's metric.name")

    # --- the summary ---------------------------------------------------------------------------------------------
    def ranked(self) -> list[dict]:
        """Runs best first (:func:`lit_score.sweeps.summary.ranked`)."""
        return summary.ranked(self.state["runs"], self.goal)

    def summarize(self) -> dict[str, Path]:
        """summary.csv, summary.md and (once a run has a finite metric) best.yaml."""
        ranked = self.ranked()
        keys = list(self.sweep["parameters"])
        rows = summary.summary_rows(ranked, self.metric, keys)
        paths = {"csv": summary.write_csv(self.output / "summary.csv", rows), "md": self.output / "summary.md"}
        best = ranked[0] if ranked and rows[0]["rank"] == 1 else None
        if best is not None:
            paths["best"] = self.output / "best.yaml"
            if self._best_written != (best["name"], best["metric"]) or not paths["best"].is_file():
                self.write_best(best)
                self._best_written = (best["name"], best["metric"])
        intro = (f"{len(rows)} runs of `{self.sweep_file}` ({self.sweep['method']}); command"
                 f" `{' '.join(map(str, self.sweep['command']))}`.")
        write_text(paths["md"], summary.markdown(f"# Sweep {self.name}: {self.metric} ({self.goal})", intro, rows,
                                                 self.metric, keys, best, self.output / "best.yaml"))
        return paths

    def write_best(self, best: dict) -> Path:
        """The best run's resolved config without the sweep's per-run folder and history (a fresh run folder under
        the config's own logger)."""
        path = self.output / "best.yaml"
        args = fit_args(self.sweep, best["params"])
        text = yaml.safe_dump(resolve(args), sort_keys=False)
        header = (f"# Best run of sweep {self.name} ({self.sweep_file}): {best['name']}, {self.metric} ="
                  f" {summary.fmt(best['metric'])} ({self.goal}).\n# Its parameters: "
                  + ", ".join(f"{k}={v}" for k, v in best["params"].items())
                  + f"\n#   lit-score fit --config {path}\n")
        write_text(path, header + text)
        return path
