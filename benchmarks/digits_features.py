"""Disturbance table of digits feature spaces for FID (issue 23): the v1 extractor, every candidate, the shipped v2.

    OMP_NUM_THREADS=1 python benchmarks/digits_features.py [--candidates all|a,b] [--cache DIR] [--seed 0]

Protocol (Heusel et al. 2017's disturbance test, on the digits): the TRAIN split of
``Digits(image_size=16, val_fraction=0.1, seed=0)`` (1,617 images) is cut at random (``--seed``) into two disjoint
halves, 800 "samples" and 817 "reference". Each disturbance of :mod:`lit_score.metrics.disturbances` is applied to
the samples at each level; images go through the evaluation path (float → uint8 → the extractor's preprocessing);
FID is torch-fidelity's ``fid_features_to_statistics`` / ``fid_statistics_to_metric`` on each feature space. The
table prints FID / clean FID (the clean value, in each heading, is the n-bias of an 800 vs 817 split); ``classifier``
is the v1 ``digits`` extractor and ``digits-v2`` the shipped choice (``corrupt_class`` retrained). A feature space
passes when every row rises monotonically and the must-double cells (speckle 25 %, pure noise 25 %, Gaussian noise
σ = 0.2 and salt-and-pepper 10 % on every sample) are ≥ 2. Candidates are trained in-process (about 10–30 s each
on one thread) unless ``--cache`` holds their weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from lit_score.data import Digits
from lit_score.metrics import disturbances as D
from lit_score.metrics.digits_candidates import CANDIDATES, build, features
from lit_score.metrics.digits_extractor import (
    DIGITS_V2_EXTRACTOR as SHIPPED,
)
from lit_score.metrics.digits_extractor import (
    NUM_CLASSES,
    DigitsClassifier,
    default_weights_path,
    preprocess,
)
from lit_score.metrics.fidelity import to_uint8
from lit_score.metrics.train_digits_extractor import save_state_dict
from lit_score.metrics.train_digits_features import train

MUST_DOUBLE = {("speckle", 0.25), ("pure_noise", 0.25), ("gaussian_noise", 0.2), ("salt_and_pepper", 0.1)}


def halves(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(800 samples, 817 reference) of the digits TRAIN split as float images in [-1, 1]."""
    data = Digits(image_size=16, val_fraction=0.1, seed=0)
    data.setup("fit")
    x = data.train_dataset.data
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:800]], x[order[800:]]


def load_candidate(name: str, cache: Path | None) -> torch.nn.Module:
    if name == SHIPPED:  # the chosen candidate as shipped (its features: the corrupt_class network's penultimate)
        model = DigitsClassifier(NUM_CLASSES + 1)
        model.load_state_dict(torch.load(default_weights_path(SHIPPED), weights_only=True))
        return model.eval()
    if name in ("classifier", "classifier_layers"):
        model = DigitsClassifier()
        model.load_state_dict(torch.load(default_weights_path(), weights_only=True))
        return model.eval()
    path = cache / f"{name}.pt" if cache else None
    if path is not None and path.is_file():
        model = build(name)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    start = time.perf_counter()
    model = train(name)
    print(f"# trained {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if path is not None:
        save_state_dict(model, path)
    return model


@torch.no_grad()
def embed(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return features(name, model, preprocess(to_uint8(x))).double()


def fid(f1: torch.Tensor, f2_stats: dict) -> float:
    return fid_statistics_to_metric(fid_features_to_statistics(f1), f2_stats, verbose=False)[
        "frechet_inception_distance"]


def table(names: list[str], cache: Path | None, seed: int) -> dict[str, dict]:
    samples, reference = halves(seed)
    disturbed = {(d, lv): to_uint8(D.disturb(samples, d, lv, seed=seed + 1)) for d, (_, levels) in
                 D.DISTURBANCES.items() for lv in levels}
    out = {}
    for name in names:
        model = load_candidate(name, cache)
        ref_stats = fid_features_to_statistics(embed(name, model, reference))
        clean = fid(embed(name, model, samples), ref_stats)
        rows = {}
        with torch.no_grad():
            for (d, _), u8 in disturbed.items():
                rows.setdefault(d, []).append(fid(features(name, model, preprocess(u8)).double(), ref_stats) / clean)
        out[name] = {"clean": clean, "rows": rows, "dim": ref_stats["mu"].shape[0]}
    return out


def verdict(result: dict) -> tuple[int, float]:
    """(number of non-monotone steps, smallest must-double ratio)."""
    rows = result["rows"]
    bad = sum(b < a for r in rows.values() for a, b in zip([1.0, *r], r))
    worst = min(rows[d][D.DISTURBANCES[d][1].index(lv)] for d, lv in MUST_DOUBLE)
    return bad, worst


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="all",
                        help=f"comma-separated, from {', '.join(CANDIDATES)} and {SHIPPED} (the shipped weights)")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the candidates' trained weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = [*CANDIDATES, SHIPPED] if args.candidates == "all" else args.candidates.split(",")
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    results = table(names, args.cache, args.seed)
    for name, result in results.items():
        bad, worst = verdict(result)
        print(f"\n## {name} ({result['dim']}-d): clean FID {result['clean']:.4g} (800 vs 817); FID / clean below; "
              f"non-monotone steps {bad}, smallest must-double ratio {worst:.2f}")
        print("| disturbance | " + " | ".join("level" for _ in range(4)) + " |\n|---|---|---|---|---|")
        for d, ratios in result["rows"].items():
            levels = D.DISTURBANCES[d][1]
            print(f"| {d} | " + " | ".join(f"{lv:g}: {r:.2f}" + ("*" if (d, lv) in MUST_DOUBLE else "")
                                          for lv, r in zip(levels, ratios)) + " |")
    ranked = sorted(results, key=lambda name: (verdict(results[name])[0], -verdict(results[name])[1]))
    print("\nranking (fewest non-monotone steps, then largest smallest must-double ratio): " + ", ".join(
        f"{name} ({verdict(results[name])[0]}, {verdict(results[name])[1]:.2f})" for name in ranked))
    return results


if __name__ == "__main__":
    main()
