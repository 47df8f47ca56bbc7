"""``lit-score sweep``: the command line over :class:`lit_score.sweeps.local.LocalSweep`.

    lit-score sweep sweeps/flow_toy.yaml                      # the whole grid
    lit-score sweep sweeps/ebm_toy.yaml --count 12            # bayes / random: 12 runs in all
    lit-score sweep sweeps/flow_toy.yaml                      # again: continues where it stopped
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from lit_score.sweeps.launch import Launcher, launch_process
from lit_score.sweeps.local import LocalSweep
from lit_score.validation import SWEEP_RULES, check_options


def sweep_parser() -> ArgumentParser:
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
    check_options(cfg, SWEEP_RULES)
    sweep = LocalSweep(cfg.sweep_file, cfg.output, cfg.method, cfg.count, cfg.seed, launch)
    paths = sweep.run(retry_failed=cfg.retry_failed)
    print(paths["md"].read_text())
    print(f"wrote {paths['csv']}, {paths['md']}" + (f" and {paths['best']}" if "best" in paths else ""))
    return paths
