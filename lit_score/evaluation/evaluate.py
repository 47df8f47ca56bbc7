"""``evaluate``: sample a model through the one generation path and measure it, with the protocol beside every number.

``evaluate`` checks the request, generates the seed sets (or takes samples made elsewhere), runs the metric groups asked
for (``--metrics``: the objects of :mod:`lit_score.evaluation.groups`, image fidelity, toy distances, class accuracy,
likelihood) and records the protocol. Every metric is a mean ± std over the seed sets (``seeds``) with its per-seed
values, and one ``protocol`` records how it was obtained. The functions here hold no metric maths: that is
``lit_score.metrics``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_score.data import GenerativeDataModule
from lit_score.evaluation.groups import (
    GROUPS,
    PUBLISHED_N,
    EvaluationContext,
    EvaluationError,
    class_accuracy,
    group_of,
    summarize,
)
from lit_score.evaluation.protocol import content_key, describe_sampler, evaluation_protocol, versions
from lit_score.generation import generate
from lit_score.metrics import fidelity
from lit_score.samplers import Sampler

IMAGE_METRICS = fidelity.METRICS  # fid, kid, isc, prc
METRIC_GROUPS = tuple(name for group in GROUPS for name in group.names)  # every name --metrics takes
SAMPLE_METRICS = tuple(name for group in GROUPS if group.measures_samples for name in group.names)


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
    return out + (["accuracy"] if group_of("accuracy").problem("accuracy", model, datamodule) is None else [])


def check_metrics(metrics: Sequence[str], model, datamodule: GenerativeDataModule, skip: bool = False) -> list[str]:
    """The metrics that apply to this model and data; an inapplicable one is an error (or skipped with ``skip``)."""
    out = []
    for name in metrics:
        group = group_of(name)
        if group is None:
            raise EvaluationError(f"unknown metric {name!r}: choose from {', '.join(METRIC_GROUPS)}")
        problem = group.problem(name, model, datamodule)
        if problem is None:
            out.append(name)
        elif not skip:
            raise EvaluationError(problem)
    return out


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
    model, datamodule: GenerativeDataModule, *, num_samples: int = 10_000, sampler: Sampler | None = None,
    metrics: Sequence[str] | None = None, skip_inapplicable: bool = False, reference: str = "train",
    feature_extractor: str | None = None, feature_extractor_weights_path: str | None = None,
    seeds: Sequence[int] = (0,), batch_size: int | None = None, samples: Sequence[Tensor] | None = None,
    samples_source: dict[str, Any] | None = None, likelihood_samples: int = 1000,
    likelihood_estimator: str | None = None, likelihood_options: dict[str, Any] | None = None,
    distance_samples: int = 4000, distance_draws: int = 5, kid_subset_size: int | None = None,
    half_samples: int = 20, cache_root: str | Path | None = None, feature_device: str = "auto",
    trainer_kwargs: dict[str, Any] | None = None, output: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None, progress: bool = True,
) -> EvaluationResult | None:
    """Generate ``num_samples`` per seed set with ``sampler`` (default: the model's own) and measure them.

    ``samples`` (one tensor per seed set, in the data range) evaluates samples made elsewhere instead; ``model`` may
    then be None (no ``bpd``). Returns None on DDP ranks other than 0. ``output`` receives the samples of every seed
    set (``samples_seed<S>.npz``), nothing else: the caller writes the result (:func:`write_json`).
    """
    total_start = time.perf_counter()
    seeds = _check_request(model, reference, seeds, samples, num_samples)
    datamodule._ensure_setup()
    wanted = list(metrics) if metrics is not None else default_metrics(model, datamodule)
    wanted = check_metrics(wanted, model, datamodule, skip=skip_inapplicable or metrics is None)
    if not wanted:
        raise EvaluationError("no metric applies to this model and data")
    # resolved first: a missing weights file must stop us before any sampling
    extractor = _feature_extractor(wanted, datamodule, feature_extractor, feature_extractor_weights_path)
    context = EvaluationContext(model, datamodule, [], seeds, reference, samples is not None, samples_source, extractor,
                                _cache_root(cache_root), _on_cuda(extractor, feature_device), kid_subset_size,
                                half_samples, distance_samples, distance_draws, likelihood_samples,
                                likelihood_estimator, likelihood_options)
    sampler = sampler if sampler is not None or model is None else model.sampler
    if samples is None and not any(m in SAMPLE_METRICS for m in wanted):
        # bits/dim scores held-out data, not samples: nothing is generated (and no DDP ranks are started for it)
        return None if is_child_rank() else _likelihood_only(context, wanted, checkpoint, total_start)
    made = _given_sets(samples, samples_source, seeds, datamodule) if samples is not None else _generated_sets(
        model, datamodule, seeds, output, num_samples=num_samples, sampler=sampler, batch_size=batch_size,
        trainer_kwargs=trainer_kwargs, progress=progress)  # every rank generates; the rest is rank 0's
    if made is None:  # a DDP rank other than 0: it took its share of every seed set
        return None
    context.sets, generation = made
    per_seed = [{"seed": s, "nonfinite": fidelity.count_nonfinite(x)} for s, x in zip(seeds, context.sets)]
    timing = {"generation_s": sum(g["seconds"] for g in generation), "features_s": 0.0, "distances_s": 0.0,
              "likelihood_s": 0.0}
    notes = _sample_notes(per_seed, context)
    protocol, summary, ref_count = _measure(context, wanted, per_seed, notes, timing)
    timing["total_s"] = time.perf_counter() - total_start
    protocol.update(evaluation_protocol(model, datamodule, sampler, seeds, context.sets, generation, reference,
                                        extractor, timing, checkpoint, samples_source, wanted, ref_count))
    protocol["notes"] = notes
    for note in notes:
        warnings.warn(f"lit-score evaluate: {note}", stacklevel=2)
    return EvaluationResult(summary, per_seed, protocol, context.sets)


def _feature_extractor(wanted: list[str], datamodule, name: str | None, weights_path: str | None):
    """The image metrics' feature extractor (None when no image metric is wanted): the data's default unless named."""
    if not any(m in IMAGE_METRICS for m in wanted):
        return None
    return fidelity.resolve_feature_extractor(name or datamodule.default_feature_extractor, weights_path)


def _on_cuda(extractor, feature_device: str) -> bool:
    """Whether the image features are computed on CUDA (``auto``: where available)."""
    if extractor is None:
        return False
    return torch.cuda.is_available() if feature_device == "auto" else feature_device == "cuda"


def _check_request(model, reference: str, seeds: Sequence[int], samples, num_samples: int) -> list[int]:
    """The seed sets as a list, after checking what can be checked before any work."""
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
    return seeds


def _checked_shape(x: Tensor, datamodule: GenerativeDataModule) -> Tensor:
    if tuple(x.shape[1:]) != tuple(datamodule.sample_shape):
        raise EvaluationError(f"samples of shape {tuple(x.shape[1:])} for data of shape {datamodule.sample_shape}")
    return x


def _given_sets(samples, samples_source, seeds, datamodule) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Samples made elsewhere, one set per seed, and their generation records (the NFE their file states)."""
    sets, generation = [], []
    for x, seed in zip(samples, seeds):
        generation.append({"seed": seed, "seconds": 0.0, "nfe": (samples_source or {}).get("nfe")})
        sets.append(_checked_shape(torch.as_tensor(x).float(), datamodule))
    return sets, generation


def _generated_sets(model, datamodule, seeds, output, **options) -> tuple[list[Tensor], list[dict[str, Any]]] | None:
    """One seed set per seed by :func:`~lit_score.generation.generate` (written to ``output`` when given) and their
    generation records; None on a DDP rank other than 0, once it has taken its share of every set."""
    device = model.device  # trainer.predict's teardown moves the module to the CPU
    output = Path(output) if output is not None else None
    sets, generation, other_rank = [], [], False
    for seed in seeds:
        path = output / f"samples_seed{seed}.npz" if output is not None else None
        made = generate(model, seed=seed, path=path, **options)
        if made is None:  # a DDP rank other than 0: it takes its share of every seed set, then is done
            other_rank = True
            continue
        generation.append({"seed": seed, "seconds": made.seconds, "nfe": made.nfe_mean,
                           "nfe_per_batch": sorted(set(made.nfe)), "batch_size": made.batch_size,
                           "world_size": made.world_size})
        sets.append(_checked_shape(made.samples, datamodule))
    if other_rank:
        return None
    model.to(device)
    return sets, generation


def _sample_notes(per_seed: list[dict[str, Any]], context: EvaluationContext) -> list[str]:
    """What a reader of the numbers must know about the samples: non-finite ones, chains continued from a buffer."""
    notes = [f"seed {row['seed']}: {row['nonfinite']} of {len(context.sets[0])} samples are not finite"
             for row in per_seed if row["nonfinite"]]
    if context.model is not None and not context.made_elsewhere and context.model.sample_start == "buffer":
        notes.append("chains continued from the checkpoint's replay buffer (IGEBM-style numbers), not fresh chains"
                     " from noise: they describe training's persistent chains, not what the model generates alone")
    return notes


def _measure(context: EvaluationContext, wanted: list[str], per_seed: list[dict[str, Any]], notes: list[str],
             timing: dict[str, float]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int | None]:
    """Run every group asked for, in :data:`~lit_score.evaluation.groups.GROUPS` order: their rows go into
    ``per_seed``, notes into ``notes``, seconds into ``timing``; returns (protocol entries, summaries, the size of the
    reference split the image metrics used)."""
    protocol: dict[str, Any] = {}
    summary: dict[str, dict[str, Any]] = {}
    ref_count = None
    for group in GROUPS:
        names = tuple(name for name in wanted if name in group.names)
        if not names:
            continue
        measured = group.measure(context, names)
        for row, extra in zip(per_seed, measured.rows):
            row.update(extra)
        protocol.update(measured.protocol)
        notes += measured.notes
        if group.timing_key:
            timing[group.timing_key] = measured.seconds
        if measured.reference_num_samples is not None:
            ref_count = measured.reference_num_samples
        summary.update(group.summaries(per_seed, measured))
    return protocol, summary, ref_count


def is_child_rank() -> bool:
    """A process Lightning's DDP launcher started for rank > 0 (it re-runs the command with LOCAL_RANK set)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _likelihood_only(context: EvaluationContext, wanted: list[str], checkpoint, total_start) -> EvaluationResult:
    """The result of an evaluation whose metrics need no samples (``bpd`` alone): the held-out set scored once, the
    protocol saying that nothing was generated."""
    per_seed = [{"seed": s} for s in context.seeds]  # nothing measured per seed set: no samples
    timing = {"generation_s": 0.0, "features_s": 0.0, "distances_s": 0.0, "likelihood_s": 0.0}
    protocol, summary, _ = _measure(context, wanted, per_seed, [], timing)
    timing["total_s"] = time.perf_counter() - total_start
    protocol.update(evaluation_protocol(context.model, context.datamodule, None, context.seeds, [], [], None, None,
                                        timing, checkpoint, None, wanted, None))
    protocol["reference"] = None  # no samples to hold against a reference: bpd's held-out split is its own record
    protocol["notes"] = ["no samples generated: bits/dim scores the held-out split, whatever the sampler"]
    return EvaluationResult(summary, per_seed, protocol, [])


__all__ = ["IMAGE_METRICS", "METRIC_GROUPS", "PUBLISHED_N", "SAMPLE_METRICS", "EvaluationError", "EvaluationResult",
           "check_metrics", "class_accuracy", "content_key", "default_metrics", "describe_sampler", "evaluate",
           "is_child_rank", "parse_list", "summarize", "versions"]
