"""Sweep files (W&B's schema, the agent's command line, the CLI keys and metric they name), the W&B logger preset,
and ``lit-score sweep`` (local proposals, resume, summary, best config, one-line errors)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import yaml

from lit_score.cli import launch_in_process, main, sweep_main
from lit_score.sweeps.config import resolve
from lit_score.sweeps.local import LocalSweep
from lit_score.sweeps.spec import agent_argv, agent_macros, agent_values, fit_args, load_sweep, sweeps_package

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
# what each family's sweep must search (issue 8)
SEARCHED = {
    "ncsn_toy": ["process.init_args.sigma_max", "process.init_args.num_levels", "optimizer.init_args.lr"],
    "ddpm_toy": ["process.init_args.schedule", "optimizer.init_args.lr", "callbacks.init_args.decay"],
    "sde_toy": ["process.class_path", "likelihood_weighting"],
    "ebm_toy": ["sampler.init_args.step_size", "sampler.init_args.noise_scale", "loss.init_args.alpha", "reuse_prob"],
    "flow_toy": ["optimizer.init_args.lr", "ot_coupling"],
}
# test-only: cheap samplers and small batches, so a fast_dev_run of each family takes seconds, not minutes
CHEAP = {
    "ncsn_toy": ["--model.init_args.sampler.init_args.steps_per_level=1"],
    "ddpm_toy": ["--model.init_args.sampler=lit_score.samplers.Ancestral",
                 "--model.init_args.sampler.init_args.num_steps=5"],
    "sde_toy": ["--model.init_args.sampler.init_args.num_steps=5"],
    "ebm_toy": ["--model.init_args.sampler.init_args.num_steps=5"],
    "flow_toy": ["--model.init_args.sampler.init_args.num_steps=5"],
    "flow_toy_short": ["--model.init_args.sampler.init_args.num_steps=5"],
}
SLOW_FAST_DEV_RUNS = ("ncsn_toy", "sde_toy", "ebm_toy", "ddpm_toy", "flow_toy_short")


@pytest.fixture(autouse=True)
def _at_the_root(monkeypatch):
    """Sweep commands name configs relative to the repository root (where `wandb agent` runs); W&B stays local."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


def first_proposal(path: Path, seed: int = 0) -> tuple[dict, dict]:
    sweep = LocalSweep(path, output="/nonexistent", seed=seed)
    sweep.state = {"runs": []}
    return sweep.sweep, sweep.propose()


def at_key(config: dict, key: str):
    """The value at a flat dotted CLI key; a list (trainer.callbacks) is entered at its last item, as jsonargparse
    applies ``--trainer.callbacks.init_args.x`` to the last callback."""
    node = config
    for part in key.split("."):
        if isinstance(node, list):
            node = node[-1]
        node = node[part]
    return node


# --- the sweep files -------------------------------------------------------------------------------------------
def test_there_is_one_sweep_per_family():
    assert {p.stem for p in SWEEPS} >= set(SEARCHED)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_a_valid_wandb_sweep_of_cli_keys(path):
    raw = yaml.safe_load(path.read_text())
    assert sweeps_package().schema_violations_from_proposed_config(raw) == []
    sweep = load_sweep(path)  # and what lit-score adds: lit-score fit … ${args}, flat keys, a metric
    command = sweep["command"]
    assert command[:2] == ["lit-score", "fit"] and command[-1] == "${args}"
    assert command.index("${args}") > max(i for i, c in enumerate(command) if c == "--config")
    assert path.read_text().startswith("#") and "why" in path.read_text()  # the header says what and why
    for wanted in SEARCHED.get(path.stem, []):
        assert any(key.endswith(wanted) for key in sweep["parameters"]), wanted


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_the_metric_is_what_the_config_logs_under_that_name(path):
    """toy data → SampleQuality's two-sample distances (val/energy_distance, …); images → val/fid, val/kid."""
    from lit_score.callbacks.quality import DISTANCE_METRICS, IMAGE_METRICS

    sweep, params = first_proposal(path)
    config = resolve(fit_args(sweep, params))
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "lit_score.callbacks.SampleQuality" in callbacks
    images = not config["data"]["class_path"].endswith(("Toy2D", "GaussianMixture"))
    logged = {f"val/{m}" for m in (IMAGE_METRICS if images else DISTANCE_METRICS)}
    assert sweep["metric"]["name"] in logged


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_print_config_with_the_agents_argv_sets_every_parameter(path, capsys):
    sweep, params = first_proposal(path, seed=1)
    argv = agent_argv(sweep, params)
    assert argv[:2] == ["lit-score", "fit"]
    assert argv[-len(params):] == [f"--{k}={v}" for k, v in params.items()]  # ${args}: --key=value, last
    with pytest.raises(SystemExit) as info:
        main([*argv[1:], "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in params.items():
        got = at_key(printed, key)
        assert got == value or (isinstance(value, float) and math.isclose(got, value, rel_tol=1e-12)), key


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_FAST_DEV_RUNS else p
                                  for p in SWEEPS], ids=lambda p: p.stem)
def test_fast_dev_run_with_a_sampled_parameter_set_logs_the_metric(path, tmp_path):
    sweep, params = first_proposal(path, seed=2)
    history = tmp_path / "metrics.json"
    main(["fit", *fit_args(sweep, params), *CHEAP.get(path.stem, []), "--data.init_args.batch_size=16",
          "--trainer.fast_dev_run=true", f"--trainer.logger.init_args.save_dir={tmp_path}",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks+=lit_score.sweeps.MetricHistory",
          f"--trainer.callbacks.init_args.path={history}"])
    last = json.loads(history.read_text())["last"]
    assert math.isfinite(last[sweep["metric"]["name"]])


# --- the agent's command line, pinned against wandb's own code ------------------------------------------------
PARAMS = {"model.init_args.optimizer.init_args.lr": 1e-05, "model.init_args.ot_coupling": True,
          "model.init_args.reuse_prob": 0.95, "model.init_args.process.init_args.num_levels": 25,
          "model.init_args.process.class_path": "lit_score.processes.VE", "model.init_args.flag": False,
          "trainer.callbacks.init_args.decay": 0.0, "data.init_args.shape": [1, 2]}


def test_the_agents_argv_is_wandbs():
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    theirs = utils.create_sweep_command_args({"args": agent_values(PARAMS)})
    ours = agent_macros(PARAMS)
    for name, value in theirs.items():
        if name != "args_dict":
            assert ours[name] == value, name
    assert ours["args"][:2] == ["--model.init_args.optimizer.init_args.lr=1e-05", "--model.init_args.ot_coupling=True"]
    command = ["${env}", "lit-score", "fit", "--config", "${envvar:SWEEP_CFG}", "${args}"]
    import os

    os.environ["SWEEP_CFG"] = "configs/flow/toy.yaml"
    try:
        filled = utils.create_sweep_command(list(command))
        argv = agent_argv({"command": command}, PARAMS)
    finally:
        del os.environ["SWEEP_CFG"]
    assert filled[4] == "configs/flow/toy.yaml"
    assert argv == ["/usr/bin/env", "lit-score", "fit", "--config", "configs/flow/toy.yaml", *ours["args"]]


def test_rendered_values_parse_back_as_the_same_values(capsys):
    """str(value) is what the agent writes: 1e-05 (no dot), True, [1, 2] must reach the run as float, bool, list."""
    flags = ["--model.init_args.optimizer.init_args.lr=1e-05", "--model.init_args.ot_coupling=True",
             "--trainer.max_epochs=3"]
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/flow/toy.yaml", *flags, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert at_key(printed, "model.init_args.optimizer.init_args.lr") == 1e-05
    assert at_key(printed, "model.init_args.ot_coupling") is True and printed["trainer"]["max_epochs"] == 3


# --- proposals ---------------------------------------------------------------------------------------------------
def test_random_and_bayes_proposals_are_seeded_and_bayes_learns_from_finished_runs():
    ebm = ROOT / "sweeps/ebm_toy.yaml"
    a, b, c = (LocalSweep(ebm, output="/nonexistent", seed=s) for s in (0, 0, 1))
    for s in (a, b, c):
        s.state = {"runs": []}
    assert a.propose() == b.propose() != c.propose()
    a.state["runs"] = [{"name": f"run_{i:03d}", "params": a.propose() if i == 0 else c.propose(), "state": "finished",
                        "metric": float(i)} for i in range(3)]
    proposal = a.propose()  # the GP search of W&B's engine, offline
    assert set(proposal) == set(a.sweep["parameters"])
    step = proposal["model.init_args.sampler.init_args.step_size"]
    assert 0.002 <= step <= 0.05


def test_the_grid_is_proposed_once_and_then_ends():
    sweep = LocalSweep(ROOT / "sweeps/flow_toy.yaml", output="/nonexistent")
    sweep.state = {"runs": []}
    seen = []
    while (params := sweep.propose()) is not None:
        seen.append(params)
        sweep.state["runs"].append({"name": str(len(seen)), "params": params, "state": "finished", "metric": 1.0})
    assert len(seen) == sweep.count == 8 and len({json.dumps(p, sort_keys=True) for p in seen}) == 8


# --- lit-score sweep ----------------------------------------------------------------------------------------------
def tiny_sweep(tmp_path: Path, goal: str = "minimize", extra: dict | None = None) -> Path:
    """Flow matching on moons, 2 epochs of 2 batches, 100-sample quality at each validation: seconds per run."""
    callbacks = ("[{class_path: lit_score.callbacks.SampleQuality, init_args: {num_samples: 100, batch_size: 100}},"
                 " {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true}}]")
    sweep = {"name": "tiny", "method": "grid", "metric": {"name": "val/energy_distance", "goal": goal},
             "parameters": {"model.init_args.optimizer.init_args.lr": {"values": [0.001, 0.004]}},
             "command": ["lit-score", "fit", "--config", str(ROOT / "configs/flow/toy.yaml"), "--trainer.max_epochs=2",
                         "--trainer.limit_train_batches=2",
                         "--trainer.limit_val_batches=0.04",  # 1 of 32 batches (a flag's "1" is read as 1.0: all)
                         "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
                         "--trainer.num_sanity_val_steps=0", "--model.init_args.sampler.init_args.num_steps=5",
                         "--data.init_args.batch_size=64",
                         f"--trainer.callbacks={callbacks}", "${args}"], **(extra or {})}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_a_local_sweep_resumes_an_interrupted_run_and_ranks_the_runs(tmp_path):
    from lit_score.callbacks.resume import TrainingStopped

    path, output = tiny_sweep(tmp_path), tmp_path / "out"
    launched: list[list[str]] = []

    def crash_in_second_run(argv, log, env):
        """run_001's first attempt trains one epoch of two, then the sweep is stopped (as by a Ctrl-C)."""
        launched.append(argv)
        if len(launched) == 2:
            launch_in_process([*argv, "--trainer.max_epochs=1"], log, env)
            return 130, signal.SIGINT
        return launch_in_process(argv, log, env)

    with pytest.raises(TrainingStopped) as info:
        sweep_main([str(path), "--output", str(output)], launch=crash_in_second_run)
    assert info.value.exit_code == 130
    state = json.loads((output / "sweep.json").read_text())
    assert [r["state"] for r in state["runs"]] == ["finished", "running"]
    last = output / "runs/run_001/checkpoints/last.ckpt"
    assert last.is_file()

    paths = sweep_main([str(path), "--output", str(output)], launch=crash_in_second_run)
    assert len(launched) == 3  # run_000 was not run again
    assert f"--ckpt_path={last}" in launched[2]
    state = json.loads((output / "sweep.json").read_text())
    assert [r["state"] for r in state["runs"]] == ["finished", "finished"]
    rows = (output / "summary.csv").read_text().splitlines()
    metrics = sorted(r["metric"] for r in state["runs"])
    assert rows[1].startswith("1,") and str(metrics[0]) in rows[1] and str(metrics[1]) in rows[2]
    assert "| 1 |" in paths["md"].read_text()
    history = json.loads((output / "metrics/run_001.json").read_text())
    assert [r["epoch"] for r in history["rows"]] == [0, 1]  # the resumed run kept its first epoch's row
    # best.yaml is the best run's config, ready for `lit-score fit --config best.yaml`
    best = min(state["runs"], key=lambda r: r["metric"])
    assert resolve(["--config", str(paths["best"])]) == resolve(fit_args(load_sweep(path), best["params"]))


def test_maximize_ranks_the_largest_first(tmp_path):
    path, output = tiny_sweep(tmp_path, goal="maximize"), tmp_path / "out"
    sweep = LocalSweep(path, output=output)
    sweep.load_state()
    sweep.state["runs"] = [
        {"name": "run_000", "params": {"model.init_args.optimizer.init_args.lr": 0.001}, "state": "finished",
         "metrics": {"val/energy_distance": 0.1}},
        {"name": "run_001", "params": {"model.init_args.optimizer.init_args.lr": 0.004}, "state": "failed",
         "error": "lit-score: error: loss is not finite"},
        {"name": "run_002", "params": {"model.init_args.optimizer.init_args.lr": 0.002}, "state": "finished",
         "metrics": {"val/energy_distance": 0.3}}]
    sweep.check_metric()
    assert [r["name"] for r in sweep.ranked()] == ["run_002", "run_000", "run_001"]


def one_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-score: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_sweeps_are_one_line(tmp_path, capsys):
    assert "does not exist" in one_error(["sweep", str(tmp_path / "missing.yaml")], capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grod\nparameters: {a: {values: [1]}}\n")
    assert "not a valid W&B sweep" in one_error(["sweep", str(bad)], capsys)
    nested = tiny_sweep(tmp_path, extra={"parameters": {"model": {"parameters": {"x": {"values": [1]}}}}})
    assert "nested" in one_error(["sweep", str(nested)], capsys)
    typo = tiny_sweep(tmp_path, extra={"parameters": {"model.init_args.optimizer.init_args.lrr": {"values": [0.1]}}})
    line = one_error(["sweep", str(typo), "--output", str(tmp_path / "typo")], capsys)
    assert "lrr" in line and "did you mean" in line
    assert not (tmp_path / "typo/runs").exists()  # refused before any run started
    random = tiny_sweep(tmp_path, extra={"method": "random"})
    assert "--count" in one_error(["sweep", str(random)], capsys)


def test_a_metric_no_run_logs_is_one_line(tmp_path, capsys):
    path, output = tiny_sweep(tmp_path, extra={"metric": {"name": "val/fid", "goal": "minimize"}}), tmp_path / "out"
    sweep = load_sweep(path)
    output.mkdir()
    (output / "sweep.json").write_text(json.dumps({
        "name": "tiny", "id": "x", "parameters": sweep["parameters"], "command": sweep["command"],
        "runs": [{"name": "run_000", "params": {"model.init_args.optimizer.init_args.lr": 0.001},
                  "state": "finished", "metrics": {"val/loss": 1.0, "val/energy_distance": 0.1}}]}))
    line = one_error(["sweep", str(path), "--output", str(output)], capsys)
    assert "val/fid was never logged" in line and "val/energy_distance" in line


# --- the W&B logger preset ----------------------------------------------------------------------------------------
def test_the_wandb_preset_logs_a_metric_table_images_and_the_config_offline(tmp_path, monkeypatch):
    import wandb

    wandb.teardown()  # wandb keeps its settings (WANDB_MODE=disabled of the tests before) in a process singleton
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(["fit", "--config", "configs/flow/toy.yaml", "--config", "configs/logger/wandb.yaml",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_epochs=1",
          "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0.25", "--trainer.check_val_every_n_epoch=1",
          "--trainer.enable_progress_bar=false", "--model.init_args.sampler.init_args.num_steps=5"])
    assert wandb.run is None  # the fit finished its W&B run: the next logger of this process starts its own
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    (table,) = (offline / "files/media/table").glob("metrics_*.table.json")
    assert json.loads(table.read_text())["columns"][:3] == ["epoch", "step", "val/loss"]
    assert list((offline / "files/media/images").glob("samples_*.png"))
    (run,) = [p for p in (tmp_path / "lit-score").iterdir() if p.is_dir()]
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()


# --- the real command, in separate processes (slow) ---------------------------------------------------------------
def console(argv: list[str], cwd: Path = ROOT, **env: str):
    import os
    import subprocess
    import sys

    environ = {**os.environ, **env}
    return subprocess.Popen([sys.executable, "-m", "lit_score.cli", *argv], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_a_checkpoint_and_the_same_command_resumes_it(tmp_path):
    import time

    path, output = tiny_sweep(tmp_path), tmp_path / "out"
    text = path.read_text().replace("max_epochs=2", "max_epochs=40").replace("limit_train_batches=2",
                                                                             "limit_train_batches=20")
    path.write_text(text)
    argv = ["sweep", str(path), "--output", str(output), "--count", "1"]
    proc = console(argv)
    log = output / "logs/run_000.log"
    deadline = time.time() + 300
    while not (log.is_file() and "Total params" in log.read_text()) and time.time() < deadline:
        time.sleep(1)
    time.sleep(5)  # training has started: GracefulStop holds SIGINT
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "run the same command again" in out.splitlines()[-1]
    state = json.loads((output / "sweep.json").read_text())
    assert state["runs"][0]["state"] == "running" and (output / "runs/run_000/checkpoints/last.ckpt").is_file()

    proc = console(argv)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "run_000: resuming from" in out
    state = json.loads((output / "sweep.json").read_text())
    assert [r["state"] for r in state["runs"]] == ["finished"]
    assert (output / "runs/run_000/config_resume_1.yaml").is_file()  # the same run folder, continued


@pytest.mark.slow
def test_a_wandb_sweep_runs_locally_offline_without_a_login(tmp_path):
    """The sweep's W&B logger with no login and no WANDB_MODE: the runs log offline, one W&B run each."""
    path, output = tiny_sweep(tmp_path), tmp_path / "out"
    sweep = yaml.safe_load(path.read_text())
    sweep["command"][4:4] = ["--config", str(ROOT / "configs/logger/wandb.yaml")]
    path.write_text(yaml.safe_dump(sweep))
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "lit_score.cli", "sweep", str(path), "--output", str(output)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "log offline" in result.stdout
    assert len(list((output / "wandb").glob("offline-run-*"))) == 2
    state = json.loads((output / "sweep.json").read_text())
    assert all(Path(r["run_dir"]).parent.name == "lit-score" for r in state["runs"])
    assert (output / "best.yaml").is_file()


def test_sweep_is_listed_and_has_its_own_help(capsys):
    main(["--help"])
    assert "\n  sweep " in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None) and "--count" in out and "--output" in out and "sweep_file" in out
