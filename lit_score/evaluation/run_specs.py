"""The run and sampler specifications of a compare config (:mod:`lit_score.evaluation.compare`): samplers built from
``{class_path, init_args}``, overrides rendered as CLI keys, and ``${ckpt:NAME}`` references to an earlier run's
checkpoint (a distillation student's teacher trained in the same compare)."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonargparse import ArgumentParser

from lit_score.evaluation.evaluate import EvaluationError
from lit_score.samplers import Sampler

#: an override value naming an earlier run's checkpoint
CKPT_REFERENCE = re.compile(r"\$\{ckpt:([^}]+)\}")


def build_sampler(spec: dict[str, Any], num_steps: int | None = None, steps_key: str = "num_steps") -> Sampler:
    """A sampler from ``{class_path, init_args}`` (nested samplers allowed), with ``steps_key`` set to ``num_steps``."""
    spec = {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    if num_steps is not None:
        spec["init_args"][steps_key] = num_steps
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Sampler, "sampler")
    return parser.instantiate_classes(parser.parse_object({"sampler": spec})).sampler


def cli_overrides(values: dict[str, Any] | None) -> list[str]:
    """{"trainer.max_epochs": 5, "data": {...}} → ["--trainer.max_epochs", "5", "--data", '{...}'] (JSON values)."""
    out: list[str] = []
    for key, value in (values or {}).items():
        out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return out


def check_references(runs: list[dict]) -> None:
    """Refuse, before anything trains, a ``${ckpt:NAME}`` whose NAME is not a run listed before the one naming it."""
    names = [run["name"] for run in runs]
    for i, run in enumerate(runs):
        for value in (run.get("overrides") or {}).values():
            for name in CKPT_REFERENCE.findall(value) if isinstance(value, str) else ():
                if name not in names[:i]:
                    raise EvaluationError(f"run {run['name']!r} names ${{ckpt:{name}}}, which is not an earlier run"
                                          f" (runs before it: {names[:i] or 'none'}): list {name!r} first")


def resolve_references(overrides: dict[str, Any], trained: dict[str, dict]) -> dict[str, Any]:
    """``overrides`` with every ``${ckpt:NAME}`` replaced by the checkpoint path of the trained run NAME."""
    def resolve(value: Any) -> Any:
        return CKPT_REFERENCE.sub(lambda m: trained[m.group(1)]["ckpt"], value) if isinstance(value, str) else value

    return {key: resolve(value) for key, value in overrides.items()}


__all__ = ["CKPT_REFERENCE", "build_sampler", "check_references", "cli_overrides", "resolve_references"]
