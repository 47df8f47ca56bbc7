"""Toy / tabular distances: energy distance, MMD and sliced W2 of each seed set, each beside its data-vs-data floor at
the same n, and the data's exact NLL of the samples where the data's density is known (the maths is
:mod:`lit_score.metrics.distances`)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch

from lit_score.atomic import jsonable
from lit_score.evaluation.groups.base import EvaluationContext, Measured, MetricGroup, summarize
from lit_score.metrics.distances import distance_floors, distance_report

_FLOORS: dict[str, dict[str, float]] = {}  # data-vs-data floors, per process: they depend only on the data and n

PROTOCOL = {"statistic": "median over draws",
            "mmd": "biased V-statistic, RBF kernels at 0.5/1/2 x the median distance",
            "sliced_wasserstein": "256 fixed projections",
            "floor": "median distance between two independent reference draws of the same n"}


def _floors(datamodule, draw, reference: str, n: int, draws: int, seed: int) -> dict[str, float]:
    """:func:`distance_floors` for this data, split, n and seed, computed once per process."""
    hparams = {k: v for k, v in dict(datamodule.hparams).items() if not k.startswith("_")}
    key = json.dumps(jsonable([type(datamodule).__qualname__, hparams, reference, n, draws, seed]), sort_keys=True)
    if key not in _FLOORS:
        _FLOORS[key] = distance_floors(draw, n, draws, seed + 1)
    return _FLOORS[key]


class ToyDistances(MetricGroup):
    """``distances``: sample-based distances to fresh draws of the data (toy) or to the reference split."""

    names = ("distances",)
    timing_key = "distances_s"

    def problem(self, name: str, model, datamodule) -> str | None:
        if datamodule.is_image:
            return "distances are for toy / tabular data: use fid,kid,isc,prc on images"
        return None

    def measure(self, context: EvaluationContext, names: tuple[str, ...]) -> Measured:
        start = time.perf_counter()
        datamodule, reference, draws = context.datamodule, context.reference, context.distance_draws
        n = min(context.distance_samples, *(len(x) for x in context.sets))
        draw = (lambda k, g: datamodule.reference_draw(k, g, reference))  # noqa: E731
        rows = []
        for x, seed in zip(context.sets, context.seeds):
            floors = _floors(datamodule, draw, reference, n, draws, 10_000 + seed)
            row = {"distances": distance_report(x[:n].double(), draw, draws, 10_000 + seed, floors=floors)}
            if datamodule.has_density:
                fresh = datamodule.reference_draw(n, torch.Generator().manual_seed(20_000 + seed), reference)
                row["data_nll"] = float(-datamodule.log_prob(x[:n].double()).mean())
                row["data_nll_floor"] = float(-datamodule.log_prob(fresh.double()).mean())
            rows.append(row)
        protocol = {"distances": {"num_samples": n, "num_draws": draws, **PROTOCOL}}
        return Measured(rows, protocol, seconds=time.perf_counter() - start)

    def summaries(self, per_seed: list[dict[str, Any]], measured: Measured) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in per_seed[0]["distances"]:
            rows = [row["distances"][name] for row in per_seed]
            out[name] = {**summarize([r["value"] for r in rows]), "floor": float(np.median([r["floor"] for r in rows])),
                         "ratio": summarize([r["ratio"] for r in rows])["mean"]}
        if "data_nll" in per_seed[0]:
            out["data_nll"] = {**summarize([row["data_nll"] for row in per_seed]),
                               "floor": float(np.mean([row["data_nll_floor"] for row in per_seed]))}
        return out


__all__ = ["ToyDistances"]
