"""The interface every metric group of ``evaluate`` has, and what a group is given and gives back.

| name | what |
|---|---|
| :class:`MetricGroup` | one group of ``--metrics`` names: whether it applies, needs samples; ``measure``, summaries |
| :class:`EvaluationContext` | what a group measures: model, data, the seed sets' samples, reference split, options |
| :class:`Measured` | what ``measure`` gives back: a row per seed set, protocol entries, notes, seconds, records |
| :func:`summarize` | mean, std and per-seed values of one metric over the seed sets |

A group measures; ``evaluate`` generates the samples, runs the groups that were asked for in :data:`GROUPS` order
(so metrics.json reads the same whatever the order of ``--metrics``), and merges what they give back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lit_score.data import GenerativeDataModule


class EvaluationError(ValueError):
    """Input that evaluation cannot use (reported as one line by the CLI)."""


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """mean, std (over seed sets, ddof 1; None for one set) and the per-seed values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if len(finite) == len(values) and finite else math.nan
    std = float(np.std(finite, ddof=1)) if len(finite) == len(values) and len(finite) > 1 else None
    return {"mean": mean, "std": std, "per_seed": list(values)}


def dequantization(datamodule: GenerativeDataModule) -> str:
    """How a likelihood treats this data: 8-bit images are dequantised uniformly, anything else is continuous."""
    return "uniform8bit" if datamodule.is_image else "none"


@dataclass
class EvaluationContext:
    """What the groups measure: the seed sets' samples (``sets``, none when no group needs samples) with their
    ``seeds``, the ``reference`` split, whether they were ``made_elsewhere`` (read from files, described by
    ``samples_source``) rather than by the model, and each group's options."""

    model: Any
    datamodule: GenerativeDataModule
    sets: list[Tensor]
    seeds: list[int]
    reference: str = "train"
    made_elsewhere: bool = False
    samples_source: dict[str, Any] | None = None
    extractor: Any = None
    cache_root: Path | None = None
    cuda: bool = False
    kid_subset_size: int | None = None
    half_samples: int = 20
    distance_samples: int = 4000
    distance_draws: int = 5
    likelihood_samples: int = 1000
    likelihood_estimator: str | None = None
    likelihood_options: dict[str, Any] | None = None


@dataclass
class Measured:
    """What one group measured: ``rows`` (one dict per seed set, merged into that set's per-seed row), ``protocol``
    entries, ``notes``, the ``seconds`` it took (under its ``timing_key``), ``records`` measured once rather than per
    seed set (likelihood estimates of the held-out split) and the size of the reference split it used."""

    rows: list[dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    records: dict[str, Any] = field(default_factory=dict)
    reference_num_samples: int | None = None


class MetricGroup:
    """One group of metrics. ``names`` are what ``--metrics`` takes for it; ``measures_samples`` says whether it
    measures generated samples (else only held-out data: nothing is generated for it alone); ``timing_key`` is its
    entry of the protocol's wall times."""

    names: tuple[str, ...] = ()
    measures_samples: bool = True
    timing_key: str = ""

    def problem(self, name: str, model, datamodule: GenerativeDataModule) -> str | None:
        """Why the metric ``name`` of this group does not apply to this model and data (None: it does)."""
        return None

    def measure(self, context: EvaluationContext, names: tuple[str, ...]) -> Measured:
        """Measure the metrics ``names`` (this group's that were asked for)."""
        raise NotImplementedError

    def summaries(self, per_seed: list[dict[str, Any]], measured: Measured) -> dict[str, dict[str, Any]]:
        """metrics.json's ``metrics`` entries of this group: name → {mean, std, per_seed, …}."""
        raise NotImplementedError


__all__ = ["EvaluationContext", "EvaluationError", "Measured", "MetricGroup", "dequantization", "summarize"]
