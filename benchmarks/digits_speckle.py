"""Which digits samples are noise-speckled, and where along the sampler's path the speckle appears (issue 23).

    OMP_NUM_THREADS=1 python benchmarks/digits_speckle.py CKPT [--weights ema|raw] [--n 200] [--guidance_scale 0]
        [--settings ddim50_clip,ddim50,ddim50_nodenoise,anc1000_clip,...]

Protocol: the checkpoint's Digits TRAIN split (1,617 images) is cut at random (seed 0) into 500 floor images and a
reference of 1,117, as ``lit-score evaluate`` cuts it at n = 500; samples and floor go through the evaluation path
(float → clamp to the data range → uint8 → ``digits-v2`` features) and are flagged by k-NN realism (R < 1, k = 3,
:func:`lit_score.metrics.realism.realism`). Samples are drawn for labels i mod 10 from one generator seeded 0 (not
evaluate's per-batch seeds: the shares are comparable with each other and with the floor printed first, and with
evaluate's ``realism_flagged`` only up to sampling error). Per setting it prints one JSON line: the flagged share,
the speckled share (clamped samples whose high-frequency energy exceeds 0.5),
the sample range before the clamp, the high-frequency energy (mean squared 4-neighbour Laplacian) of flagged and
clean samples, and along the path (about 10 of its steps) the range and high-frequency energy of x̂₀ and of x_t for
flagged and clean samples ([flagged, clean] pairs). Pure N(0, 1) noise has a high-frequency energy of 20, clean
digits about 0.15.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lit_score.loading.checkpoint import checkpoint_datamodule, load_for_evaluation
from lit_score.metrics.fidelity import resolve_feature_extractor, to_uint8
from lit_score.metrics.image_quality import extract_features
from lit_score.metrics.realism import realism
from lit_score.samplers import DDIM, Ancestral

SETTINGS = {
    "ddim50_clip": lambda: DDIM(50, clip_denoised=1.0), "ddim50": lambda: DDIM(50),
    "ddim50_nodenoise": lambda: DDIM(50, denoise=False), "ddim100_clip": lambda: DDIM(100, clip_denoised=1.0),
    "anc1000_clip": lambda: Ancestral(1000, clip_denoised=1.0), "anc1000": lambda: Ancestral(1000),
    "anc1000_nodenoise_clip": lambda: Ancestral(1000, denoise=False, clip_denoised=1.0),
    "anc250_clip": lambda: Ancestral(250, clip_denoised=1.0), "anc50_clip": lambda: Ancestral(50, clip_denoised=1.0),
    "ddim50_eta1_clip": lambda: DDIM(50, eta=1.0, clip_denoised=1.0),
}


SPECKLED = 0.5  # high-frequency energy above which a clamped sample is counted speckled (clean digits: about 0.15)


def high_frequency(x: torch.Tensor) -> torch.Tensor:
    """Mean squared 4-neighbour Laplacian per sample (B,): 20 for N(0, 1) pixels."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return lap.pow(2).flatten(1).mean(1)


def split_means(values: torch.Tensor, flagged: torch.Tensor) -> tuple[float | None, float | None]:
    """(mean over flagged, mean over clean); None for an empty group."""
    return tuple(float(values[m].mean()) if m.any() else None for m in (flagged, ~flagged))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--weights", default="ema")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--guidance_scale", type=float, default=0.0)
    parser.add_argument("--settings", default="ddim50_clip")
    args = parser.parse_args()
    datamodule = checkpoint_datamodule(args.ckpt)
    datamodule.setup("fit")
    train = datamodule.split_tensor("train")
    extractor = resolve_feature_extractor("digits-v2")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    floor = extract_features(to_uint8(train[order[:500]]), extractor)
    reference = extract_features(to_uint8(train[order[500:]]), extractor)
    print(json.dumps({"floor_flagged_n500": realism(reference, floor).flagged_share}), flush=True)
    model, weights = load_for_evaluation(args.ckpt, args.weights, torch.device("cpu"))
    model.eval()
    labels = torch.arange(args.n) % 10
    for name in args.settings.split(","):
        sampler = SETTINGS[name]()
        path = []

        def record(step, path=path):
            x0 = step["denoised"]
            path.append((float(step["t"][0]), x0.amin(dim=(1, 2, 3)), x0.amax(dim=(1, 2, 3)), high_frequency(x0),
                         high_frequency(step["x"])))

        generator = torch.Generator().manual_seed(0)
        start = time.time()
        with torch.no_grad():
            score_fn = model.score_model.with_condition(labels, args.guidance_scale, None, 0.0)
            out = sampler(score_fn, model.initial_state(args.n, generator), model.process, generator=generator,
                          callback=record)
        flagged = realism(reference, extract_features(to_uint8(out.clamp(-1, 1)), extractor)).flagged
        hf_flagged, hf_clean = split_means(high_frequency(out), flagged)
        row = {"setting": name, "guidance_scale": args.guidance_scale, "weights": weights, "n": args.n,
               "flagged": float(flagged.double().mean()),
               "speckled": float((high_frequency(out.clamp(-1, 1)) > SPECKLED).double().mean()),
               "min": float(out.min()), "max": float(out.max()),
               "hf_flagged": hf_flagged, "hf_clean": hf_clean, "seconds": round(time.time() - start), "path": []}
        for t, lo, hi, hf_x0, hf_x in path[::max(1, len(path) // 8)] + path[-2:]:
            ranges = [[float(lo[m].min()), float(hi[m].max())] if m.any() else None for m in (flagged, ~flagged)]
            row["path"].append({"t": round(t, 4), "x0_range": ranges, "hf_x0": split_means(hf_x0, flagged),
                                "hf_x": split_means(hf_x, flagged)})
        row["flagged_index"] = flagged.nonzero().flatten().tolist()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
