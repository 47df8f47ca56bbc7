"""The ``lit-score`` command: one module per command, dispatched from :func:`main`.

    lit-score fit --config configs/ddpm/toy.yaml
    lit-score sample --ckpt_path runs/ddpm_toy/version_0/checkpoints/last.ckpt --num_samples 2000 \\
        --sampler.class_path lit_score.samplers.DDIM --sampler.init_args.num_steps 50

=============================  =====================================================================================
command                        module
=============================  =====================================================================================
fit, validate, test, predict   :mod:`lit_score.training` (the LightningCLI application, which ``compare`` and
                               ``sweep`` use too)
sample                         :mod:`lit_score.cli.sample`
encode                         :mod:`lit_score.cli.encode`
evaluate                       :mod:`lit_score.cli.evaluate`
compare                        :mod:`lit_score.cli.compare`
sweep                          :mod:`lit_score.cli.sweep`
grid                           :mod:`lit_score.cli.grid`
pairs                          :mod:`lit_score.cli.pairs`
(shared)                       :mod:`lit_score.cli.options` (condition options, one parse), :mod:`lit_score.cli.errors`
                               (how a command fails)
=============================  =====================================================================================

Bad input ends with one line ``lit-score: error: …`` and exit status 1 (set LIT_SCORE_DEBUG=1 for the traceback).
Nothing in lit-score imports this package; the names users imported from ``lit_score.cli`` before it was split
(``main``, ``load_model``, ``LitScoreCLI`` …) are re-exported here.
"""

from __future__ import annotations

import difflib
import io
import os
import sys
from argparse import ArgumentError
from contextlib import redirect_stderr
from pathlib import Path

from lit_score.atomic import quiet_full_disk_in_threads
from lit_score.cli.compare import compare_main
from lit_score.cli.encode import encode_main, encode_parser
from lit_score.cli.errors import SUBCOMMANDS, reported
from lit_score.cli.evaluate import evaluate_main, evaluate_parser
from lit_score.cli.grid import grid_main
from lit_score.cli.options import add_condition_arguments, apply_condition
from lit_score.cli.pairs import pairs_main
from lit_score.cli.sample import build_edit, sample_main, sample_parser
from lit_score.cli.sweep import sweep_main, sweep_parser
from lit_score.interrupts import stop_on_signals
from lit_score.loading.checkpoint import checkpoint_class_path, load_model
from lit_score.loading.sampler import check_sampler, resolve_sampler
from lit_score.training import (
    LitScoreCLI,
    LitScoreSaveConfig,
    check_config_files,
    check_wandb_login,
    did_you_mean,
    one_line,
    resume_differences,
    run_lightning,
    wandb_credentials,
)
from lit_score.validation import InvalidInput, check_finite_argv

UserError = InvalidInput  # the name of a bad-input error before issue 24 (one class: lit_score.validation's)
#: the commands outside LightningCLI, and whether a stop signal ends them through ``Interrupted`` (a sweep passes
#: its signals on to the run it launched instead)
COMMANDS = {"sample": (sample_main, True), "evaluate": (evaluate_main, True), "encode": (encode_main, True),
            "compare": (compare_main, True), "sweep": (sweep_main, False),
            "pairs": (pairs_main, True), "grid": (grid_main, True)}


def print_help(file=sys.stdout) -> None:
    """``lit-score --help``: every subcommand, the ones LightningCLI does not know included."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: lit-score <subcommand> [options]   (lit-score <subcommand> --help for its options)", "",
             "subcommands:"] + [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    print("\n".join(lines), file=file)


def dispatch(argv: list[str], args: list[str] | None) -> None:
    """Run the subcommand ``argv[0]`` names (``args``: what :func:`main` was given, None for ``sys.argv``)."""
    if not argv or argv[0] in ("-h", "--help"):
        print_help(sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(2)
        return
    if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ArgumentError(None, f"unknown subcommand {argv[0]!r}: {hint}choose from {', '.join(SUBCOMMANDS)}")
    if argv[0] not in COMMANDS:
        run_lightning(args)
        return
    command, under_signals = COMMANDS[argv[0]]
    if not under_signals:
        command(argv[1:])
        return
    with stop_on_signals():
        command(argv[1:])


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lit-score``."""
    argv = list(sys.argv[1:] if args is None else args)
    with reported(argv):
        check_config_files(argv)
        check_finite_argv(argv)
        quiet_full_disk_in_threads()
        dispatch(argv, args)


def launch_in_process(argv: list[str], log: Path, env: dict[str, str]) -> tuple[int, int | None]:
    """A sweep's :data:`~lit_score.sweeps.launch.Launcher` that runs :func:`main` in this process (tests: no
    interpreter start-up per run), with ``env`` set and stderr appended to ``log``."""
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


__all__ = [
    "COMMANDS",
    "SUBCOMMANDS",
    "LitScoreCLI",
    "LitScoreSaveConfig",
    "UserError",
    "add_condition_arguments",
    "apply_condition",
    "build_edit",
    "check_config_files",
    "check_sampler",
    "check_wandb_login",
    "checkpoint_class_path",
    "compare_main",
    "did_you_mean",
    "encode_main",
    "encode_parser",
    "evaluate_main",
    "evaluate_parser",
    "launch_in_process",
    "load_model",
    "main",
    "one_line",
    "print_help",
    "resolve_sampler",
    "resume_differences",
    "sample_main",
    "sample_parser",
    "sweep_main",
    "sweep_parser",
    "wandb_credentials",
]
