"""Image metrics with their proof: the data floor at the same n and reference, standard errors, broken samples.

One seed set is measured by :func:`image_quality`: torch-fidelity's FID / KID / IS / precision-recall of the samples
(:func:`~lit_score.metrics.fidelity.fidelity_metrics`), the same metrics of n real images against the same reference
(the floor), a standard error of each by half-sampling, and the share of samples flagged off the data manifold by k-NN
realism (:mod:`lit_score.metrics.realism`) beside the data's own share.

**Floor at the same n** (:func:`floor_plan`). FID's bias depends on n and on the reference, so the floor is computed at
exactly the samples' n against exactly the samples' reference. Two schemes, chosen by size:

- ``held-out split``: the held-out split has at least n images: the floor is n of them (drawn by the seed) against the
  whole reference split, which the samples also face.
- ``reference subsample``: otherwise (the digits: 180 held-out images, n = 500 samples), the reference split is cut by
  the seed into n floor images and the rest; that rest is the reference of the samples *and* of the floor. Each seed
  set has its own cut, so the spread over seeds includes the reference's. The floor images are training images: a
  feature extractor trained on them finds them slightly more typical than new images (digits-v2: FID of the 180
  held-out digits ≈ 1.8× that of 180 training digits against the same reference), so this floor is a lower bound.

**Standard errors** (:func:`half_sample_errors`): B random halves of the samples (without replacement; the reference
fixed), each metric recomputed by torch-fidelity's own feature-level functions; the spread of a half-sample statistic
estimates the standard error at n (the delete-d jackknife with d = n/2, whose factor (n − d)/d is 1; exact for means).
FID is not a mean and its n-bias grows at n/2, so the estimate errs on the safe side: on digits-v2 at n = 300 against
817 training digits, the spread over 40 draws was 1.6 (clean) and 16.7 (a quarter speckled), half-sampling single
sets gave 1.8–3.3 and 16–25. The evaluation reports the standard error over seed sets instead when it has three or more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_score.metrics.fidelity import (
    FeatureExtractorSpec,
    UInt8Images,
    cached_reference_features,
    fidelity_metrics,
    reference_cache_name,
)
from lit_score.metrics.realism import broken_share, realism

ERROR_METRICS = ("fid", "kid", "precision", "recall")  # the rows that carry a standard error
HALF_SAMPLES = 20


@dataclass
class FloorPlan:
    """Which reference images the samples and the floor face, and which n real images make the floor."""

    scheme: str  # "held-out split" or "reference subsample"
    reference_index: Tensor  # into the reference split
    floor_split: str  # "held_out" or "reference": where the floor's images come from
    floor_index: Tensor
    seed: int

    def to_dict(self) -> dict[str, object]:
        return {"scheme": self.scheme, "num_reference": len(self.reference_index), "num_floor": len(self.floor_index),
                "floor_images_from": self.floor_split, "seed": self.seed}


def floor_plan(n: int, num_reference: int, num_held_out: int, seed: int) -> FloorPlan:
    """The floor of n samples: n held-out images against the whole reference when the held-out split has n, else n
    images cut from the reference split (the rest, at least 2, is the reference of both); scheme ``none`` (no floor,
    the whole reference) when neither fits. Drawn by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    if num_held_out >= n:
        floor = torch.randperm(num_held_out, generator=generator)[:n].sort().values
        return FloorPlan("held-out split", torch.arange(num_reference), "held_out", floor, seed)
    if num_reference - n < 2:  # neither split can give n images beside a reference: no floor, the whole reference
        return FloorPlan("none", torch.arange(num_reference), "none", torch.arange(0), seed)
    order = torch.randperm(num_reference, generator=generator)
    return FloorPlan("reference subsample", order[n:].sort().values, "reference", order[:n].sort().values, seed)


def extract_features(images: Tensor, extractor: FeatureExtractorSpec, cuda: bool = False,
                     batch_size: int = 64) -> Tensor:
    """The extractor's FID-layer features of uint8 images (N, 3, H, W), through torch-fidelity's own loader path."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    kwargs = {k: v for k, v in extractor.kwargs().items() if k == "feature_extractor_weights_path"}
    layer = extractor.layers["fid"]
    network = create_feature_extractor(extractor.name, [layer], cuda=cuda, verbose=False, **kwargs)
    return get_featuresdict_from_dataset(UInt8Images(images), network, batch_size, cuda, True, False)[layer]


def _reference_features(reference: Tensor, extractor: FeatureExtractorSpec, name: str, cache_root: str | Path | None,
                        cuda: bool) -> Tensor:
    """The reference's FID-layer features from torch-fidelity's cache entry ``name`` (written there, in its format,
    when absent: an FID-only run caches statistics alone), else extracted afresh (no ``cache_root``)."""
    if cache_root is None:
        return extract_features(reference, extractor, cuda)
    path = cached_reference_features(name, extractor, cache_root)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    features = extract_features(reference, extractor, cuda)
    tmp = path.with_name(path.name + ".partial")
    torch.save(features, tmp)
    tmp.replace(path)
    return features


def feature_metrics(samples: Tensor, reference: Tensor, metrics: tuple[str, ...], *, kid_subset_size: int,
                    kid_subsets: int = 100, prc_neighborhood: int = 3, rng_seed: int = 2020) -> dict[str, float]:
    """FID / KID / precision-recall of feature sets (N, D) and (M, D) by torch-fidelity's feature-level functions."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    out: dict[str, float] = {}
    if "fid" in metrics:
        stats = [fid_features_to_statistics(f.double()) for f in (samples, reference)]
        out["fid"] = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    if "kid" in metrics:
        kid = kid_features_to_metric(samples, reference, kid_subsets=kid_subsets, rng_seed=rng_seed,
                                     kid_subset_size=kid_subset_size, verbose=False)
        out["kid"] = kid["kernel_inception_distance_mean"]
    if "prc" in metrics:
        prc = prc_features_to_metric(samples, reference, prc_neighborhood=prc_neighborhood, save_cpu_ram=True,
                                     verbose=False)
        out.update(precision=prc["precision"], recall=prc["recall"])
    return out


class ReferenceStatistics:
    """What every half-sample is compared with, computed once: the reference's mean and covariance Σ_r (FID) and its
    k-NN radii (precision). FID's tr√(Σ Σ_r) comes from a symmetric eigenproblem where torch-fidelity solves the
    non-symmetric one every time — the same value up to rounding, several times faster at 2,048 dimensions (the
    half-samples' cost is their FIDs): with Σ = AᵀA (A the m centred samples / √(m − 1)), the non-zero eigenvalues of
    Σ Σ_r are those of A Σ_r Aᵀ (m × m, used when m < D) and of Σ_r^½ Σ Σ_r^½ (D × D, otherwise)."""

    def __init__(self, reference: Tensor, neighborhood: int = 3, chunk: int = 4096) -> None:
        f = reference.double().numpy()
        self.mu, self.sigma = f.mean(axis=0), np.cov(f, rowvar=False)
        self._root: np.ndarray | None = None
        self.features, self.neighborhood, self.chunk = reference.float(), neighborhood, chunk
        self.radii = self._radii(self.features)

    @property
    def root(self) -> np.ndarray:
        """Σ_r^½ (symmetric), computed on first use."""
        if self._root is None:
            w, v = np.linalg.eigh(self.sigma)
            self._root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        return self._root

    def _radii(self, x: Tensor) -> Tensor:
        """Distance of each row to its k-th nearest other row (as torch-fidelity's precision / recall)."""
        return torch.cat([torch.cdist(part, x).kthvalue(self.neighborhood + 1, dim=1).values
                          for part in x.split(self.chunk)])

    def fid(self, samples: Tensor) -> float:
        g = samples.double().numpy()
        mu = g.mean(axis=0)
        a = (g - mu) / np.sqrt(len(g) - 1)  # Σ = aᵀa
        m = a @ self.sigma @ a.T if len(g) < g.shape[1] else self.root @ (a.T @ a) @ self.root
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(m), 0, None)).sum()
        diff = mu - self.mu
        return float(diff @ diff + (a * a).sum() + np.trace(self.sigma) - 2 * tr_covmean)

    def precision_recall(self, samples: Tensor) -> tuple[float, float]:
        """Kynkäänniemi et al.'s precision (samples inside a real ball) and recall (reals inside a sample ball)."""
        x = samples.float()
        radii = self._radii(x)
        inside = [(torch.cdist(part, self.features) <= self.radii).any(dim=1) for part in x.split(self.chunk)]
        covered = [(torch.cdist(part, x) <= radii).any(dim=1) for part in self.features.split(self.chunk)]
        return float(torch.cat(inside).double().mean()), float(torch.cat(covered).double().mean())


def half_sample_errors(samples: Tensor, reference: Tensor, metrics: tuple[str, ...], *, num: int = HALF_SAMPLES,
                       seed: int = 0, kid_subset_size: int = 1000, kid_subsets: int = 10,
                       prc_neighborhood: int = 3, stats: ReferenceStatistics | None = None) -> dict[str, float]:
    """Standard error at n of each metric from ``num`` random halves of the sample features (reference fixed;
    ``stats`` of it may be passed in to share them between calls)."""
    if num < 2:
        raise ValueError(f"a standard error from random halves needs num >= 2 halves, got {num}")
    generator = torch.Generator().manual_seed(seed)
    n = len(samples)
    stats = stats or ReferenceStatistics(reference, prc_neighborhood)
    values: dict[str, list[float]] = {}
    for _ in range(num):
        half = samples[torch.randperm(n, generator=generator)[: n // 2]]
        found: dict[str, float] = {}
        if "fid" in metrics:
            found["fid"] = stats.fid(half)
        if "kid" in metrics:
            found.update(feature_metrics(half, reference, ("kid",), kid_subsets=kid_subsets,
                                         kid_subset_size=min(kid_subset_size, n // 2, len(reference))))
        if "prc" in metrics:
            found["precision"], found["recall"] = stats.precision_recall(half)
        for name, value in found.items():
            values.setdefault(name, []).append(value)
    return {name: float(np.std(v, ddof=1)) for name, v in values.items()}


@dataclass
class ImageQuality:
    """One seed set: metric values, their standard errors, the floor's values and errors, and realism shares."""

    values: dict[str, float]
    errors: dict[str, float]
    floor: dict[str, float]
    floor_errors: dict[str, float]
    flagged: list[int] = field(repr=False, default_factory=list)  # indices of samples flagged off the manifold
    protocol: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"values": self.values, "errors": self.errors, "floor": self.floor, "floor_errors": self.floor_errors,
                "protocol": self.protocol}


def image_quality(samples: Tensor, reference: Tensor, floor_images: Tensor | None, *, metrics: tuple[str, ...],
                  extractor: FeatureExtractorSpec, dataset: str, split: str, cache_root: str | Path | None = None,
                  cuda: bool = False, kid_subset_size: int | None = None, half_samples: int = HALF_SAMPLES,
                  seed: int = 0) -> ImageQuality:
    """Every image metric of uint8 ``samples`` and of the n real ``floor_images`` against the uint8 ``reference``,
    with half-sampling standard errors and the realism share of flagged samples (``realism_flagged``) and its
    estimate of the broken fraction (``broken_share``) beside the floor's flagged share."""
    if floor_images is not None and len(floor_images) != len(samples):
        raise ValueError(f"a floor at the same n needs {len(samples)} real images, got {len(floor_images)}")
    name = reference_cache_name(dataset, split, reference, extractor)
    kid_subset_size = kid_subset_size or min(1000, len(samples), len(reference))
    common = dict(metrics=metrics, extractor=extractor, reference_name=name, cache_root=cache_root, cuda=cuda,
                  kid_subset_size=kid_subset_size)
    result = fidelity_metrics(samples, reference, **common)
    has_floor = floor_images is not None
    floor_metrics = tuple(m for m in metrics if m != "isc")
    floor = fidelity_metrics(floor_images, reference, **{**common, "metrics": floor_metrics}) \
        if has_floor and floor_metrics else None
    f_ref = _reference_features(reference, extractor, name, cache_root, cuda)
    f_x = extract_features(samples, extractor, cuda)
    wanted = tuple(m for m in metrics if m in ("fid", "kid", "prc")) if half_samples else ()
    stats = ReferenceStatistics(f_ref) if wanted else None  # shared by the samples' and the floor's halves
    errors = half_sample_errors(f_x, f_ref, wanted, num=half_samples, seed=seed, stats=stats) if wanted else {}
    sample_realism = realism(f_ref, f_x)
    values = dict(result.values)
    values["realism_flagged"] = sample_realism.flagged_share
    floor_values: dict[str, float] = {}
    floor_errors: dict[str, float] = {}
    if has_floor:
        f_floor = extract_features(floor_images, extractor, cuda)
        floor_errors = half_sample_errors(f_floor, f_ref, wanted, num=half_samples, seed=seed + 1,
                                          stats=stats) if wanted else {}
        floor_values = {**(floor.values if floor else {}), "realism_flagged": realism(f_ref, f_floor).flagged_share}
        values["broken_share"] = broken_share(sample_realism.flagged_share, floor_values["realism_flagged"])
    protocol = {**result.protocol, "error": f"half-sampling: std of each metric over {half_samples} random halves of "
                "the samples (reference fixed), the standard error at n", "realism": sample_realism.protocol}
    return ImageQuality(values, errors, floor_values, floor_errors,
                        torch.nonzero(sample_realism.flagged).flatten().tolist(), protocol)


def combined_error(*errors: float | None) -> float:
    """sqrt of the sum of squares (independent errors); NaN if any is missing."""
    if any(e is None or not math.isfinite(e) for e in errors):
        return math.nan
    return math.sqrt(sum(e * e for e in errors))


def is_tie(a: float, se_a: float | None, b: float, se_b: float | None) -> bool:
    """Whether two values differ by less than their combined standard error (no ranking between them)."""
    se = combined_error(se_a, se_b)
    return math.isfinite(se) and abs(a - b) < se
