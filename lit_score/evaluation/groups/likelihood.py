"""Likelihood: the negative log-likelihood (bits/dim) of held-out data by the family's estimator(s) — PF-ODE, DDPM VLB,
EBM quadrature or AIS — scored once on the test split, whatever the samples (the maths is
:mod:`lit_score.metrics.likelihood` and :mod:`lit_score.metrics.estimators`)."""

from __future__ import annotations

import time
from typing import Any

import torch

from lit_score.evaluation.groups.base import EvaluationContext, EvaluationError, Measured, MetricGroup, dequantization
from lit_score.metrics.likelihood import LikelihoodEstimate

#: the estimator names that ``likelihood_options`` may be keyed by (options per estimator)
ESTIMATORS = {"pf_ode", "vlb", "quadrature", "ais"}


def _estimator_options(options: dict[str, Any], name: str, dim: int) -> dict[str, Any]:
    """The options of estimator ``name``: its own entry when the options are keyed by estimator, else all of them; the
    PF-ODE divergence is exact up to 8 dimensions and Hutchinson's beyond, unless given."""
    per_estimator = bool(options) and set(options) <= ESTIMATORS
    opts = dict(options.get(name) or {}) if per_estimator else dict(options)
    if name == "pf_ode":
        opts.setdefault("divergence", "exact" if dim <= 8 else "hutchinson")
    return opts


def held_out_likelihood(model, datamodule, n, estimator, options, seed, chunk_size: int = 250) -> dict[str, dict]:
    """NLL of the first n held-out samples by the requested estimator(s) (``"all"``: every one the model offers; None:
    its first): one record each."""
    dequantize = dequantization(datamodule)
    available = model.likelihood_estimators(dequantize)
    names = list(available) if estimator == "all" else [estimator or available[0]]
    held_out = datamodule.split_dataset("test")
    x = torch.stack([held_out[i] for i in range(min(n, len(held_out)))])
    out = {}
    for name in names:
        opts = _estimator_options(dict(options or {}), name, x[0].numel())
        generator = torch.Generator(model.device).manual_seed(seed)
        try:  # in chunks, so a big held-out set fits in memory; one generator runs through all of them
            size = len(x) if model.likelihood_normalizes_once(name) else chunk_size
            parts = [model.likelihood(chunk, name, dequantize=dequantize, generator=generator, **opts)
                     for chunk in x.split(size)]
        except TypeError as err:
            raise EvaluationError(f"likelihood options {sorted(opts)} do not fit the {name} estimator ({err}): give "
                                  'them per estimator, e.g. {"pf_ode": {"fixed_steps": 100}}') from err
        estimate = LikelihoodEstimate.concatenate(parts)
        out[name] = {**estimate.to_dict(), "split": "test"}
    return out


class Likelihood(MetricGroup):
    """``bpd``: :func:`held_out_likelihood` with the first seed set's seed; one record per estimator."""

    names = ("bpd",)
    measures_samples = False
    timing_key = "likelihood_s"

    def problem(self, name: str, model, datamodule) -> str | None:
        if model is None or not model.likelihood_estimators(dequantization(datamodule)):
            return f"{type(model).__name__} offers no likelihood estimator for this data"
        return None

    def measure(self, context: EvaluationContext, names: tuple[str, ...]) -> Measured:
        start = time.perf_counter()
        records = held_out_likelihood(context.model, context.datamodule, context.likelihood_samples,
                                      context.likelihood_estimator, context.likelihood_options, context.seeds[0])
        return Measured([{} for _ in context.seeds], seconds=time.perf_counter() - start, records=records)

    def summaries(self, per_seed: list[dict[str, Any]], measured: Measured) -> dict[str, dict[str, Any]]:
        out = {}
        for name, record in measured.records.items():
            key = "bpd" if len(measured.records) == 1 else f"bpd_{name}"
            out[key] = {"mean": record["bits_per_dim"], "std": None, "sem": record["bits_per_dim_sem"],
                        "per_seed": None, **{k: v for k, v in record.items() if k not in ("bits_per_dim",)}}
        return out


__all__ = ["ESTIMATORS", "Likelihood", "held_out_likelihood"]
