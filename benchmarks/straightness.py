"""Straightness S(Z) of checkpoints' probability-flow ODE paths (Liu et al. 2022, Eq. 4; what reflow lowers), each from
the same prior draws, with its standard error over paths.

    python benchmarks/straightness.py RUN_1RF.ckpt RUN_2RF.ckpt [--n 500] [--steps 100] [--weights auto]

S(Z) = ∫ E‖Ż_t − (Z₁ − Z₀)‖² dt by ``--steps`` Euler steps (:func:`lit_score.metrics.straightness`); 0 for straight
paths. Per-coordinate scale is the data's: compare checkpoints of one data set only.
"""

from __future__ import annotations

import argparse

import torch

from lit_score.loading.checkpoint import load_for_evaluation
from lit_score.metrics.straightness import straightness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--n", type=int, default=500, help="paths (prior draws, seed 0)")
    parser.add_argument("--steps", type=int, default=100, help="Euler steps per path")
    parser.add_argument("--weights", default="auto", help="auto, ema or raw")
    args = parser.parse_args()
    for ckpt in args.ckpts:
        model, weights = load_for_evaluation(ckpt, args.weights, torch.device("cpu"))
        with torch.no_grad():
            x = model.initial_state(args.n, torch.Generator().manual_seed(0))
            s = straightness(model.score_model, model.process, x, args.steps)
        print(f"{ckpt} ({weights} weights): S(Z) = {s.straightness:.4g} ± {s.standard_error:.2g}"
              f" ({s.num_samples} paths, {s.num_steps} Euler steps)", flush=True)


if __name__ == "__main__":
    main()
