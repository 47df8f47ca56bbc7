"""Class accuracy of conditional samples: the share that the data's reference classifier puts in the class each sample
was drawn for (labels from the model's condition, or from the file of samples made elsewhere)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_score.evaluation.groups.base import EvaluationContext, EvaluationError, Measured, MetricGroup, summarize


def class_accuracy(log_probs: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy of samples whose requested classes are ``labels`` (N,) under a reference classifier's ``log_probs``
    (N, K): overall, per class, and the mean log p(y | x) of the requested class."""
    labels = labels.cpu().long()
    hit = (log_probs.argmax(1) == labels).double()
    per_class = {str(k): float(hit[labels == k].mean()) for k in sorted(labels.unique().tolist())}
    return {"accuracy": float(hit.mean()), "per_class": per_class,
            "log_prob": float(log_probs.gather(1, labels[:, None]).mean()), "chance": 1 / log_probs.shape[1]}


class ClassAccuracy(MetricGroup):
    """``accuracy``: :func:`class_accuracy` of every seed set."""

    names = ("accuracy",)

    def problem(self, name: str, model, datamodule) -> str | None:
        """Why the class accuracy of conditional samples does not apply (None: it does; for samples made elsewhere the
        labels come from their file, checked when they are read)."""
        if model is None or model.condition_labels(torch.arange(1)) is None:
            return "accuracy measures conditional samples: the model is unconditional (no class labels to check)"
        if model.condition["class_label"] == -1:
            return "accuracy measures conditional samples: --class_label -1 draws the unconditional model"
        if not datamodule.can_classify:
            return f"{datamodule.label} has no reference classifier for the class accuracy"
        return None

    def measure(self, context: EvaluationContext, names: tuple[str, ...]) -> Measured:
        model, elsewhere = context.model, context.made_elsewhere
        given = (context.samples_source or {}).get("labels") if elsewhere else None
        if elsewhere and (not given or any(y is None for y in given)):
            raise EvaluationError("accuracy of samples made elsewhere needs the classes they were drawn for: an .npz"
                                  " with a 'labels' array (lit-score sample writes one), or drop accuracy")
        rows = []
        for i, x in enumerate(context.sets):
            labels = given[i] if given else model.condition_labels(torch.arange(len(x)))
            if len(labels) != len(x):
                raise EvaluationError(f"{len(labels)} labels for {len(x)} samples in seed set {context.seeds[i]}")
            rows.append({"class_accuracy": class_accuracy(context.datamodule.class_log_probs(x), labels)})
        label = None if given else model.condition["class_label"]
        protocol = {"accuracy": {"classifier": f"{type(context.datamodule).__name__}.class_log_probs",
                                 "labels": "the samples' file's labels" if given else
                                 ("sample i requests class i mod K" if label is None
                                  else f"every sample requests class {label}")}}
        return Measured(rows, protocol)

    def summaries(self, per_seed: list[dict[str, Any]], measured: Measured) -> dict[str, dict[str, Any]]:
        rows = [row["class_accuracy"] for row in per_seed]
        per_class = {k: float(np.mean([r["per_class"][k] for r in rows])) for k in rows[0]["per_class"]}
        return {"accuracy": {**summarize([r["accuracy"] for r in rows]), "chance": rows[0]["chance"],
                             "per_class": per_class}}


__all__ = ["ClassAccuracy", "class_accuracy"]
