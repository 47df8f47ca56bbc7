"""The image-metric part of ``evaluate``: each seed set against its reference, beside the data floor at the same n.

Orchestration only (the maths is :mod:`lit_score.metrics.image_quality`): pick each seed set's floor plan, cut the
reference and the floor images, call :func:`~lit_score.metrics.image_quality.image_quality`, and summarise the seed
sets — mean, standard error (over seed sets when there are at least :data:`MIN_SEEDS_FOR_SEM`, else the half-sampling
errors of the sets combined), and the floor with its standard error.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from torch import Tensor

from lit_score.metrics import fidelity
from lit_score.metrics.image_quality import ERROR_METRICS, floor_plan, image_quality

MIN_SEEDS_FOR_SEM = 3  # fewer seed sets give a standard deviation too noisy to be an error bar
FLOOR_SEED = 30_000  # floor plans are drawn with FLOOR_SEED + the seed set's seed


def image_rows(datamodule, sets: list[Tensor], seeds: list[int], per_seed: list[dict[str, Any]], reference: str,
               metrics: tuple[str, ...], extractor, cache_root, cuda: bool, kid_subset_size: int | None,
               half_samples: int) -> tuple[dict[str, Any], list[str], float]:
    """Measure every seed set into its ``per_seed`` row; return (protocol entries, notes, seconds)."""
    ref_all = fidelity.dataset_to_uint8(datamodule.split_dataset(reference), datamodule.data_range)
    other = "test" if reference == "train" else "train"
    held_out = fidelity.dataset_to_uint8(datamodule.split_dataset(other), datamodule.data_range)
    protocol: dict[str, Any] = {}
    notes: list[str] = []
    seconds = 0.0
    plans, shas = [], []
    for row, x, seed in zip(per_seed, sets, seeds):
        u8 = fidelity.to_uint8(x, datamodule.data_range)
        plan = floor_plan(len(u8), len(ref_all), len(held_out), FLOOR_SEED + seed)
        floor_images = None if plan.scheme == "none" else (
            held_out if plan.floor_split == "held_out" else ref_all)[plan.floor_index]
        start = time.perf_counter()
        quality = image_quality(u8, ref_all[plan.reference_index], floor_images, metrics=metrics, extractor=extractor,
                                dataset=datamodule.label, split=reference, cache_root=cache_root, cuda=cuda,
                                kid_subset_size=kid_subset_size, half_samples=half_samples, seed=seed)
        row.update(quality.values)
        row.update(errors=quality.errors, floor=quality.floor, floor_errors=quality.floor_errors,
                   realism_flagged_index=quality.flagged)
        seconds += time.perf_counter() - start
        protocol["image_metrics"] = {k: v for k, v in quality.protocol.items()}
        plans.append(plan.to_dict())
        name = fidelity.reference_cache_name(datamodule.label, reference, ref_all[plan.reference_index], extractor)
        cached = fidelity.cached_reference_features(name, extractor, cache_root)
        shas.append(fidelity.sha256_file(cached) if cached.is_file() else None)
    protocol["floor"] = {"plans": plans, "same_n": True, "what": (
        "the data floor: n real images against the same reference as the samples (scheme 'held-out split': n held-out "
        "images vs the whole reference split; 'reference subsample': the reference split cut into n floor images and "
        "the rest, which is then the reference of the samples too)")}
    protocol["reference_num_samples"] = plans[0]["num_reference"]
    protocol["reference_features_sha256"] = shas[0]  # of the first seed set's reference (each set's: below)
    protocol["reference_features_sha256_per_seed"] = shas
    if plans[0]["scheme"] == "none":
        notes.append(f"no data floor: neither the {other} split ({len(held_out)} images) nor the {reference} split "
                     f"({len(ref_all)}) can give n = {len(sets[0])} real images beside a reference")
    if plans[0]["scheme"] == "reference subsample":
        notes.append(f"the {other} split has {len(held_out)} images < n = {len(sets[0])}: the floor is n {reference} "
                     f"images cut from the reference, whose other {plans[0]['num_reference']} images are the reference "
                     "of samples and floor alike")
    return protocol, notes, seconds


def _sem(values: list[float], errors: list[float | None]) -> tuple[float, str]:
    if len(values) >= MIN_SEEDS_FOR_SEM:
        return float(np.std(values, ddof=1) / math.sqrt(len(values))), "seed sets"
    if any(e is None for e in errors):
        return math.nan, "none"
    return math.sqrt(sum(e * e for e in errors)) / len(errors), "half-sampling"


def image_summaries(per_seed: list[dict[str, Any]], summarize) -> dict[str, dict[str, Any]]:
    """name → {mean, std, per_seed, sem, sem_from, floor, floor_sem} for every image metric the rows hold."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("fid", "kid", "kid_subset_std", "isc", "isc_split_std", "precision", "recall", "f_score",
                "realism_flagged", "broken_share"):
        if key not in per_seed[0]:
            continue
        values = [row[key] for row in per_seed]
        summary = summarize(values)
        if key in ERROR_METRICS:
            summary["sem"], summary["sem_from"] = _sem(values, [row["errors"].get(key) for row in per_seed])
        if key in per_seed[0].get("floor", {}):
            floors = [row["floor"][key] for row in per_seed]
            summary["floor"] = float(np.mean(floors))
            if key in ERROR_METRICS:
                summary["floor_sem"] = _sem(floors, [row["floor_errors"].get(key) for row in per_seed])[0]
        out[key] = summary
    return out
