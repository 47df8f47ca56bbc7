"""Every family under DDP with two CPU processes (gloo), as a user launches it (issue 8):

    lit-score fit --config configs/<family>/toy.yaml --trainer.accelerator cpu --trainer.devices 2 \
        --trainer.strategy ddp

What is shown per family: the run finishes (no hang, one checkpoint), both ranks end with bit-identical weights
(``RankSync``'s float64 checksums, compared across ranks at the end), and the training loss follows a single-process
run over the same global batch (2 x 250 vs 1 x 500). The two runs see different noise draws and data orders, so the
curves are compared statistically: the mean of the last 20 logged losses of each run, whose difference must stay
within 4 standard errors of that difference (the steps' losses treated as independent) and within 15 % relative.
DDPM runs in the default suite; the other four families are ``slow`` (about a minute each on 2 cores).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["ddpm", "ncsn", "sde", "ebm", "flow"]
STEPS = 40
# every family's toy config, shortened: 40 steps, logging every step, no sample grids or quality draws
CSV = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "%s"}}'
CALLBACKS = ('[{"class_path": "lit_score.callbacks.RankSync"},'
             ' {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]')


def config(family: str) -> Path:
    return ROOT / "configs" / family / ("vp_toy.yaml" if family == "sde" else "toy.yaml")


def fit(tmp: Path, family: str, name: str, devices: int, batch_size: int) -> Path:
    argv = ["fit", "--config", config(family), "--trainer.accelerator", "cpu", "--trainer.devices", devices,
            "--trainer.strategy", "ddp" if devices > 1 else "auto", "--trainer.max_steps", STEPS,
            "--trainer.max_epochs", -1, "--trainer.limit_val_batches", 0, "--trainer.log_every_n_steps", 1,
            "--trainer.enable_progress_bar", "false", "--trainer.logger", CSV % name, "--trainer.callbacks", CALLBACKS,
            "--data.init_args.batch_size", batch_size]
    if family == "ddpm":
        argv += ["--model.init_args.process.init_args.num_timesteps", 100]
    if family == "ebm":
        argv += ["--model.init_args.buffer_size", 1000, "--model.init_args.sampler.init_args.num_steps", 10]
    result = subprocess.run([sys.executable, "-m", "lit_score.cli", *map(str, argv)], cwd=tmp, capture_output=True,
                            text=True, env={**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / name / "version_0"


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def check_family(tmp_path: Path, family: str) -> dict:
    ddp = fit(tmp_path, family, "ddp", 2, 250)
    single = fit(tmp_path, family, "single", 1, 500)
    sums = json.loads((ddp / "checkpoints" / "rank_checksums.json").read_text())
    assert sums["world_size"] == 2 and sums["global_step"] == STEPS
    assert sums["checksums"][0] == sums["checksums"][1] and sums["spread"] == 0.0  # bit-identical replicas
    assert [p.name for p in (ddp / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]  # written once
    a, b = losses(ddp)[-20:], losses(single)[-20:]
    difference = statistics.mean(a) - statistics.mean(b)
    error = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    scale = abs(statistics.mean(b)) + statistics.stdev(b)  # CD losses hover around 0: compare to their spread too
    assert abs(difference) < 4 * error or abs(difference) < 0.15 * scale, (family, difference, error, scale)
    print(f"{family}: mean of the last 20 losses, DDP 2x250 {statistics.mean(a):.4g}, single 1x500"
          f" {statistics.mean(b):.4g}, difference {difference:.3g} (standard error {error:.3g})")
    return {"ddp": statistics.mean(a), "single": statistics.mean(b), "se": error}


def test_ddpm_under_ddp_keeps_equal_replicas_and_the_single_process_loss(tmp_path):
    check_family(tmp_path, "ddpm")


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "ddpm"])
def test_every_family_under_ddp(tmp_path, family):
    check_family(tmp_path, family)
