"""A sweep file: W&B's sweep schema, the agent's command line, and what ``lit-score sweep`` needs of it.

The parameters of a lit-score sweep are ``lit-score fit`` keys themselves (flat dotted keys such as
``model.init_args.optimizer.init_args.lr``) and its command is ``lit-score fit --config … ${args}``: the W&B agent
renders ``${args}`` as ``--key=value``, which LightningCLI reads like any other override.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import yaml

# wandb's agent (wandb/sdk/launch/sweeps/utils.py, wandb 0.31): the command when a sweep names none, the
# ${envvar:NAME} macro, and what the ${…} macros expand to. Re-implemented here (private API there) and pinned
# against it in tests/test_sweeps.py.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
METHODS = ("grid", "random", "bayes")


class SweepError(ValueError):
    """A problem with a sweep file or a sweep folder, reported as one line."""


def sweeps_package():
    """The ``sweeps`` package (W&B's sweep engine, what ``wandb[sweeps]`` installs): schema validation and the
    grid / random / bayes proposals, offline. Its pydantic-v1 style config warns on import under pydantic 2."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Valid config keys have changed in V2", UserWarning)
        import sweeps
    return sweeps


def agent_values(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: value}`` → the agent's ``command["args"]`` form ``{key: {"value": value}}``."""
    return {key: {"value": value} for key, value in params.items()}


def agent_macros(params: dict[str, Any], program: str | None = None) -> dict[str, list[str]]:
    """What each ``${…}`` macro of a sweep command expands to for these parameter values, as the W&B agent builds
    it (``create_sweep_command_args`` plus the agent's env / interpreter / program)."""
    flags, no_equals, no_hyphens, no_booleans = [], [], [], []
    for key, value in params.items():
        flag = f"{key}={value}"  # str(value): True, 0.001, 1e-05, [1, 2] — YAML that jsonargparse reads back
        flags.append(f"--{flag}")
        no_hyphens.append(flag)
        no_equals += [f"--{key}", str(value)]
        if isinstance(value, bool):
            if value:
                no_booleans.append(f"--{key}")
        else:
            no_booleans.append(f"--{flag}")
    return {
        "args": flags, "args_no_equals": no_equals, "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans, "args_json": [json.dumps(params)],
        "args_append_hydra": [f"+{f}" for f in no_hyphens], "args_override_hydra": [f"++{f}" for f in no_hyphens],
        "env": ["/usr/bin/env"], "interpreter": ["python"], "program": [program] if program else [],
    }


def agent_argv(sweep: dict, params: dict[str, Any]) -> list[str]:
    """The command line the W&B agent runs for one proposal: ``${envvar:X}`` filled from the environment, each
    ``${macro}`` element replaced by its expansion (an element that is not exactly one macro is kept as is)."""
    command = [str(c) for c in (sweep.get("command") or DEFAULT_COMMAND)]
    command = [ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), c) for c in command]
    macros = agent_macros(params, sweep.get("program"))
    argv: list[str] = []
    for chunk in command:
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def fit_args(sweep: dict, params: dict[str, Any]) -> list[str]:
    """The ``lit-score fit`` arguments of one proposal: the agent's argv without ``[/usr/bin/env] lit-score fit``."""
    argv = agent_argv(sweep, params)
    if argv[:1] == ["/usr/bin/env"]:
        argv = argv[1:]
    return argv[2:]


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file: W&B's schema (the ``sweeps`` package), then what a lit-score sweep needs."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist: pass the path of a sweep YAML (e.g. sweeps/flow_toy.yaml)")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise SweepError(f"sweep file {path}{where}: {getattr(err, 'problem', None) or err} — fix the YAML") from err
    if not isinstance(sweep, dict):
        raise SweepError(f"sweep file {path} is not a mapping of sweep keys (method, metric, parameters, command)")
    violations = sweeps_package().schema_violations_from_proposed_config(sweep)
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise SweepError(f"sweep file {path} is not a valid W&B sweep: {violations[0]}{more}")
    check_lit_score_sweep(sweep, path)
    return sweep


def check_lit_score_sweep(sweep: dict, path: str | Path = "the sweep") -> None:
    """What W&B's schema allows but a lit-score sweep cannot use: a method other than grid / random / bayes, no
    metric, nested parameters (they reach the command as one dict, not as CLI keys), None values (rendered as the
    string ``None``), a command that is not ``lit-score fit … ${args}``."""
    method = sweep.get("method")
    if method not in METHODS:
        raise SweepError(f"{path}: method {method!r} cannot run locally: use grid, random or bayes")
    metric = sweep.get("metric") or {}
    if not metric.get("name"):
        raise SweepError(f"{path}: no metric.name: name the logged metric to rank runs by (e.g. val/energy_distance)")
    params = sweep.get("parameters") or {}
    if not params:
        raise SweepError(f"{path}: no parameters to sweep")
    for key, spec in params.items():
        if "parameters" in spec:
            raise SweepError(f"{path}: parameter {key!r} is nested; use flat dotted CLI keys"
                             " (model.init_args.optimizer.init_args.lr), which ${args} renders as --key=value")
        values = spec.get("values", [spec["value"]] if "value" in spec else [])
        if any(v is None for v in values):
            raise SweepError(f"{path}: parameter {key!r} has a null value, which the agent renders as the string"
                             " None; leave the key out of the sweep instead")
    command = [str(c) for c in sweep.get("command") or []]
    words = command[1:] if command[:1] == ["/usr/bin/env"] else command
    if words[:2] not in (["lit-score", "fit"], ["${program}", "fit"]) or (
            words[0] == "${program}" and sweep.get("program") != "lit-score"):
        raise SweepError(f"{path}: the command must be `lit-score fit --config … ${{args}}`, got {' '.join(command)!r}")
    if "${args}" not in command:
        raise SweepError(f"{path}: the command has no ${{args}}, so the sampled parameters would never reach the run")


def grid_size(sweep: dict) -> int | None:
    """Number of runs of a grid sweep (None when a parameter has no finite list of values)."""
    size = 1
    for spec in sweep["parameters"].values():
        if "values" in spec:
            size *= len(spec["values"])
        elif "value" not in spec:
            return None
    return size


def plain(value: Any) -> Any:
    """A proposal's value as a plain Python value (the engine returns numpy scalars)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value
