"""Options the ``sample``, ``encode`` and ``evaluate`` commands share, and what they set on a model.

==============================  ===================================================================================
name                            what it does
==============================  ===================================================================================
:func:`parse_command`           one reading of a command line: its options (defaults filled in) and the
                                ``--sampler.init_args`` settings the user gave, which
                                :func:`~lit_score.loading.sampler.resolve_sampler` keeps
:func:`add_condition_arguments` ``--class_label``, ``--guidance_scale``, ``--classifier_ckpt``, ``--classifier_scale``
:func:`apply_condition`         sets the model's labels and guidance from them (one line on a mismatch)
:func:`data_range`              the range a model's samples live in
==============================  ===================================================================================
"""

from __future__ import annotations

import torch
from jsonargparse import ArgumentParser, Namespace

from lit_score.loading.checkpoint import load_model
from lit_score.models import GenerativeModule
from lit_score.validation import InvalidInput


def parse_command(parser: ArgumentParser, argv: list[str]) -> tuple[Namespace, frozenset[str]]:
    """The parsed options of ``argv`` (defaults filled in) and the names of the ``--sampler`` settings the command
    line gave, which :func:`~lit_score.loading.sampler.resolve_sampler` takes from the user rather than from the
    model's own sampler. ``argv`` is read once, without defaults (what the user gave); the parser's defaults are then
    laid under that (``parse_object``, the same config ``parse_args(argv)`` gives)."""
    given = parser.parse_args(argv, defaults=False)
    cfg = parser.parse_object(given)
    sampler = given.get("sampler")
    init_args = sampler.get("init_args") if sampler is not None else None
    return cfg, frozenset(vars(init_args)) if init_args is not None else frozenset()


def add_condition_arguments(parser: ArgumentParser) -> None:
    """``--class_label``, ``--guidance_scale``, ``--classifier_ckpt``, ``--classifier_scale`` (sample and evaluate)."""
    parser.add_argument("--class_label", type=int | None, default=None,
                        help="class of every sample of a class-conditional model (default: every class in turn, one"
                             " grid row per class; -1: the null label, i.e. the unconditional model)")
    parser.add_argument("--guidance_scale", type=float, default=0.0,
                        help="classifier-free guidance w: (1 + w) s(x, t, y) - w s(x, t, none) (0: conditional)")
    parser.add_argument("--classifier_ckpt", type=str | None, default=None,
                        help="a noise-conditional classifier (lit-score fit --config configs/classifier/...) for"
                             " classifier guidance")
    parser.add_argument("--classifier_scale", type=float, default=0.0,
                        help="classifier guidance w_c: s + w_c grad log p(y | x_t, t)")


def apply_condition(model: GenerativeModule, cfg, device: torch.device) -> None:
    """Set the model's labels and guidance from the parsed ``add_condition_arguments`` (one line on a mismatch)."""
    classifier = None
    if cfg.classifier_ckpt:
        classifier = load_model(cfg.classifier_ckpt, map_location=device)
        if not classifier.guides:
            raise InvalidInput(f"{cfg.classifier_ckpt} holds a {type(classifier).__name__}, not a noise-conditional"
                               " classifier: train one with lit-score fit --config configs/classifier/digits.yaml")
        classifier.eval()
        mismatch = classifier.process_mismatch(model.process) if model.process is not None else None
        if mismatch:
            raise InvalidInput(f"{cfg.classifier_ckpt} cannot guide this model: {mismatch} — train the classifier on"
                               " the model's process (configs/classifier/*.yaml)")
        if not cfg.classifier_scale:
            raise InvalidInput("--classifier_ckpt needs --classifier_scale > 0 (the guidance strength w_c)")
    model.set_condition(cfg.class_label, cfg.guidance_scale, classifier, cfg.classifier_scale)


def data_range(model: GenerativeModule) -> tuple[float, float]:
    """The data range the model's samples live in (its declared ``data_range``: an EBM's own, [−1, 1] otherwise)."""
    return tuple(model.data_range)
