"""Slow quality run (``pytest -m slow``): the short-run EBM config, trained as written, generates from noise.

Issue 12's bar: fresh chains from uniform noise within 2x the data-vs-data energy-distance floor on moons (the
persistent toy.yaml's fresh chains sit at 11.9x), as the median over five sampling seeds of 2,000 chains. Measured:
passes in 11 minutes on 2 busy CPU cores (training ~4 minutes when the machine is idle); per-seed ratios of the
trained checkpoint 1.04 / 1.10 / 1.18 / 1.96 for seeds 0-3 (and 2.38 for the evaluate command's seed-0 batches).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from lit_score.cli import load_model, main
from lit_score.data.toy import TOY_DISTRIBUTIONS
from lit_score.metrics.distances import distance_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_short_run_ebm_config_generates_from_noise_within_twice_the_floor(tmp_path):
    start = time.perf_counter()
    main(["fit", "--config", str(ROOT / "configs/ebm/toy_shortrun.yaml"), "--trainer.logger.init_args.save_dir",
          str(tmp_path), "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"])
    seconds = time.perf_counter() - start
    model = load_model(next(tmp_path.rglob("last.ckpt")))
    assert model.sample_start == "noise" and model.replay_buffer is None
    # one 2,000-sample draw's distance varies by seed (measured 1.04-2.38x on one checkpoint): the median of five
    ratios = sorted(distance_report(model.sample(2000, generator=torch.Generator().manual_seed(seed)),
                                    TOY_DISTRIBUTIONS["moons"])["energy_distance"]["ratio"] for seed in range(5))
    assert ratios[2] <= 2.0, f"fresh chains at {ratios}x the floor (median {ratios[2]:.2f}) after {seconds:.0f} s"
