"""The one validation layer of the commands: every option, input file and output place is checked here, before any
checkpoint is sampled or any data is generated, with one line that names the problem and the fix.

- **Options** (:data:`SAMPLE_RULES`, :data:`ENCODE_RULES`, :data:`EVALUATE_RULES`): every option of a command has a
  rule — a count, a finite number in a range, a list of integers, a choice, a file to read, a place to write — or says
  which check handles it (a sampler's and a data module's own constructors, the checkpoint loader). A test asserts that
  no option of any parser is without one, so a new option cannot escape validation.
- **Numbers on the command line and in configs** (:func:`check_finite_argv`, :func:`check_config_data`): NaN and
  infinities are refused wherever they appear, for every subcommand, before jsonargparse turns them into a confusing
  type error (``lr nan`` → "Expected a dot import path string").
- **Arrays read from files** (:func:`read_array`, :func:`check_array`, :func:`check_mask`): an ``.npz`` or ``.npy``
  of real, finite numbers with enough rows (and a mask of 0 and 1 only).
- **Outputs** (:func:`check_output_stem`, :func:`check_output_folder`, :func:`writable_folder`): not a folder where a
  file stem is meant, nothing overwritten unless asked, the folder writable — checked before the work, not after.
- **Devices** (:func:`resolve_device`): ``auto``, ``cpu``, ``gpu`` / ``cuda`` / ``cuda:N`` (refused where there is
  no CUDA device), ``mps``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_score.checks import check_number


class InvalidInput(ValueError):
    """An option, an input file or an output place that cannot work: one line naming it and the fix."""


# --- options -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one option must be.

    ``kind``: ``count`` (an integer >= ``ge``), ``number`` (a finite number within ``gt`` / ``ge`` / ``le``),
    ``ints`` / ``numbers`` (a comma list of those), ``choice`` (one of ``choices``), ``file`` (an existing file or
    folder to read), ``output`` (a file stem to write), ``folder`` (an output folder: not a file, writable),
    ``flag`` (a boolean), ``text`` (any string), or ``elsewhere`` (checked by the code named in ``note``: a
    constructor, the checkpoint loader).
    """

    kind: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    none: bool = False
    choices: tuple[str, ...] = ()
    note: str = ""


def count(ge: int = 1, none: bool = False) -> Rule:
    return Rule("count", ge=ge, none=none)


def number(ge: float | None = None, gt: float | None = None, le: float | None = None, none: bool = False) -> Rule:
    return Rule("number", ge=ge, gt=gt, le=le, none=none)


def choice(*choices: str, none: bool = False) -> Rule:
    return Rule("choice", choices=choices, none=none)


def elsewhere(note: str) -> Rule:
    return Rule("elsewhere", note=note)


FLAG, TEXT = Rule("flag"), Rule("text")
IN_FILE, IN_FILE_OR_NONE = Rule("file"), Rule("file", none=True)
OUTPUT = Rule("output", none=True)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

_CONDITION = {
    "class_label": Rule("count", ge=-1, none=True),
    "guidance_scale": number(ge=0.0),
    "classifier_ckpt": IN_FILE_OR_NONE,
    "classifier_scale": number(ge=0.0),
}
SAMPLE_RULES: dict[str, Rule] = {
    "ckpt_path": IN_FILE,
    "num_samples": count(1),
    "sampler": elsewhere("the sampler's constructor (lit_score.checks) and check_sampler"),
    "batch_size": count(1, none=True),
    "seed": count(0),
    "start": elsewhere("the model's set_sample_start"),
    **_CONDITION,
    "init": IN_FILE_OR_NONE,
    "strength": number(ge=0.0, le=1.0),
    "inpaint": IN_FILE_OR_NONE,
    "mask": IN_FILE_OR_NONE,
    "resample": count(1),
    "jump_length": count(1),
    "output": OUTPUT,
    "accelerator": choice(*ACCELERATORS),
    "overwrite": FLAG,
}
ENCODE_RULES: dict[str, Rule] = {
    "ckpt_path": IN_FILE,
    "input": IN_FILE_OR_NONE,
    "num_samples": count(1),
    "sampler": elsewhere("the sampler's constructor and the reversible check of encode"),
    "interpolate": count(0),
    "class_label": Rule("count", ge=-1, none=True),
    "output": OUTPUT,
    "accelerator": choice(*ACCELERATORS),
    "overwrite": FLAG,
}
EVALUATE_RULES: dict[str, Rule] = {
    "ckpt_path": IN_FILE_OR_NONE,
    "num_samples": count(2),
    "sampler": elsewhere("the sampler's constructor and check_sampler"),
    "metrics": elsewhere("check_metrics (the names of METRIC_GROUPS)"),
    "reference": choice("train", "test"),
    "feature_extractor": elsewhere("resolve_feature_extractor"),
    "feature_extractor_weights_path": IN_FILE_OR_NONE,
    "seeds": Rule("ints"),
    "samples": elsewhere("read_array / load_samples (each file: real, finite, at least two samples)"),
    "batch_size": count(1, none=True),
    "weights": choice("auto", "ema", "raw"),
    "start": elsewhere("the model's set_sample_start"),
    **_CONDITION,
    "guidance_scales": Rule("numbers", ge=0.0, none=True),
    "data": elsewhere("the data module's constructor"),
    "likelihood_samples": count(1),
    "likelihood_estimator": elsewhere("the likelihood estimators"),
    "likelihood_options": elsewhere("the likelihood estimators"),
    "distance_samples": count(2),
    "half_samples": count(0),  # 0: no half-sample error bars
    "kid_subset_size": count(2, none=True),
    "cache_root": TEXT,
    "output": OUTPUT,
    "overwrite": FLAG,
    "accelerator": choice(*ACCELERATORS),
    "devices": elsewhere("Lightning's Trainer (an integer >= 1, -1, 'auto' or a list)"),
    "strategy": elsewhere("Lightning's Trainer"),
    "num_nodes": count(1),
    "precision": elsewhere("Lightning's Trainer"),
    "logger": elsewhere("the logger's constructor"),
    "progress": FLAG,
}

COMPARE_RULES: dict[str, Rule] = {
    "output": Rule("folder", none=True),
    "runs": elsewhere("Compare: each run has a name and exactly one existing config or ckpt"),
    "ckpts": elsewhere("the checkpoint reader (checkpoint_class_path)"),
    "shared": elsewhere("the fit of each run (its parser)"),
    "samplers": elsewhere("Compare.check_plan: every sampler of the grid is built before training"),
    "evaluation": elsewhere("Compare.check_plan: its numbers against EVALUATE_RULES"),
    "logger": elsewhere("the logger's constructor"),
    "accelerator": choice(*ACCELERATORS),
    "progress": FLAG,
}
SWEEP_RULES: dict[str, Rule] = {
    "sweep_file": IN_FILE,
    "count": count(1, none=True),
    "output": Rule("folder", none=True),
    "method": choice("grid", "random", "bayes", none=True),
    "seed": count(0),
    "retry_failed": FLAG,
}


def _bounds(rule: Rule) -> dict[str, Any]:
    return {k: getattr(rule, k) for k in ("gt", "ge", "le") if getattr(rule, k) is not None}


def parse_numbers(text: Any, option: str, integer: bool, rule: Rule | None = None) -> list:
    """``"0,1,2"`` (or a list) → [0, 1, 2]; one line for anything else (``a,b``, ``nan``, an empty list)."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    kind = "integers" if integer else "finite numbers"
    example = "0,1,2" if integer else "0,1.5,3"
    out = []
    for item in items:
        try:
            value = int(str(item).strip()) if integer else float(str(item).strip())
            check_number(option, value, integer=integer, **(_bounds(rule) if rule else {}))
        except ValueError as err:
            limits = "" if rule is None or not _bounds(rule) else f" ({str(err).split(' must be ')[-1].split(',')[0]})"
            raise InvalidInput(f"--{option} must be a comma list of {kind}{limits} such as {example}, got"
                               f" {text!r}") from None
        out.append(value)
    if not out:
        raise InvalidInput(f"--{option} must list at least one value, such as {example}")
    return out


def check_options(cfg, rules: dict[str, Rule]) -> None:
    """Every option of a parsed command against its rule (types were parsed; ranges, finiteness and paths are
    checked here), before any checkpoint is loaded."""
    for option, rule in rules.items():
        value = cfg.get(option)
        if value is None and (rule.none or rule.kind in ("elsewhere", "text", "output")):
            continue
        if rule.kind in ("count", "number"):
            try:
                check_number(option, value, integer=rule.kind == "count", **_bounds(rule))
            except ValueError as err:
                raise InvalidInput(f"--{err}{' (or leave it out)' if rule.none else ''}") from None
        elif rule.kind in ("ints", "numbers"):
            parse_numbers(value, option, rule.kind == "ints", rule)
        elif rule.kind == "choice" and value not in rule.choices:
            raise InvalidInput(f"--{option} must be one of {', '.join(rule.choices)}, got {value!r}")
        elif rule.kind == "file":
            check_input_path(value, f"--{option}")
        elif rule.kind == "folder":
            check_output_folder(Path(value), f"--{option}")


def check_input_path(path: Any, what: str) -> Path:
    """An existing file (or folder) to read, or one line saying which and what to pass."""
    text = str(path)
    if not text.strip():
        raise InvalidInput(f"{what} is empty: pass the path of a file")
    p = Path(text)
    if not p.exists():
        raise InvalidInput(f"{what} {p} does not exist: pass the path of an existing file")
    if not os.access(p, os.R_OK):
        raise InvalidInput(f"{what} {p} cannot be read (permission denied): make it readable or copy it")
    return p


# --- numbers in argv and configs ------------------------------------------------------------------------------------
_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", ".nan", ".inf",
               "-.inf", "+.inf"}


def _not_finite(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _NOT_FINITE
    return isinstance(value, float) and not math.isfinite(value)


def check_finite_argv(argv: list[str]) -> None:
    """Refuse ``--key nan`` / ``--key=inf`` anywhere on a command line (no option of lit-score takes one)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if _not_finite(value):
            raise InvalidInput(f"{key} {value}: every number must be finite — give {key} a finite value")


def check_config_data(name: str, data: Any) -> None:
    """A config file holds a mapping of options (``trainer:``, ``model:``, ``data:`` …) with finite numbers."""
    if data is None:
        raise InvalidInput(f"config file {name} is empty: put options in it (trainer:, model:, data: …), e.g. copy"
                           " configs/ddpm/toy.yaml")
    if not isinstance(data, dict):
        raise InvalidInput(f"config file {name} holds a {type(data).__name__}, not a mapping of options: write"
                           " `key: value` lines (trainer:, model:, data: …) as in configs/ddpm/toy.yaml")

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for j, v in enumerate(value):
                walk(v, f"{key}[{j}]")
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"config file {name}: {key} is {value}: every number must be finite — give it a"
                               " finite value")

    walk(data, "")


# --- arrays from files ------------------------------------------------------------------------------------------------
def read_array(path: str | Path, what: str, key: str = "samples") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The array ``key`` of an ``.npz`` (else its first array) or the array of an ``.npy``, and the other arrays of
    the ``.npz``; no pickles; one line for a missing, empty or unreadable file."""
    path = check_input_path(path, what)
    if path.is_dir():
        raise InvalidInput(f"{what} {path} is a folder: pass an .npz file")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise InvalidInput(f"{what} {path}: use an .npz (numpy.savez(path, {key}=x)) or an .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, {}
        with loaded:
            names = list(loaded.files)
            if not names:
                raise InvalidInput(f"{what} {path} holds no array: save one with numpy.savez(path, {key}=x)")
            main = key if key in names else names[0]
            arrays = {name: np.asarray(loaded[name]) for name in names}
    except InvalidInput:
        raise
    except (OSError, ValueError, EOFError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidInput(f"{what} {path} is not a readable .npz / .npy ({reason}): write it again with"
                           f" numpy.savez(path, {key}=x)") from err
    return arrays.pop(main), arrays


def check_array(x: np.ndarray, what: str, min_rows: int = 1) -> np.ndarray:
    """Real, finite numbers in at least ``min_rows`` rows (samples along the first axis)."""
    if x.dtype.kind not in "biuf":
        raise InvalidInput(f"{what} holds {x.dtype} values, not real numbers: save real (float) samples")
    if x.ndim == 0 or x.shape[0] < min_rows:
        rows = 0 if x.ndim == 0 else x.shape[0]
        raise InvalidInput(f"{what} holds {rows} sample(s) (shape {x.shape}): give at least {min_rows}")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        if bad.any():
            raise InvalidInput(f"{what} has {int(bad.sum())} of {x.shape[0]} samples with NaN or infinite values"
                               f" (the first: row {int(np.argmax(bad))}): drop or fix them")
    return x


def check_mask(x: np.ndarray, what: str) -> np.ndarray:
    """A mask of 0 (unknown) and 1 (known) only — no fractions, no NaN."""
    check_array(x, what)
    values = np.unique(x)
    if not np.isin(values, (0, 1)).all():
        other = values[~np.isin(values, (0, 1))][0]
        raise InvalidInput(f"{what} holds {other:g} where only 0 (unknown) and 1 (known) are allowed: save a mask"
                           " of 0s and 1s")
    return x


# --- outputs --------------------------------------------------------------------------------------------------------
def writable_folder(folder: Path, option: str = "--output") -> None:
    """The folder exists and can be written to, or can be made: its nearest existing ancestor is a writable folder on
    a file system mounted read-write. One line otherwise; the check itself changes nothing on disk."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists() or p == p.parent)
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = "read-only file system"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = "permission denied"
    if reason is not None:
        raise InvalidInput(f"cannot write to {folder} ({reason}): pass {option} somewhere writable")


def check_output_stem(output: str | None, option: str = "--output") -> None:
    """A file stem (``dir/name``; .png / .npz are added): not a folder, not ending in a path separator."""
    if output is None:
        return
    text = str(output)
    if not text.strip() or text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise InvalidInput(f"{option} {text!r} names a folder, not a file stem: give a stem such as"
                           f" {str(Path(text or '.') / 'samples')!r} (.png and .npz are added)")


def check_output_folder(folder: Path, option: str = "--output") -> None:
    """An output folder: not an existing file, and writable."""
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"{option} {folder} is a file, not a folder: pass a folder path (it is made if missing)")
    writable_folder(folder, option)


def resolve_device(accelerator: str, option: str = "--accelerator"):
    """``auto`` (CUDA when there is one), ``cpu``, ``gpu`` / ``cuda`` / ``cuda:N``, ``mps``; one line for a device this
    machine does not have."""
    import torch

    name = str(accelerator).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"{option} {accelerator}: no CUDA device is available here: pass {option} cpu (or"
                               " auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InvalidInput(f"{option} {accelerator}: this machine has {torch.cuda.device_count()} CUDA device(s):"
                               f" pass cuda:0 … cuda:{torch.cuda.device_count() - 1}")
        return torch.device(f"cuda{':' + index if index else ''}")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidInput(f"{option} mps: no Apple GPU is available here: pass {option} cpu (or auto)")
        return torch.device("mps")
    raise InvalidInput(f"{option} must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")


def check_sampler_steps(model, sampler) -> None:
    """A grid sampler (``steps_on_grid``) must not ask for more steps than a discrete model has: the process would merge
    them and the run take fewer than recorded (DDIM with 100000 steps on a 50-step DDPM runs 50)."""
    process = getattr(model, "process", None)
    wanted = getattr(sampler, "num_steps", None)
    available = getattr(process, "num_timesteps", None)
    if process is None or available is None or not isinstance(wanted, int) or not sampler.steps_on_grid:
        return  # Langevin-type samplers count steps per level or per chain, not grid intervals
    intervals = wanted - int(bool(getattr(sampler, "denoise", False)))
    if intervals > available:
        most = available + int(bool(getattr(sampler, "denoise", False)))
        raise InvalidInput(f"{type(sampler).__name__} asks for num_steps {wanted} but {type(model).__name__} was"
                           f" trained on {available} discrete timesteps, so it would run at most {available}: pass"
                           f" --sampler.init_args.num_steps {most} or fewer")


def parser_options(parser) -> list[str]:
    """The top-level option names of a jsonargparse parser (``--sampler.init_args.x`` counts as ``sampler``)."""
    names = []
    for action in parser._actions:
        dest = getattr(action, "dest", None)
        if not dest or dest in ("help", "config", "print_config") or dest.startswith("__"):
            continue
        top = dest.split(".")[0]
        if top not in names:
            names.append(top)
    return names


__all__ = ["COMPARE_RULES", "ENCODE_RULES", "EVALUATE_RULES", "InvalidInput", "Rule", "SAMPLE_RULES", "SWEEP_RULES",
           "check_array", "check_config_data", "check_finite_argv", "check_input_path", "check_mask", "check_options",
           "check_output_folder", "check_output_stem", "check_sampler_steps", "describe_os_error", "parse_numbers",
           "parser_options", "read_array", "resolve_device", "writable_folder"]


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation: what, where and what to do (our own errors pass through)."""
    import errno

    from lit_score.atomic import FULL, DiskFullError

    if isinstance(err, DiskFullError) or not err.errno:
        return " ".join(str(err).split())
    where = err.filename if err.filename is not None else (
        "the output (--output; for fit the logger's save_dir or --trainer.default_root_dir)")
    what = err.strerror or str(err)
    if err.errno in FULL:
        return (f"no space left on the disk holding {where}: free space there or write elsewhere; nothing was"
                " half-written")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write to {where} ({what.lower()}): pass a writable place (--output; for fit"
                " --trainer.logger.init_args.save_dir or --trainer.default_root_dir)")
    if err.errno == errno.ENOENT:
        return f"{where} does not exist ({what.lower()}): pass an existing path"
    return f"{what} ({where}): check the path and its permissions"
