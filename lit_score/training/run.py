"""Running the LightningCLI subcommands from Python: what ``lit-score fit`` (and validate / test / predict) does,
for the command and for the orchestrators (``compare`` trains through :func:`fit`, a sweep resolves its runs'
configs through :class:`~lit_score.training.lightning_cli.LitScoreCLI` with ``run=False``)."""

from __future__ import annotations

import warnings

from lit_score.training.arguments import check_config_files
from lit_score.training.lightning_cli import LitScoreCLI
from lit_score.validation import check_finite_argv


def run_lightning(args: list[str] | None = None) -> LitScoreCLI:
    """``fit`` / ``validate`` / ``test`` / ``predict`` through :class:`LitScoreCLI` (``args`` None: ``sys.argv``)."""
    with warnings.catch_warnings():
        # compare and sweep run `fit` in-process with their own argv: Lightning's warning that both args and
        # sys.argv were given is about exactly that, and says nothing to the user.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return LitScoreCLI(args=args)


def fit(argv: list[str]) -> None:
    """``lit-score fit <argv>`` in this process, after the checks the command runs on every command line (its config
    files exist and parse, no number is NaN or infinite); errors are raised, not printed."""
    args = ["fit", *argv]
    check_config_files(args)
    check_finite_argv(args)
    run_lightning(args)
