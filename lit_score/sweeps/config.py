"""The resolved ``lit-score fit`` config of a sweep's run, parsed and instantiated in this process (nothing trained),
and what a sweep needs of it: its one logger, checkpoints in the run's own folder, its flat keys.

=================================  ================================================================================
name                               what it does
=================================  ================================================================================
:func:`resolve`                    the run's config as a dict, after LightningCLI parsed it and built the model, data
                                   and trainer (an unknown key, a bad value or a missing W&B login found before any
                                   run starts)
:func:`resolve_quietly_offline`    the same with W&B offline (only to see which logger the config uses)
:func:`logger_of`, :func:`is_wandb`  the run's one logger, and whether it logs to W&B
:func:`check_checkpoint_folders`   refuses a ModelCheckpoint ``dirpath`` every run would share
:func:`run_folders`                the arguments that give a run its own logger folder (and W&B run id)
:func:`flat_keys`                  every flat dotted key of a resolved config (for did-you-mean hints)
=================================  ================================================================================
"""

from __future__ import annotations

import io
import logging
import os
from argparse import ArgumentError
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lit_score.sweeps.spec import SweepError
from lit_score.training import LitScoreCLI, check_config_files, one_line


def resolve(args: list[str]) -> dict:
    """The resolved ``lit-score fit`` config of ``args`` as a dict, after LightningCLI parsed it and built the model,
    data and trainer (so an unknown key, a bad value or a missing wandb login is found before any run starts)."""
    check_config_files(args)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err), _quiet("lightning.pytorch", "lightning.fabric"):
            cli = LitScoreCLI(args=args, run=False)
    except ArgumentError as error:  # LitScoreCLI already added a did-you-mean hint to an unknown key
        raise SweepError(one_line(error)) from error
    except (MisconfigurationException, ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        raise SweepError(one_line(error)) from error
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))


@contextmanager
def _quiet(*names: str):
    """Lightning's info lines ("Seed set to 0", "GPU available") go to handlers made at import: silence them."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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


def run_folders(output: Path, sweep: str, sweep_id: str, name: str, logger: dict | None) -> tuple[list[str], Path]:
    """Arguments that give the run ``name`` of the sweep ``sweep`` (state id ``sweep_id``) its own logger folder /
    version (and W&B run id) under ``output``, and that folder."""
    if logger is None:
        root = output / "runs" / name
        return [f"--trainer.default_root_dir={root}"], root / "lightning_logs" / "version_0"
    init = logger.get("init_args") or {}
    if is_wandb(logger):
        run_id = f"{sweep}-{sweep_id}-{name}"
        args = [f"--trainer.logger.init_args.save_dir={output}",
                f"--trainer.logger.init_args.name={sweep}-{name}",  # the W&B display name
                f"--trainer.logger.init_args.version={run_id}"]  # the W&B run id
        return args, output / str(init.get("project") or "lightning_logs") / run_id
    missing = [k for k in ("save_dir", "name", "version") if k not in init]
    if missing:
        raise SweepError(f"the logger {logger.get('class_path')} has no {', '.join(missing)}: a sweep gives each"
                         " run its own folder through save_dir, name and version (use TensorBoard, CSV or W&B)")
    args = [f"--trainer.logger.init_args.save_dir={output}", "--trainer.logger.init_args.name=runs",
            f"--trainer.logger.init_args.version={name}"]
    return args, output / "runs" / name


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
