"""The metric groups of ``evaluate`` (``--metrics``), one object each behind one interface (:class:`MetricGroup`).

| group | names | data | what | against |
|---|---|---|---|---|
| :class:`ImageFidelity` | ``fid`` ``kid`` ``isc`` ``prc`` | images | torch-fidelity on the uint8 samples | the split |
| :class:`ToyDistances` | ``distances`` | not images | energy distance, MMD, sliced W2 beside their floors; | |
| | | | the data's exact NLL of the samples where the density is known | fresh draws |
| :class:`ClassAccuracy` | ``accuracy`` | labelled | a reference classifier's accuracy on conditional samples | labels |
| :class:`Likelihood` | ``bpd`` | any | NLL of held-out data by the family's estimator (no samples) | test split |

A new group subclasses :class:`MetricGroup` and joins :data:`GROUPS`, whose order is the order of metrics.json.
"""

from __future__ import annotations

from lit_score.evaluation.groups.accuracy import ClassAccuracy, class_accuracy
from lit_score.evaluation.groups.base import (
    EvaluationContext,
    EvaluationError,
    Measured,
    MetricGroup,
    dequantization,
    summarize,
)
from lit_score.evaluation.groups.distances import ToyDistances
from lit_score.evaluation.groups.images import PUBLISHED_N, ImageFidelity
from lit_score.evaluation.groups.likelihood import Likelihood, held_out_likelihood

#: every group, in the order evaluate measures them and metrics.json lists them
GROUPS: tuple[MetricGroup, ...] = (ImageFidelity(), ToyDistances(), ClassAccuracy(), Likelihood())


def group_of(name: str) -> MetricGroup | None:
    """The group that measures the metric ``name`` (None: no group does)."""
    return next((group for group in GROUPS if name in group.names), None)


__all__ = ["GROUPS", "PUBLISHED_N", "ClassAccuracy", "EvaluationContext", "EvaluationError", "ImageFidelity",
           "Likelihood", "Measured", "MetricGroup", "ToyDistances", "class_accuracy", "dequantization", "group_of",
           "held_out_likelihood", "summarize"]
