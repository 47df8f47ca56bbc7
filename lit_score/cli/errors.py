"""How a command fails: one line ``lit-score: error: …`` and an exit status (set ``LIT_SCORE_DEBUG=1`` for the
traceback). :func:`reported` turns what a command raises into that line:

- bad input (``ValueError`` and the lit-score errors below it, an ``OSError``, a diverged run, an argument error): its
  one-line cause; an argument error adds ``(see `lit-score <command> --help`)`` and exits 2, the rest 1;
- Lightning's ``MisconfigurationException``: its text, with a hint when a GPU was asked for where there is none (1);
- a stop (a signal, ``TrainingStopped``): why it stopped (the stop's own exit status); Ctrl-C elsewhere: 130;
- an error of wandb: its one line, with the hint to log offline (1).
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.utilities.exceptions import MisconfigurationException

from lit_score.callbacks.ranks import RanksDisagreeError
from lit_score.callbacks.resume import NonFiniteStepsError, TrainingStopped
from lit_score.checkpointing import NonFiniteWeightsError
from lit_score.interrupts import Interrupted
from lit_score.models import NonFiniteLossError
from lit_score.training import one_line
from lit_score.validation import describe_os_error

#: the commands ``lit-score --help`` lists, with their one-line descriptions
SUBCOMMANDS = {
    "fit": "train a model (LightningCLI: --config, --trainer.*, --model.*, --data.*)",
    "validate": "held-out loss of a checkpoint (LightningCLI)",
    "test": "test-split loss of a checkpoint (LightningCLI)",
    "predict": "generate one sample per held-out index and write them under <run>/predictions (LightningCLI)",
    "sample": "draw samples from a checkpoint with any sampler: PNG + .npz with NFE",
    "evaluate": "FID / KID / IS / PR, toy distances with floors and bits/dim of a checkpoint, with the protocol",
    "compare": "train and/or evaluate several families on one protocol and write a report",
    "encode": "probability-flow ODE latents of data (and their decoding), with a latent interpolation grid",
    "sweep": "run a W&B sweep file (sweeps/*.yaml) locally, no W&B server: resumable, ranked summary, best config",
    "pairs": "draw reflow pairs (noise, ODE sample) of a checkpoint into resumable shards, for rectified flow",
    "grid": "a time grid for a checkpoint (kl_optimal, fitted to a sampler, Watson's DDPM strides) as a grid file",
}
BAD_INPUT = (ValueError, OSError, NonFiniteLossError, NonFiniteStepsError, NonFiniteWeightsError, RanksDisagreeError,
             ArgumentError)


def _debug() -> bool:
    return bool(os.environ.get("LIT_SCORE_DEBUG"))


def _misconfiguration(err: MisconfigurationException) -> str:
    text = " ".join(str(err).split())
    hint = (" — on this machine use --trainer.accelerator cpu (or auto) and drop GPU presets such as"
            " configs/trainer/gpu.yaml" if any(w in text for w in ("not available", "CUDA", "gpu backend")) else "")
    return f"{text}{hint}"


def _bad_input(err: BaseException, argv: list[str]) -> tuple[str, int]:
    command = f"lit-score {argv[0]}" if argv and argv[0] in SUBCOMMANDS else "lit-score"
    hint = f" (see `{command} --help`)" if isinstance(err, ArgumentError) else ""
    text = describe_os_error(err) if isinstance(err, OSError) else one_line(err)
    return f"{text}{hint}", 1 if not isinstance(err, ArgumentError) else 2


@contextmanager
def reported(argv: list[str]) -> Iterator[None]:
    """Run the command ``argv`` names inside: what it raises becomes one line on stderr and ``SystemExit``."""
    try:
        yield
    except MisconfigurationException as err:
        if _debug():
            raise
        print(f"lit-score: error: {_misconfiguration(err)}", file=sys.stderr)
        raise SystemExit(1) from err
    except (TrainingStopped, Interrupted) as err:
        print(f"lit-score: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from err
    except KeyboardInterrupt as err:  # Ctrl-C outside a command's own handlers
        print(f"lit-score: {Interrupted(2)}", file=sys.stderr)
        raise SystemExit(130) from err
    except BAD_INPUT as err:
        if _debug():
            raise
        text, code = _bad_input(err, argv)
        print(f"lit-score: error: {text}", file=sys.stderr)
        raise SystemExit(code) from err
    except Exception as err:
        if type(err).__module__.startswith("wandb.") and not _debug():
            print(f"lit-score: error: wandb: {one_line(err)} (or log offline with WANDB_MODE=offline)", file=sys.stderr)
            raise SystemExit(1) from err
        raise
