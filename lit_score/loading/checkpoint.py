"""A lit-score checkpoint: its model, its data module and what a protocol records of it.

=============================  ==================================================================================
name                           what it gives
=============================  ==================================================================================
:func:`load_model`             the model, as the class that wrote it, with finite weights (a diverged run refused)
:func:`load_for_evaluation`    the model with its EMA, raw or best-available weights, and which ones it got
:func:`checkpoint_class_path`  the model class a checkpoint was written by (``hyper_parameters['_class_path']``)
:func:`checkpoint_datamodule`  the data module it was trained on (``datamodule_hyper_parameters``)
:func:`checkpoint_summary`     path, step, epoch, EMA and weights, as an evaluation protocol records them
:func:`used_ema`               whether the weights are averaged ones (``current_model_state`` holds the raw ones)
=============================  ==================================================================================

Every class a checkpoint names passes :mod:`lit_score.loading.trust`'s checks before anything of it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_score.checkpointing import nonfinite_names
from lit_score.data import GenerativeDataModule
from lit_score.loading.trust import CheckpointError, checkpoint_class, load_datamodule, load_module, read_checkpoint
from lit_score.models import GenerativeModule
from lit_score.validation import InvalidInput

WEIGHTS = ("auto", "ema", "raw")


def checkpoint_class_path(ckpt_path: str | Path) -> str:
    """The model class a lit-score checkpoint was written by (``hyper_parameters['_class_path']``), after the
    checkpoint was read weights-only and every class it names passed :mod:`lit_score.loading.trust`'s checks."""
    ckpt = read_checkpoint(ckpt_path)
    checkpoint_class(ckpt_path, GenerativeModule, ckpt)
    return ckpt["hyper_parameters"]["_class_path"]


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    """Load a checkpoint as the class that wrote it (a lit-score model) once every class it names passed
    :mod:`lit_score.loading.trust`'s checks; weights that are not finite (a diverged run) are refused in one line."""
    model = load_module(ckpt_path, GenerativeModule, map_location=map_location)
    bad = nonfinite_names(model.named_parameters())
    if bad:
        raise InvalidInput(f"checkpoint {ckpt_path} has non-finite weights ({bad[0]}{' …' if len(bad) > 1 else ''}):"
                           " the run diverged before it was written; sample an earlier checkpoint")
    return model


def checkpoint_datamodule(ckpt_path: str | Path) -> GenerativeDataModule:
    """The datamodule a checkpoint was trained on, rebuilt from its ``datamodule_hyper_parameters``."""
    return load_datamodule(ckpt_path, GenerativeDataModule)


def used_ema(ckpt_path: str | Path) -> bool:
    """Whether the checkpoint's weights are averaged ones (Lightning keeps the raw ones as ``current_model_state``)."""
    return "current_model_state" in torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_summary(ckpt_path: str | Path, weights: str) -> dict[str, Any]:
    """What the protocol records of a checkpoint: path, step, epoch, EMA, which weights were evaluated."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return {"path": str(ckpt_path), "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
            "ema_in_checkpoint": "current_model_state" in ckpt, "weights": weights}


def load_for_evaluation(ckpt_path: str | Path, weights: str, device: torch.device) -> tuple[GenerativeModule, str]:
    """The checkpoint's model with its EMA weights (``ema``), its raw weights (``raw``) or whichever it has
    (``auto``: EMA when the run averaged weights); returns (model, weights actually loaded)."""
    ckpt = read_checkpoint(ckpt_path)  # one line for a missing, corrupt or pickled file (load_model checks classes)
    has_ema = "current_model_state" in ckpt
    if weights not in WEIGHTS:
        raise InvalidInput(f"--weights must be auto, ema or raw, got {weights!r}")
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"checkpoint {ckpt_path} holds no EMA weights (the run used no lit_score.callbacks.EMA):"
                              " use --weights raw")
    model = load_model(ckpt_path, map_location=device)
    if weights == "raw" and has_ema:
        model.load_state_dict(ckpt["current_model_state"])
    return model, ("ema" if has_ema and weights != "raw" else "raw")
