"""The torch-fidelity adapter: samples → uint8 images → a registered feature extractor → FID / KID / IS / PR.

Every number comes from ``torch_fidelity.calculate_metrics`` itself, fed with in-memory uint8 datasets (no PNG round
trip; the values equal those of the same images written as PNGs). This module only prepares the inputs, resolves the
feature extractor without ever downloading, names the reference-feature cache, and records the protocol.

| name | meaning |
|---|---|
| x ∈ [lo, hi] | a sample in the data range (images: [−1, 1]) |
| u = round(255·(x − lo)/(hi − lo)) | its 8-bit image, clamped to 0 … 255 (as a PNG holds it); grey repeated to RGB |
| features | the extractor's FID/KID/PR layer (Inception: pool3, 2048-d; digits: the classifier's penultimate layer) |
| logits | the IS layer (Inception: ``logits_unbiased``; digits: the 10 class logits) |

Reference features are cached by torch-fidelity under ``cache_root`` with the name
``<dataset>-<split>-<sha of the reference uint8 images>-w<sha of the extractor weights>``, so a cache entry can never
be read for other data or other weights.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_score.metrics.digits_extractor import SHIPPED_EXTRACTORS, default_weights_path, register_digits_extractor
from lit_score.utils import sha256_file

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
METRICS = ("fid", "kid", "isc", "prc")
_KEYS = {  # torch-fidelity's result keys → ours
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid",
    "kernel_inception_distance_std": "kid_subset_std",
    "inception_score_mean": "isc",
    "inception_score_std": "isc_split_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}


def to_uint8(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Samples (B, C, H, W) in ``data_range`` → uint8 (B, 3, H, W) as a PNG of them would hold (grey repeated).

    Non-finite values become 0 (count them first with :func:`count_nonfinite`: they are a failure, not data).
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image metrics need samples of shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        u = x
    else:
        lo, hi = data_range
        scaled = ((x.detach().float().cpu() - lo) / (hi - lo)).nan_to_num(0.0, 0.0, 0.0).clamp(0, 1)
        u = (scaled * 255).round().to(torch.uint8)
    return u.expand(-1, 3, -1, -1).contiguous() if u.shape[1] == 1 else u.cpu().contiguous()


def dataset_to_uint8(dataset: Dataset, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Every item of an image dataset as uint8 (N, 3, H, W), converted one at a time (never the float split)."""
    return torch.cat([to_uint8(dataset[i][None], data_range) for i in range(len(dataset))])


def count_nonfinite(x: Tensor) -> int:
    """Number of samples with any NaN / inf value."""
    if not x.is_floating_point():
        return 0
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())


def sha256_tensor(x: Tensor) -> str:
    """sha256 of a tensor's bytes (contiguous, CPU) with its dtype and shape."""
    x = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    digest.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return digest.hexdigest()


class UInt8Images(Dataset):
    """In-memory uint8 images (N, 3, H, W), one per item: torch-fidelity's Dataset input."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


@dataclass
class FeatureExtractorSpec:
    """A torch-fidelity feature extractor as a metric records it: registry name, weights file and its sha256."""

    name: str
    weights_path: str | None
    weights_sha256: str | None
    layers: dict[str, str] = field(default_factory=dict)  # metric → feature layer

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def kwargs(self) -> dict[str, object]:
        """The keyword arguments of ``calculate_metrics`` that select this extractor."""
        out: dict[str, object] = {"feature_extractor": self.name}
        if self.weights_path is not None:
            out["feature_extractor_weights_path"] = self.weights_path
        out.update({f"feature_layer_{metric}": layer for metric, layer in self.layers.items()})
        return out


def inception_weights_path(weights_path: str | Path | None = None) -> Path:
    """The Inception weights file: ``weights_path``, else torch-fidelity's cache; a one-line error when absent."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights {path} do not exist: pass the path of {INCEPTION_FILE}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found: put {INCEPTION_FILE} (from {INCEPTION_URL}) into {cache}/ or pass "
            "--feature_extractor_weights_path FILE (lit-score never downloads them; use --feature_extractor digits "
            "for the built-in digits)"
        )
    return path


def _registry() -> dict:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY


def resolve_feature_extractor(name: str, weights_path: str | Path | None = None) -> FeatureExtractorSpec:
    """``inception-v3-compat`` (weights from the cache or ``weights_path``), ``digits`` / ``digits-v2`` (shipped), a
    class path of a ``torch_fidelity.FeatureExtractorBase`` subclass (registered under that path), or another
    registered name with an explicit ``weights_path``. Never downloads anything."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    registry = _registry()
    if name == INCEPTION:
        path: Path | None = inception_weights_path(weights_path)
    elif name in SHIPPED_EXTRACTORS:
        register_digits_extractor(name)
        path = Path(weights_path) if weights_path is not None else default_weights_path(name)
    elif name in registry:
        if weights_path is None:
            raise FileNotFoundError(
                f"feature extractor {name!r} needs --feature_extractor_weights_path (lit-score never downloads weights)"
            )
        path = Path(weights_path)
    elif re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", name):
        module, _, cls_name = name.rpartition(".")
        try:
            cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"feature extractor {name!r} cannot be imported: {err}") from err
        if not (isinstance(cls, type) and issubclass(cls, FeatureExtractorBase)):
            raise ValueError(f"feature extractor {name!r} is not a torch_fidelity FeatureExtractorBase subclass")
        if name not in registry:
            from torch_fidelity import register_feature_extractor

            register_feature_extractor(name, cls)
        path = Path(weights_path) if weights_path is not None else None
    else:
        raise ValueError(
            f"unknown feature extractor {name!r}: use {INCEPTION}, {', '.join(SHIPPED_EXTRACTORS)} or the class path "
            "of a torch_fidelity.FeatureExtractorBase subclass"
        )
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"feature extractor weights {path} do not exist")
    cls = registry[name]
    layers = {}
    for metric in METRICS:  # a user's extractor may serve only some metrics (no IS layer, say)
        try:
            layers[metric] = cls.get_default_feature_layer_for_metric(metric)
        except (KeyError, ValueError, NotImplementedError):
            continue
    return FeatureExtractorSpec(name, str(path) if path else None, sha256_file(path) if path else None, layers)


def reference_cache_name(dataset: str, split: str, reference: Tensor, extractor: FeatureExtractorSpec) -> str:
    """torch-fidelity cache entry name for reference features: dataset, split, content hash, weights hash."""
    clean = re.sub(r"[^\w.-]+", "_", f"{dataset}-{split}")
    weights = (extractor.weights_sha256 or "none")[:12]
    return f"lit-score-{clean}-{sha256_tensor(reference)[:16]}-w{weights}"


@dataclass
class FidelityResult:
    """Metric values (``fid``, ``kid``, ``kid_subset_std``, ``isc``, ``isc_split_std``, ``precision``, ``recall``,
    ``f_score``: those asked for) and the protocol that produced them."""

    values: dict[str, float]
    protocol: dict[str, object]
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {"values": self.values, "protocol": self.protocol, "seconds": self.seconds}


def fidelity_metrics(
    samples: Tensor,
    reference: Tensor,
    *,
    metrics: tuple[str, ...] = ("fid", "kid", "isc"),
    extractor: FeatureExtractorSpec,
    reference_name: str | None = None,
    cache_root: str | Path | None = None,
    cuda: bool = False,
    batch_size: int = 64,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    isc_splits: int = 10,
    prc_neighborhood: int = 3,
    rng_seed: int = 2020,
    verbose: bool = False,
) -> FidelityResult:
    """FID / KID / IS / precision-recall of uint8 ``samples`` (N, 3, H, W) against uint8 ``reference`` images.

    ``reference_name`` (e.g. from :func:`reference_cache_name`) caches the reference features under ``cache_root``;
    None computes them afresh. ``kid_subset_size`` defaults to min(1000, N, N_ref) (KID needs that many per subset).
    """
    import torch_fidelity

    _check_request(metrics, extractor, cuda)
    kid_subset_size = kid_subset_size or min(1000, len(samples), len(reference))
    options = {
        "input1": UInt8Images(samples),
        "input2": UInt8Images(reference),
        "cuda": cuda,
        "batch_size": batch_size,
        **{name: name in metrics for name in METRICS},  # fid, kid, isc, prc: which torch-fidelity computes
        "kid_subset_size": kid_subset_size,
        "kid_subsets": kid_subsets,
        "isc_splits": isc_splits,
        "prc_neighborhood": prc_neighborhood,
        "rng_seed": rng_seed,
        "cache": reference_name is not None,
        "input2_cache_name": reference_name,
        "save_cpu_ram": True,  # no loader worker processes
        "verbose": verbose,
        **extractor.kwargs(),
    }
    if cache_root is not None:
        Path(cache_root).mkdir(parents=True, exist_ok=True)
        options["cache_root"] = str(cache_root)
    start = time.perf_counter()
    raw = torch_fidelity.calculate_metrics(**options)
    seconds = time.perf_counter() - start
    values = {_KEYS[k]: float(v) for k, v in raw.items() if k in _KEYS}
    settings = {"kid_subset_size": kid_subset_size, "kid_subsets": kid_subsets, "isc_splits": isc_splits,
                "prc_neighborhood": prc_neighborhood}
    protocol = _protocol(samples, reference, metrics, extractor, settings, rng_seed, reference_name,
                         torch_fidelity.__version__)
    return FidelityResult(values, protocol, seconds)


def _check_request(metrics: tuple[str, ...], extractor: FeatureExtractorSpec, cuda: bool) -> None:
    """Fail before any work on metrics that are unknown, that the extractor has no layer for, or none, or no CUDA."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown image metrics {sorted(unknown)}: choose from {', '.join(METRICS)}")
    missing = [m for m in metrics if m not in extractor.layers]
    if missing:
        raise ValueError(f"feature extractor {extractor.name} has no layer for {', '.join(missing)}")
    if not metrics:
        raise ValueError("no image metric asked for")
    if cuda and not torch.cuda.is_available():
        raise ValueError("feature extraction on CUDA was asked for but no CUDA device is available")


#: the metric each of fidelity_metrics' settings belongs to (a setting is recorded only where its metric was asked for)
_SETTING_OF = {"kid_subset_size": "kid", "kid_subsets": "kid", "isc_splits": "isc", "prc_neighborhood": "prc"}


def _protocol(samples, reference, metrics, extractor, settings: dict[str, int], rng_seed, reference_name,
              version: str) -> dict:
    """How :func:`fidelity_metrics` measured (what it was given, the settings of the metrics asked for, versions)."""
    return {"metrics": list(metrics), "feature_extractor": extractor.to_dict(), "num_samples": len(samples),
            "num_reference": len(reference), "image_shape": list(samples.shape[1:]),
            **{k: v if _SETTING_OF[k] in metrics else None for k, v in settings.items()},
            "rng_seed": rng_seed, "reference_cache": reference_name, "torch_fidelity": version}


def cached_reference_features(reference_name: str, extractor: FeatureExtractorSpec, cache_root: str | Path) -> Path:
    """Path of torch-fidelity's cached FID-layer features of a reference (written by :func:`fidelity_metrics`)."""
    return Path(cache_root) / f"{reference_name}-{extractor.name}-features-{extractor.layers['fid']}.pt"
