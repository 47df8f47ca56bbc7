"""``evaluate``: sample a model through the one generation path and measure it, with the protocol beside every number.

Metric groups (``--metrics``):

| group | data | what | against |
|---|---|---|---|
| ``fid`` ``kid`` ``isc`` ``prc`` | images | torch-fidelity on the uint8 samples | the ``train`` / ``test`` split |
| ``distances`` | not images | energy distance, MMD, sliced W2 (each beside its data-vs-data floor at the same n); |
| | | the data's exact NLL of the samples where the density is known | fresh draws (toy) or the split |
| ``bpd`` | any | NLL of held-out data by the family's estimator (PF-ODE, DDPM VLB, EBM quadrature) | test split |

Every metric is a mean ± std over the seed sets (``seeds``) with its per-seed values, and one ``protocol`` records how
it was obtained. The functions here hold no metric maths: that is ``lit_score.metrics``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_score.atomic import jsonable
from lit_score.data import GenerativeDataModule
from lit_score.evaluation.image_rows import image_rows, image_summaries
from lit_score.generation import generate
from lit_score.metrics import fidelity
from lit_score.metrics.distances import distance_floors, distance_report
from lit_score.metrics.likelihood import LikelihoodEstimate
from lit_score.samplers import Sampler

IMAGE_METRICS = fidelity.METRICS  # fid, kid, isc, prc
METRIC_GROUPS = (*IMAGE_METRICS, "bpd", "distances", "accuracy")
SAMPLE_METRICS = (*IMAGE_METRICS, "distances", "accuracy")  # the groups that measure generated samples
PUBLISHED_N = 50_000  # samples behind published CIFAR-10 FID / IS numbers


class EvaluationError(ValueError):
    """Input that evaluation cannot use (reported as one line by the CLI)."""


def parse_list(value: str | Sequence | None, kind=str) -> list | None:
    """``"fid,kid"`` / ``"[0, 1]"`` / ``["fid"]`` / ``3`` → a list of ``kind``; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [kind(value)]
    if isinstance(value, str):
        text = value.strip().strip("[]")
        return [kind(v.strip().strip("'\"")) for v in text.split(",") if v.strip()]
    return [kind(v) for v in value]


def default_metrics(model, datamodule: GenerativeDataModule) -> list[str]:
    """What a user gets without ``--metrics``: the image metrics on images, distances otherwise; ``bpd`` on
    non-image data wherever the model offers a likelihood (on images it costs minutes: ask for it)."""
    if datamodule.is_image:
        return list(IMAGE_METRICS)
    out = ["distances"]
    if model is not None and model.likelihood_estimators("none"):
        out.append("bpd")
    return out + (["accuracy"] if _accuracy_problem(model, datamodule) is None else [])


def _accuracy_problem(model, datamodule: GenerativeDataModule) -> str | None:
    """Why the class accuracy of conditional samples does not apply (None: it does; for samples made elsewhere the
    labels come from their file, checked when they are read)."""
    if model is None or model.condition_labels(torch.arange(1)) is None:
        return "accuracy measures conditional samples: the model is unconditional (no class labels to check)"
    if model.condition["class_label"] == -1:
        return "accuracy measures conditional samples: --class_label -1 draws the unconditional model"
    if not datamodule.can_classify:
        return f"{datamodule.label} has no reference classifier for the class accuracy"
    return None


def class_accuracy(log_probs: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy of samples whose requested classes are ``labels`` (N,) under a reference classifier's ``log_probs``
    (N, K): overall, per class, and the mean log p(y | x) of the requested class."""
    labels = labels.cpu().long()
    hit = (log_probs.argmax(1) == labels).double()
    per_class = {str(k): float(hit[labels == k].mean()) for k in sorted(labels.unique().tolist())}
    return {"accuracy": float(hit.mean()), "per_class": per_class,
            "log_prob": float(log_probs.gather(1, labels[:, None]).mean()), "chance": 1 / log_probs.shape[1]}


def check_metrics(metrics: Sequence[str], model, datamodule: GenerativeDataModule, skip: bool = False) -> list[str]:
    """The metrics that apply to this model and data; an inapplicable one is an error (or skipped with ``skip``)."""
    out = []
    for name in metrics:
        if name not in METRIC_GROUPS:
            raise EvaluationError(f"unknown metric {name!r}: choose from {', '.join(METRIC_GROUPS)}")
        problem = None
        if name in IMAGE_METRICS and not datamodule.is_image:
            problem = f"{name} needs image data, the data has sample shape {datamodule.sample_shape}: use distances"
        elif name == "distances" and datamodule.is_image:
            problem = "distances are for toy / tabular data: use fid,kid,isc,prc on images"
        elif name == "bpd" and (model is None or not model.likelihood_estimators(_dequantize(datamodule))):
            problem = f"{type(model).__name__} offers no likelihood estimator for this data"
        elif name == "accuracy":
            problem = _accuracy_problem(model, datamodule)
        if problem is None:
            out.append(name)
        elif not skip:
            raise EvaluationError(problem)
    return out


def _dequantize(datamodule: GenerativeDataModule) -> str:
    return "uniform8bit" if datamodule.is_image else "none"


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
    import hashlib

    return hashlib.sha256(json.dumps(jsonable(value), sort_keys=True).encode()).hexdigest()[:length]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """mean, std (over seed sets, ddof 1; None for one set) and the per-seed values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if len(finite) == len(values) and finite else math.nan
    std = float(np.std(finite, ddof=1)) if len(finite) == len(values) and len(finite) > 1 else None
    return {"mean": mean, "std": std, "per_seed": list(values)}


@dataclass
class EvaluationResult:
    """``metrics``: name → {mean, std, per_seed, …}; ``per_seed``: every seed set's raw values; ``protocol``."""

    metrics: dict[str, dict[str, Any]]
    per_seed: list[dict[str, Any]]
    protocol: dict[str, Any]
    samples: list[Tensor] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "per_seed": self.per_seed, "protocol": self.protocol}

    def headline(self) -> dict[str, float]:
        """name → mean, flat (for loggers and tables)."""
        out = {}
        for name, summary in self.metrics.items():
            out[name] = summary["mean"]
            for extra in ("floor", "ratio"):
                if extra in summary:
                    out[f"{name}_{extra}"] = summary[extra]
        return out


def _cache_root(cache_root: str | Path | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    base = os.environ.get("LIT_SCORE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "lit-score")
    return Path(base).expanduser() / "fidelity"


def evaluate(
    model,
    datamodule: GenerativeDataModule,
    *,
    num_samples: int = 10_000,
    sampler: Sampler | None = None,
    metrics: Sequence[str] | None = None,
    skip_inapplicable: bool = False,
    reference: str = "train",
    feature_extractor: str | None = None,
    feature_extractor_weights_path: str | None = None,
    seeds: Sequence[int] = (0,),
    batch_size: int | None = None,
    samples: Sequence[Tensor] | None = None,
    samples_source: dict[str, Any] | None = None,
    likelihood_samples: int = 1000,
    likelihood_estimator: str | None = None,
    likelihood_options: dict[str, Any] | None = None,
    distance_samples: int = 4000,
    distance_draws: int = 5,
    kid_subset_size: int | None = None,
    half_samples: int = 20,
    cache_root: str | Path | None = None,
    feature_device: str = "auto",
    trainer_kwargs: dict[str, Any] | None = None,
    output: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvaluationResult | None:
    """Generate ``num_samples`` per seed set with ``sampler`` (default: the model's own) and measure them.

    ``samples`` (one tensor per seed set, in the data range) evaluates samples made elsewhere instead; ``model`` may
    then be None (no ``bpd``). Returns None on DDP ranks other than 0. ``output`` receives the samples of every seed
    set (``samples_seed<S>.npz``), nothing else: the caller writes the result (:func:`write_json`).
    """
    total_start = time.perf_counter()
    if reference not in ("train", "test"):
        raise EvaluationError(f"unknown reference split {reference!r}: use train or test")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise EvaluationError(f"seeds must be distinct and at least one, got {seeds}")
    if samples is None and model is None:
        raise EvaluationError("nothing to evaluate: give a model (checkpoint) or samples")
    if samples is not None and len(samples) != len(seeds):
        raise EvaluationError(f"{len(samples)} sample sets for {len(seeds)} seeds")
    if samples is None and num_samples < 2:
        raise EvaluationError(f"num_samples must be >= 2, got {num_samples}")
    datamodule._ensure_setup()
    wanted = list(metrics) if metrics is not None else default_metrics(model, datamodule)
    wanted = check_metrics(wanted, model, datamodule, skip=skip_inapplicable or metrics is None)
    if not wanted:
        raise EvaluationError("no metric applies to this model and data")
    image_metrics = [m for m in wanted if m in IMAGE_METRICS]
    extractor, ref_count = None, None
    if image_metrics:  # resolve first: a missing weights file must stop us before any sampling
        extractor = fidelity.resolve_feature_extractor(
            feature_extractor or datamodule.default_feature_extractor, feature_extractor_weights_path
        )
    sampler = sampler if sampler is not None or model is None else model.sampler
    output = Path(output) if output is not None else None
    if samples is None and not any(m in SAMPLE_METRICS for m in wanted):
        # bits/dim scores held-out data, not samples: nothing is generated (and no DDP ranks are started for it)
        if is_child_rank():
            return None
        return _likelihood_only(model, datamodule, seeds, wanted, likelihood_samples, likelihood_estimator,
                                likelihood_options, checkpoint, total_start)

    # --- generation (every rank), then everything else on rank 0 only ---------------------------------------
    sets: list[Tensor] = []
    generation: list[dict[str, Any]] = []
    other_rank = False
    device = model.device if model is not None else None  # trainer.predict's teardown moves the module to the CPU
    for i, seed in enumerate(seeds):
        if samples is not None:
            x = torch.as_tensor(samples[i]).float()
            generation.append({"seed": seed, "seconds": 0.0, "nfe": (samples_source or {}).get("nfe")})
        else:
            path = output / f"samples_seed{seed}.npz" if output is not None else None
            made = generate(model, num_samples, sampler=sampler, seed=seed, batch_size=batch_size, path=path,
                            trainer_kwargs=trainer_kwargs, progress=progress)
            if made is None:  # a DDP rank other than 0: it takes its share of every seed set, then is done
                other_rank = True
                continue
            x = made.samples
            generation.append({"seed": seed, "seconds": made.seconds, "nfe": made.nfe_mean,
                               "nfe_per_batch": sorted(set(made.nfe)), "batch_size": made.batch_size,
                               "world_size": made.world_size})
        if tuple(x.shape[1:]) != tuple(datamodule.sample_shape):
            raise EvaluationError(f"samples of shape {tuple(x.shape[1:])} for data of shape {datamodule.sample_shape}")
        sets.append(x)
    if other_rank:
        return None
    if model is not None:
        model.to(device)

    per_seed: list[dict[str, Any]] = [{"seed": s, "nonfinite": fidelity.count_nonfinite(x)}
                                      for s, x in zip(seeds, sets)]
    timing = {"generation_s": sum(g["seconds"] for g in generation), "features_s": 0.0, "distances_s": 0.0,
              "likelihood_s": 0.0}
    protocol: dict[str, Any] = {}
    notes: list[str] = []
    for row in per_seed:
        if row["nonfinite"]:
            notes.append(f"seed {row['seed']}: {row['nonfinite']} of {len(sets[0])} samples are not finite")
    if model is not None and samples is None and model.sample_start == "buffer":
        notes.append("chains continued from the checkpoint's replay buffer (IGEBM-style numbers), not fresh chains"
                     " from noise: they describe training's persistent chains, not what the model generates alone")

    if image_metrics:
        cuda = torch.cuda.is_available() if feature_device == "auto" else feature_device == "cuda"
        try:
            found, found_notes, timing["features_s"] = image_rows(
                datamodule, sets, seeds, per_seed, reference, tuple(image_metrics), extractor, _cache_root(cache_root),
                cuda, kid_subset_size, half_samples)
        except ValueError as err:
            raise EvaluationError(str(err)) from err
        ref_count = found.pop("reference_num_samples")
        protocol.update(found)
        notes += found_notes
        if min(len(x) for x in sets) < PUBLISHED_N:
            notes.append(f"{len(sets[0])} samples per set: published CIFAR-10 FID / IS use {PUBLISHED_N}; FID is "
                         "biased upwards at small N, so compare only numbers of the same N (each row's floor is)")

    if "distances" in wanted:
        start = time.perf_counter()
        n = min(distance_samples, *(len(x) for x in sets))
        draw = (lambda k, g: datamodule.reference_draw(k, g, reference))  # noqa: E731
        for row, x, seed in zip(per_seed, sets, seeds):
            floors = _floors(datamodule, draw, reference, n, distance_draws, 10_000 + seed)
            row["distances"] = distance_report(x[:n].double(), draw, distance_draws, 10_000 + seed, floors=floors)
            if datamodule.has_density:
                fresh = datamodule.reference_draw(n, torch.Generator().manual_seed(20_000 + seed), reference)
                row["data_nll"] = float(-datamodule.log_prob(x[:n].double()).mean())
                row["data_nll_floor"] = float(-datamodule.log_prob(fresh.double()).mean())
        timing["distances_s"] = time.perf_counter() - start
        protocol["distances"] = {"num_samples": n, "num_draws": distance_draws, "statistic": "median over draws",
                                 "mmd": "biased V-statistic, RBF kernels at 0.5/1/2 x the median distance",
                                 "sliced_wasserstein": "256 fixed projections",
                                 "floor": "median distance between two independent reference draws of the same n"}

    if "accuracy" in wanted:
        given = (samples_source or {}).get("labels") if samples is not None else None
        if samples is not None and (not given or any(y is None for y in given)):
            raise EvaluationError("accuracy of samples made elsewhere needs the classes they were drawn for: an .npz"
                                  " with a 'labels' array (lit-score sample writes one), or drop accuracy")
        for i, (row, x) in enumerate(zip(per_seed, sets)):
            labels = given[i] if given else model.condition_labels(torch.arange(len(x)))
            if len(labels) != len(x):
                raise EvaluationError(f"{len(labels)} labels for {len(x)} samples in seed set {seeds[i]}")
            row["class_accuracy"] = class_accuracy(datamodule.class_log_probs(x), labels)
        label = None if given else model.condition["class_label"]
        protocol["accuracy"] = {"classifier": f"{type(datamodule).__name__}.class_log_probs",
                                "labels": "the samples' file's labels" if given else
                                ("sample i requests class i mod K" if label is None
                                 else f"every sample requests class {label}")}

    likelihood = None
    if "bpd" in wanted:
        start = time.perf_counter()
        likelihood = _likelihood(model, datamodule, likelihood_samples, likelihood_estimator, likelihood_options,
                                 seeds[0])
        timing["likelihood_s"] = time.perf_counter() - start

    summary = _summaries(per_seed, wanted, likelihood)
    timing["total_s"] = time.perf_counter() - total_start
    protocol.update(_protocol(model, datamodule, sampler, seeds, sets, generation, reference, extractor, timing,
                              checkpoint, samples_source, wanted, ref_count))
    protocol["notes"] = notes
    for note in notes:
        warnings.warn(f"lit-score evaluate: {note}", stacklevel=2)
    return EvaluationResult(summary, per_seed, protocol, sets)


def is_child_rank() -> bool:
    """A process Lightning's DDP launcher started for rank > 0 (it re-runs the command with LOCAL_RANK set)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _likelihood_only(model, datamodule, seeds, wanted, likelihood_samples, likelihood_estimator, likelihood_options,
                     checkpoint, total_start) -> EvaluationResult:
    """The result of an evaluation whose metrics need no samples (``bpd`` alone): the held-out set scored once, the
    protocol saying that nothing was generated."""
    start = time.perf_counter()
    likelihood = _likelihood(model, datamodule, likelihood_samples, likelihood_estimator, likelihood_options, seeds[0])
    timing = {"generation_s": 0.0, "features_s": 0.0, "distances_s": 0.0,
              "likelihood_s": time.perf_counter() - start}
    timing["total_s"] = time.perf_counter() - total_start
    protocol = _protocol(model, datamodule, None, seeds, [], [], None, None, timing, checkpoint, None, wanted, None)
    protocol["reference"] = None  # no samples to hold against a reference: bpd's held-out split is its own record
    protocol["notes"] = ["no samples generated: bits/dim scores the held-out split, whatever the sampler"]
    per_seed = [{"seed": s} for s in seeds]  # nothing measured per seed set: no samples
    return EvaluationResult(_summaries(per_seed, wanted, likelihood), per_seed, protocol, [])


_FLOORS: dict[str, dict[str, float]] = {}  # data-vs-data floors, per process: they depend only on the data and n


def _floors(datamodule, draw, reference: str, n: int, draws: int, seed: int) -> dict[str, float]:
    """:func:`distance_floors` for this data, split, n and seed, computed once per process."""
    hparams = {k: v for k, v in dict(datamodule.hparams).items() if not k.startswith("_")}
    key = json.dumps(jsonable([type(datamodule).__qualname__, hparams, reference, n, draws, seed]), sort_keys=True)
    if key not in _FLOORS:
        _FLOORS[key] = distance_floors(draw, n, draws, seed + 1)
    return _FLOORS[key]


def _likelihood(model, datamodule, n, estimator, options, seed, chunk_size: int = 250) -> dict[str, dict[str, Any]]:
    """NLL of the first n held-out samples by the requested estimator(s): one record each."""
    dequantize = _dequantize(datamodule)
    available = model.likelihood_estimators(dequantize)
    names = list(available) if estimator == "all" else [estimator or available[0]]
    held_out = datamodule.split_dataset("test")
    x = torch.stack([held_out[i] for i in range(min(n, len(held_out)))])
    dim = x[0].numel()
    options = dict(options or {})
    per_estimator = bool(options) and set(options) <= {"pf_ode", "vlb", "quadrature", "ais"}
    out = {}
    for name in names:
        opts = dict(options.get(name) or {}) if per_estimator else dict(options)
        if name == "pf_ode":
            opts.setdefault("divergence", "exact" if dim <= 8 else "hutchinson")
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


def _summaries(per_seed, wanted, likelihood) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    out.update(image_summaries(per_seed, summarize))
    if "distances" in wanted:
        for name in per_seed[0]["distances"]:
            rows = [row["distances"][name] for row in per_seed]
            out[name] = {**summarize([r["value"] for r in rows]), "floor": float(np.median([r["floor"] for r in rows])),
                         "ratio": summarize([r["ratio"] for r in rows])["mean"]}
        if "data_nll" in per_seed[0]:
            out["data_nll"] = {**summarize([row["data_nll"] for row in per_seed]),
                               "floor": float(np.mean([row["data_nll_floor"] for row in per_seed]))}
    if "class_accuracy" in per_seed[0]:
        rows = [row["class_accuracy"] for row in per_seed]
        per_class = {k: float(np.mean([r["per_class"][k] for r in rows])) for k in rows[0]["per_class"]}
        out["accuracy"] = {**summarize([r["accuracy"] for r in rows]), "chance": rows[0]["chance"],
                           "per_class": per_class}
    if likelihood:
        for name, record in likelihood.items():
            key = "bpd" if len(likelihood) == 1 else f"bpd_{name}"
            out[key] = {"mean": record["bits_per_dim"], "std": None, "sem": record["bits_per_dim_sem"],
                        "per_seed": None, **{k: v for k, v in record.items() if k not in ("bits_per_dim",)}}
    return out


def _protocol(model, datamodule, sampler, seeds, sets, generation, reference, extractor, timing, checkpoint,
              samples_source, wanted, ref_count: int | None) -> dict[str, Any]:
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
