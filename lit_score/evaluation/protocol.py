"""The protocol every evaluation records beside its numbers: how they were obtained.

| name | what |
|---|---|
| :func:`evaluation_protocol` | metrics.json's ``protocol`` (beside the metric groups' own entries) |
| :func:`describe_sampler` | a sampler's class path and settings (nested samplers described the same way) |
| :func:`content_key` | a short stable hash of the resolved inputs that make two runs or evaluations the same |
| :func:`versions` | the versions of everything that can move a number |
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

import numpy as np
import torch

from lit_score.atomic import jsonable
from lit_score.samplers import Sampler


def versions() -> dict[str, str]:
    """Versions of everything that can move a number."""
    from importlib.metadata import PackageNotFoundError, version

    import lightning
    import torch_fidelity
    import torchmetrics

    try:
        lit_score = version("lit-score")
    except PackageNotFoundError:
        lit_score = "unknown"
    return {"lit_score": lit_score, "torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__,
            "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__,
            "python": platform.python_version()}


def describe_sampler(sampler: Sampler | None) -> dict[str, Any] | None:
    """class path + settings of a sampler (nested samplers described the same way)."""
    if sampler is None:
        return None
    settings = {}
    for key, value in vars(sampler).items():
        if key.startswith("_"):
            continue
        settings[key] = describe_sampler(value) if isinstance(value, Sampler) else jsonable(value)
    cls = type(sampler)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": settings}


def content_key(value: Any, length: int = 10) -> str:
    """Short stable hash of anything JSON-able (the resolved inputs that make two runs or evaluations the same)."""
    return hashlib.sha256(json.dumps(jsonable(value), sort_keys=True).encode()).hexdigest()[:length]


def evaluation_protocol(model, datamodule, sampler, seeds, sets, generation, reference, extractor, timing, checkpoint,
                        samples_source, wanted, ref_count: int | None) -> dict[str, Any]:
    """How an evaluation's numbers were obtained: what was asked, generated and measured, with what, on which data
    and reference, and the versions and wall times (metrics.json's ``protocol``, beside the groups' own entries)."""
    hparams = {k: v for k, v in dict(datamodule.hparams).items() if not k.startswith("_")}
    cls = type(datamodule)
    nfes = [g["nfe"] for g in generation if g.get("nfe") is not None]
    return {
        "metrics": list(wanted),
        "num_samples": len(sets[0]) if sets else 0,
        "seeds": list(seeds),
        "generation": generation,
        "generation_batch_size": generation[0].get("batch_size") if generation else None,
        "sampler": describe_sampler(sampler),
        "nfe": float(np.mean(nfes)) if nfes else None,
        "start": None if model is None or samples_source is not None else model.sample_start,
        "condition": None if model is None or samples_source is not None or model.condition_labels(
            torch.arange(1)) is None else {k: v for k, v in model.condition.items()},
        "model": None if model is None else f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": None if model is None else sum(p.numel() for p in model.parameters()),
        "weights": (checkpoint or {}).get("weights"),
        "checkpoint": checkpoint,
        "samples_source": None if samples_source is None else {k: v for k, v in samples_source.items()
                                                                 if k != "labels"},
        "data": {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": hparams,
                 "label": datamodule.label, "sample_shape": list(datamodule.sample_shape)},
        "reference": {"split": reference, "num_samples": ref_count,
                      "fresh_draws": bool(datamodule.has_exact_sampler)},
        "feature_extractor": None if extractor is None else extractor.to_dict(),
        "versions": versions(),
        "device": str(model.device) if model is not None else None,
        "wall_time": timing,
    }


__all__ = ["content_key", "describe_sampler", "evaluation_protocol", "versions"]
