"""``lit-score compare``: the command line over :class:`lit_score.evaluation.compare.Compare`.

    lit-score compare --config configs/compare/toy.yaml          # train every family on moons, same seed and budget
    lit-score compare --ckpts a.ckpt b.ckpt --output runs/cmp    # or compare existing checkpoints
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from lit_score.cli.errors import reported
from lit_score.evaluation.compare import Compare
from lit_score.evaluation.evaluate import EvaluationError, parse_list
from lit_score.evaluation.report import log_report
from lit_score.loading.checkpoint import checkpoint_class_path
from lit_score.training import fit
from lit_score.validation import COMPARE_RULES, check_options, check_output_folder, resolve_device


def compare_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-score compare", exit_on_error=False,
                            description="Train and/or evaluate several models on one protocol and write a report.")
    parser.add_argument("--config", action=ActionConfigFile, help="a compare config (configs/compare/*.yaml)")
    parser.add_argument("--output", type=str | None, default=None, help="report folder (default runs/compare/<name>)")
    parser.add_argument("--runs", type=list[dict] | None, default=None,
                        help="[{name, config, overrides}] to train, or [{name, ckpt}] to take")
    parser.add_argument("--ckpts", type=str, nargs="+", default=None, help="existing checkpoints to compare")
    parser.add_argument("--shared", type=dict | None, default=None, help="CLI keys stacked over every run's config")
    parser.add_argument("--samplers", type=list[dict] | None, default=None,
                        help="[{sampler: {class_path, init_args}, num_steps: [..], label, steps_key}]")
    parser.add_argument("--evaluation", type=dict | None, default=None, help="keyword arguments of evaluate()")
    parser.add_argument("--logger", type=dict | None, default=None,
                        help="a WandbLogger {class_path, init_args}: the table and figures are logged to it")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or gpu")
    parser.add_argument("--progress", type=bool, default=True, help="progress bar")
    return parser


def fit_command(argv: list[str]) -> None:
    """One run's ``lit-score fit <argv>``, failing as that command does (one line, ``SystemExit``)."""
    with reported(["fit", *argv]):
        fit(argv)


def compare_main(argv: list[str]) -> dict[str, Path]:
    """``lit-score compare``."""
    parser = compare_parser()
    cfg = parser.parse_args(argv)
    check_options(cfg, COMPARE_RULES)  # before any run trains
    resolve_device(cfg.accelerator)  # gpu on a machine without one: refused, not silently the CPU
    runs = list(cfg.runs or [])
    ckpts = parse_list(cfg.ckpts[0]) if cfg.ckpts and len(cfg.ckpts) == 1 else (cfg.ckpts or [])
    for i, ckpt in enumerate(ckpts):
        runs.append({"name": f"{checkpoint_class_path(ckpt).rpartition('.')[2].lower()}-{i}", "ckpt": str(ckpt)})
    if not runs:
        raise EvaluationError("nothing to compare: give runs in a --config or --ckpts")
    output = Path(cfg.output) if cfg.output else Path("runs/compare") / (
        Path(str(cfg.config[0])).stem if cfg.get("config") else "ckpts")
    check_output_folder(output)  # the report's folder: refused now, not after training
    evaluation = {"num_samples": 2000, "seeds": [0], **(cfg.evaluation or {})}
    paths = Compare(output, runs, list(cfg.samplers or []), evaluation, dict(cfg.shared or {}),
                    cfg.accelerator, cfg.progress, fit=fit_command).run()
    if cfg.logger:
        log_report(cfg.logger, output)
    print(f"wrote {paths['md']} and {paths['html']}")
    return paths
