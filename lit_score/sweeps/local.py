"""``lit-score sweep``: run a W&B sweep file on this machine, with no W&B server.

    lit-score sweep sweeps/flow_toy.yaml                      # the whole grid
    lit-score sweep sweeps/ebm_toy.yaml --count 12            # bayes / random: 12 runs in all
    lit-score sweep sweeps/flow_toy.yaml                      # again: continues where it stopped

The ``sweeps`` package (W&B's own engine) proposes each run from the runs so far (grid, random, bayes); each run is
the command the W&B agent would run, ``lit-score fit --config … --key=value …``, started as a separate process
(``python -m lit_score.cli``, this interpreter) with the config's own logger, callbacks and checkpoints. A separate
process because that is what the agent does, because DDP's launcher re-runs the process's own command line, and
because a crash or a leak of one run cannot touch the next one. Per run, the folder, the logger's name and
version (the W&B run id) are set so runs never share a folder, and a :class:`~lit_score.sweeps.MetricHistory`
records what it logged.

``<output>/sweep.json`` records every proposal, its state and metric (written before a run starts and after it
ends). Re-running the command continues the sweep: finished (and failed) runs are kept, an interrupted run resumes
from its ``last.ckpt`` (``--ckpt_path``) or starts again when it wrote none. ``summary.csv`` / ``summary.md`` rank
the runs by the sweep's metric and goal; ``best.yaml`` is the best run's resolved config, ready for
``lit-score fit --config best.yaml``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lit_score.atomic import atomic_file, write_json, write_text
from lit_score.evaluation.report import markdown_table
from lit_score.sweeps.spec import METHODS, SweepError, agent_values, fit_args, grid_size, load_sweep, plain

STATE_FILE = "sweep.json"
HISTORY_CLASS = "lit_score.sweeps.MetricHistory"
Launcher = Callable[[list[str], Path, dict[str, str]], tuple[int, int | None]]


# --- launching one run -----------------------------------------------------------------------------------------
def launch_process(argv: list[str], log: Path, env: dict[str, str]) -> tuple[int, int | None]:
    """Run ``python -m lit_score.cli <argv>`` with its output appended to ``log``; returns (exit status, the signal
    the sweep itself received meanwhile, or None).

    The run has its own process group, so a Ctrl-C at the terminal reaches the sweep only; the sweep passes each
    SIGINT / SIGTERM on (a SIGHUP, the terminal closing, as SIGTERM), and the run's GracefulStop writes ``last.ckpt``
    and exits (a second Ctrl-C stops it at once)."""
    received: list[int] = []
    with open(log, "a") as out:
        out.write(f"$ lit-score {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "lit_score.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)

        def forward(signum, frame) -> None:
            signum = signal.SIGTERM if signum == signal.SIGHUP else signum
            received.append(signum)
            if proc.poll() is None:
                proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return code, (received[0] if received else None)


def launch_in_process(argv: list[str], log: Path, env: dict[str, str]) -> tuple[int, int | None]:
    """Run ``lit_score.cli.main(argv)`` in this process (tests: no interpreter start-up per run)."""
    from lit_score.cli import main

    saved = dict(os.environ)
    os.environ.update(env)
    buffer = io.StringIO()
    try:
        with redirect_stderr(buffer):
            main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        with open(log, "a") as out:
            out.write(f"$ lit-score {' '.join(argv)}\n{buffer.getvalue()}")
    return code, None


# --- the resolved config of a run (parsed and instantiated here, nothing trained) --------------------------------
def resolve(args: list[str]) -> dict:
    """The resolved ``lit-score fit`` config of ``args`` as a dict, after LightningCLI parsed it and built the model,
    data and trainer (so an unknown key, a bad value or a missing wandb login is found before any run starts)."""
    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lit_score.cli import LitScoreCLI, UserError, check_config_files, one_line

    check_config_files(args)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err), _quiet("lightning.pytorch", "lightning.fabric"):
            cli = LitScoreCLI(args=args, run=False)
    except ArgumentError as error:  # LitScoreCLI already added a did-you-mean hint to an unknown key
        raise SweepError(one_line(error)) from error
    except (UserError, MisconfigurationException, ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        raise SweepError(one_line(error)) from error
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))


@contextmanager
def _quiet(*names: str):
    """Lightning's info lines ("Seed set to 0", "GPU available") go to handlers made at import: silence them."""
    import logging

    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def logger_of(config: dict) -> dict | None:
    """The run's one logger ``{class_path, init_args}`` (None when it has none); refuses a list of loggers."""
    logger = config.get("trainer", {}).get("logger")
    if isinstance(logger, list):
        if len(logger) != 1:
            raise SweepError("a sweep run needs one logger (the config lists several): keep one, so each run can be"
                             " given its own folder")
        logger = logger[0]
    return logger if isinstance(logger, dict) else None


def is_wandb(logger: dict | None) -> bool:
    return logger is not None and str(logger.get("class_path", "")).endswith("WandbLogger")


def check_checkpoint_folders(config: dict) -> None:
    """A ModelCheckpoint with a fixed ``dirpath`` would put every run's checkpoints into one folder."""
    callbacks = config.get("trainer", {}).get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = (cb.get("init_args") or {}).get("dirpath")
            if dirpath:
                raise SweepError(f"ModelCheckpoint dirpath {dirpath} would be shared by every run of the sweep: drop"
                                 " it, and each run keeps its checkpoints in its own folder")


# --- the sweep -------------------------------------------------------------------------------------------------
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
        try:
            self.state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as err:
            raise SweepError(f"{self.state_path} is not readable JSON ({err}): move it away to start again") from err
        for key in ("parameters", "command"):
            if self.state.get(key) != json.loads(json.dumps(self.sweep[key])):
                raise SweepError(f"{self.output} holds a sweep with other {key} (from {self.state.get('sweep_file')}):"
                                 " pass another --output, or remove that folder to start again")

    def save_state(self) -> None:
        write_json(self.state_path, self.state)

    @contextmanager
    def locked(self):
        """One ``lit-score sweep`` at a time per folder. The lock file goes when the sweep ends (however it ends),
        and so does the folder when the sweep made it and left nothing in it."""
        import fcntl

        from lit_score.atomic import make_parents, remove_made

        made = make_parents(self.output)
        lock = self.output / ".lock"
        with open(lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise SweepError(f"another lit-score sweep is running in {self.output}: wait for it, or pass another"
                                 " --output") from err
            try:
                yield
            finally:
                lock.unlink(missing_ok=True)  # still holding the lock: no other sweep can have taken it
                remove_made(made)

    # --- proposals -----------------------------------------------------------------------------------------------
    def propose(self) -> dict[str, Any] | None:
        """The next parameter values from W&B's engine given every run so far (None: the grid is done). Random and
        bayes draws are seeded by (--seed, run index), so a sweep proposes the same runs again."""
        from lit_score.sweeps.spec import sweeps_package

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
    def run_folders(self, run: dict, logger: dict | None) -> tuple[list[str], Path]:
        """Arguments that give ``run`` its own logger folder / version (and W&B run id), and that folder."""
        name = run["name"]
        if logger is None:
            root = self.output / "runs" / name
            return [f"--trainer.default_root_dir={root}"], root / "lightning_logs" / "version_0"
        init = logger.get("init_args") or {}
        if is_wandb(logger):
            run_id = f"{self.name}-{self.state['id']}-{name}"
            args = [f"--trainer.logger.init_args.save_dir={self.output}",
                    f"--trainer.logger.init_args.name={self.name}-{name}",  # the W&B display name
                    f"--trainer.logger.init_args.version={run_id}"]  # the W&B run id
            return args, self.output / str(init.get("project") or "lightning_logs") / run_id
        missing = [k for k in ("save_dir", "name", "version") if k not in init]
        if missing:
            raise SweepError(f"the logger {logger.get('class_path')} has no {', '.join(missing)}: a sweep gives each"
                             " run its own folder through save_dir, name and version (use TensorBoard, CSV or W&B)")
        args = [f"--trainer.logger.init_args.save_dir={self.output}", "--trainer.logger.init_args.name=runs",
                f"--trainer.logger.init_args.version={name}"]
        return args, self.output / "runs" / name

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
        folder_args, run_dir = self.run_folders(run, logger)
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
            from lit_score.callbacks.resume import TrainingStopped

            raise TrainingStopped(f"sweep stopped by {_signal_name(signum)} during {run['name']} (its last checkpoint,"
                                  f" if any, is kept): run the same command again to continue", signum)
        if code != 0:
            run.update(state="failed", error=_last_error(log))
            self.echo(f"{run['name']}: failed ({run['error']}); log {log}")
        else:
            recorded = json.loads(self.metrics_path(run).read_text()) if self.metrics_path(run).is_file() else {}
            run.update(state="finished", metrics=recorded.get("last", {}))
            run["metric"] = run["metrics"].get(self.metric)
        self.save_state()

    def explain(self, run: dict, err: SweepError) -> str:
        """A run whose arguments do not parse: name the sweep parameter at fault, with the closest key there is."""
        import difflib

        message = str(err)
        for key in run["params"]:
            if f"'{_short(key)}'" in message or f"--{key}" in message:
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
        shown = ", ".join(f"{_short(k)}={v}" for k, v in run["params"].items())
        self.echo(f"[{done + 1}/{self.count}] {run['name']}: {shown}")
        self.execute(run, env, config)
        if run["state"] == "finished":
            value = run.get("metric")
            self.echo(f"{run['name']}: {self.metric} = {_fmt(value)} ({run['wall_s']:.0f} s)")
            self.check_metric()
        self.summarize()

    def environment(self) -> dict[str, str]:
        """The runs' environment: this one, with the sweep's W&B group, and W&B offline when the config logs to W&B
        and no login is found (no W&B server needed; ``wandb sync`` uploads the runs later)."""
        from lit_score.cli import wandb_credentials

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
        """Runs best first: finished with a finite metric (by the goal), then finished without one, then the rest."""
        sign = -1.0 if self.goal == "maximize" else 1.0

        def key(r: dict):
            finite = _scored(r)
            return (0 if finite else 1 if r["state"] == "finished" else 2, sign * r["metric"] if finite else 0.0,
                    r["name"])

        return sorted(self.state["runs"], key=key)

    def summarize(self) -> dict[str, Path]:
        """summary.csv, summary.md and (once a run has a finite metric) best.yaml."""
        ranked = self.ranked()
        keys = list(self.sweep["parameters"])
        rows = []
        for i, r in enumerate(ranked):
            rows.append({"rank": i + 1 if _scored(r) else "", "run": r["name"], "state": r["state"],
                         self.metric: r.get("metric"),
                         **{k: r["params"].get(k) for k in keys}, "wall_s": r.get("wall_s"),
                         "run_dir": r.get("run_dir"), "error": r.get("error") or ""})
        paths = {"csv": self.output / "summary.csv", "md": self.output / "summary.md"}
        with atomic_file(paths["csv"], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["run"])
            writer.writeheader()
            writer.writerows(rows)
        best = ranked[0] if ranked and rows[0]["rank"] == 1 else None
        if best is not None:
            paths["best"] = self.output / "best.yaml"
            if self._best_written != (best["name"], best["metric"]) or not paths["best"].is_file():
                self.write_best(best)
                self._best_written = (best["name"], best["metric"])
        write_text(paths["md"], self.markdown(rows, keys, best))
        return paths

    def markdown(self, rows: list[dict], keys: list[str], best: dict | None) -> str:
        short = _short_names(keys)
        head = ["rank", "run", self.metric, *short.values(), "state", "wall s"]
        lines = [f"# Sweep {self.name}: {self.metric} ({self.goal})", "",
                 f"{len(rows)} runs of `{self.sweep_file}` ({self.sweep['method']}); command"
                 f" `{' '.join(map(str, self.sweep['command']))}`.", "",
                 markdown_table(head, [[str(row["rank"]), row["run"], _fmt(row[self.metric]),
                                        *(_fmt(row[k]) for k in keys), row["state"],
                                        "–" if row["wall_s"] is None else f"{row['wall_s']:.0f}"] for row in rows])]
        lines += ["", "Columns: " + "; ".join(f"`{s}` = `{k}`" for k, s in short.items()) + "."]
        if best is not None:
            lines += ["", f"Best: {best['name']} ({self.metric} = {_fmt(best['metric'])}); its config:"
                          f" `lit-score fit --config {self.output / 'best.yaml'}`."]
        return "\n".join(lines) + "\n"

    def write_best(self, best: dict) -> Path:
        """The best run's resolved config without the sweep's per-run folder and history (a fresh run folder under
        the config's own logger)."""
        path = self.output / "best.yaml"
        args = fit_args(self.sweep, best["params"])
        text = yaml.safe_dump(resolve(args), sort_keys=False)
        header = (f"# Best run of sweep {self.name} ({self.sweep_file}): {best['name']}, {self.metric} ="
                  f" {_fmt(best['metric'])} ({self.goal}).\n# Its parameters: "
                  + ", ".join(f"{k}={v}" for k, v in best["params"].items())
                  + f"\n#   lit-score fit --config {path}\n")
        write_text(path, header + text)
        return path


def flat_keys(config: dict, prefix: str = "") -> list[str]:
    """Every flat dotted key of a resolved config (a list, such as trainer.callbacks, by its last item: the one
    ``--trainer.callbacks.init_args.x`` sets)."""
    keys = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if isinstance(value, list) and value and isinstance(value[-1], dict):
            value = value[-1]
        if isinstance(value, dict):
            keys += flat_keys(value, f"{key}.")
    return keys


def resolve_quietly_offline(args: list[str]) -> dict:
    """:func:`resolve` with W&B offline (only to see which logger the config uses)."""
    saved = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        return resolve(args)
    finally:
        if saved is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = saved


def _scored(run: dict) -> bool:
    """Whether a run finished with a finite metric (what ranks it)."""
    value = run.get("metric")
    return run["state"] == "finished" and isinstance(value, (int, float)) and math.isfinite(value)


def _last_error(log: Path) -> str:
    """The run's one-line error (``lit-score: error: …``), else the last line of its log."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lit-score: error:")]
    return (errors or lines or ["no output"])[-1][:300]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _short(key: str) -> str:
    return key.rpartition(".")[2]


def _short_names(keys: list[str]) -> dict[str, str]:
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


def _fmt(value) -> str:
    if value is None or value == "":
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- the command -----------------------------------------------------------------------------------------------
def sweep_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lit-score sweep", exit_on_error=False,
                            description="Run a W&B sweep file locally, with no W&B server: each run is `lit-score fit`"
                                        " with the proposed parameters; re-running continues the sweep.")
    parser.add_argument("sweep_file", type=str, help="a sweep YAML (sweeps/*.yaml)")
    parser.add_argument("--count", type=int | None, default=None,
                        help="runs in all, finished ones included (default: the sweep's run_cap, or the grid's size)")
    parser.add_argument("--output", type=str | None, default=None,
                        help="sweep folder: state, run folders, logs, summary (default runs/sweeps/<sweep name>)")
    parser.add_argument("--method", type=str | None, default=None,
                        help="grid, random or bayes instead of the sweep file's (earlier runs inform bayes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random and bayes proposals")
    parser.add_argument("--retry_failed", type=bool, default=False, help="run the failed runs of the sweep again")
    return parser


def sweep_main(argv: list[str], launch: Launcher = launch_process) -> dict[str, Path]:
    """``lit-score sweep``."""
    cfg = sweep_parser().parse_args(argv)
    from lit_score.validation import SWEEP_RULES, check_options

    check_options(cfg, SWEEP_RULES)
    sweep = LocalSweep(cfg.sweep_file, cfg.output, cfg.method, cfg.count, cfg.seed, launch)
    paths = sweep.run(retry_failed=cfg.retry_failed)
    print(paths["md"].read_text())
    print(f"wrote {paths['csv']}, {paths['md']}" + (f" and {paths['best']}" if "best" in paths else ""))
    return paths
