"""What every option of every command must be, checked before any checkpoint is loaded.

Every option of ``sample`` / ``encode`` / ``evaluate`` / ``compare`` / ``sweep`` has a :class:`Rule` in its table
(:data:`SAMPLE_RULES`, :data:`ENCODE_RULES`, :data:`EVALUATE_RULES`, :data:`COMPARE_RULES`, :data:`SWEEP_RULES`) — a
count, a finite number in a range, a list of integers, a choice, a file to read, a place to write — or says which check
handles it (a sampler's and a data module's own constructors, the checkpoint loader); :func:`check_options` applies
a table to a parsed command. NaN and infinities are refused wherever they appear on a command line or in a config
(:func:`check_finite_argv`, :func:`check_config_data`), for every subcommand, before jsonargparse turns them into a
confusing type error (``lr nan`` → "Expected a dot import path string").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_score.checks import check_number
from lit_score.validation.errors import InvalidInput
from lit_score.validation.files import check_input_path, check_output_folder


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


