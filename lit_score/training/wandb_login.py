"""W&B around a fit: a login found before any run folder exists, and the run finished when the fit ends.

The sources looked at are wandb's own (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, the netrc file that ``wandb
login`` writes: ``$NETRC``, ``~/.netrc`` or ``~/_netrc``); where any exists, or where wandb can prompt, wandb decides.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from lit_score.validation import InvalidInput


def wandb_credentials() -> bool:
    """Whether wandb can log in without asking: an API key, an identity token file or a netrc entry file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    netrc = [Path(os.environ["NETRC"]).expanduser()] if os.environ.get("NETRC") else [
        Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    return any(path.is_file() for path in netrc)


def check_wandb_login(loggers) -> None:
    """Refuse an online WandbLogger that wandb could not log in, before any run folder exists.

    Without credentials and without a terminal to ask on, ``wandb.init`` raises deep inside Lightning's setup.
    Offline and disabled runs need no login.
    """
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        mode = str(logger._wandb_init.get("mode") or os.environ.get("WANDB_MODE") or "online").lower()
        if logger._offline or mode in ("offline", "dryrun", "disabled"):
            continue
        if wandb_credentials() or (sys.stdin is not None and sys.stdin.isatty()):
            continue
        raise InvalidInput("the WandbLogger has no API key and no terminal to ask for one: run `wandb login` or set"
                           " WANDB_API_KEY, or log offline with WANDB_MODE=offline (upload later with `wandb sync`)")


def finish_wandb(loggers, exit_code: int) -> None:
    """Finish the W&B run a fit's WandbLogger started (on the rank that has one): Lightning leaves it open until the
    process exits, and the next WandbLogger of the same process (the next run of a ``compare``) would log into it."""
    if any(isinstance(logger, WandbLogger) for logger in loggers) and "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=exit_code)
