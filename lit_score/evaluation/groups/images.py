"""Image fidelity: FID, KID, IS and precision / recall (with realism) of each seed set, beside the data floor at the
same n, with error bars (the work is :mod:`lit_score.evaluation.image_rows`)."""

from __future__ import annotations

from typing import Any

from lit_score.evaluation.groups.base import EvaluationContext, EvaluationError, Measured, MetricGroup, summarize
from lit_score.evaluation.image_rows import image_rows, image_summaries
from lit_score.metrics import fidelity

PUBLISHED_N = 50_000  # samples behind published CIFAR-10 FID / IS numbers


class ImageFidelity(MetricGroup):
    """``fid`` ``kid`` ``isc`` ``prc``: torch-fidelity on the uint8 samples against the reference split."""

    names = fidelity.METRICS
    timing_key = "features_s"

    def problem(self, name: str, model, datamodule) -> str | None:
        if not datamodule.is_image:
            return f"{name} needs image data, the data has sample shape {datamodule.sample_shape}: use distances"
        return None

    def measure(self, context: EvaluationContext, names: tuple[str, ...]) -> Measured:
        rows: list[dict[str, Any]] = [{} for _ in context.sets]
        try:
            protocol, notes, seconds = image_rows(
                context.datamodule, context.sets, context.seeds, rows, context.reference, names, context.extractor,
                context.cache_root, context.cuda, context.kid_subset_size, context.half_samples)
        except ValueError as err:
            raise EvaluationError(str(err)) from err
        reference_num_samples = protocol.pop("reference_num_samples")
        if min(len(x) for x in context.sets) < PUBLISHED_N:
            notes.append(f"{len(context.sets[0])} samples per set: published CIFAR-10 FID / IS use {PUBLISHED_N}; FID "
                         "is biased upwards at small N, so compare only numbers of the same N (each row's floor is)")
        return Measured(rows, protocol, notes, seconds, reference_num_samples=reference_num_samples)

    def summaries(self, per_seed: list[dict[str, Any]], measured: Measured) -> dict[str, dict[str, Any]]:
        return image_summaries(per_seed, summarize)


__all__ = ["PUBLISHED_N", "ImageFidelity"]
