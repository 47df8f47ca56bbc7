"""A teacher-free few-step loss trained on a 2-D mixture, its 1 / 2 / 4-jump quality printed along training (issue 26).

    python benchmarks/fewstep_toy_recipes.py meanflow --p 0 --time_scale 1e-3 --lr 3e-4 --cosine --steps 6000
    python benchmarks/fewstep_toy_recipes.py ict --lr 1e-3 --cosine --steps 8000
    python benchmarks/fewstep_toy_recipes.py ect --lr 1e-3 --cosine --steps 8000
    python benchmarks/fewstep_toy_recipes.py shortcut --hidden 64 --embedding fourier --lr 3e-3 --cosine --steps 8000

The settings a loss needs on low-dimensional data are found here before they go into a config or a test: the data is
the ring of four Gaussians of tests/test_shortcut.py (radius 2, std 0.2); the model a two-time MLP (``--hidden`` ×
``--depth``); the loop the one the loss tests share (tests/loss_training.py: the loss's own ``before_step``, Adam,
batch ``--batch``) with an optional cosine decay of the learning rate to 0 and an EMA of the weights (``--ema``). Every
``--every`` steps it prints the energy distance of 2,000 samples (2,000 fixed prior draws, FlowMapSampler with 1, 2, 4
jumps or ``--jumps``; consistency models re-noise between jumps, gamma 1) to 2,000 data draws, divided by the data
floor (two data draws, 0.0011), for the EMA and the raw weights. iCT / ECT train on EDM(0.002, 80) with target
``edm``; MeanFlow and shortcut models on the interpolant with target ``velocity``. One thread: 7–37 s per 1,000
steps (shortcut 64 wide to MeanFlow 128 wide, on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loss_training import cosine_decay, training_steps  # noqa: E402

from lit_score.data.mixture import GaussianMixtureDistribution  # noqa: E402
from lit_score.losses import (  # noqa: E402
    ConsistencyTraining,
    EasyConsistencyTuning,
    ECTSchedule,
    ICTCurriculum,
    MeanFlow,
    Shortcut,
)
from lit_score.losses.target_network import ema_update  # noqa: E402
from lit_score.metrics import energy_distance  # noqa: E402
from lit_score.networks import MLP  # noqa: E402
from lit_score.processes import EDM, Interpolant  # noqa: E402
from lit_score.samplers import FlowMapSampler  # noqa: E402
from lit_score.scores import FlowMapScore  # noqa: E402


def build(args) -> tuple[object, FlowMapScore, float]:
    """(loss, model, gamma of the multi-jump sampler) for ``args.method``."""
    network = MLP(2, hidden=args.hidden, depth=args.depth, embedding=args.embedding, two_time=True,
                  time_scale=args.time_scale)
    if args.method in ("ict", "ect"):
        model = FlowMapScore(network, EDM(0.002, 80.0), target="edm", sigma_data=1.0)
        loss = (ConsistencyTraining(ICTCurriculum(10, 1280, total_steps=args.steps)) if args.method == "ict" else
                EasyConsistencyTuning(schedule=ECTSchedule(double_every=max(1, args.steps // 8))))
        return loss, model, 1.0
    model = FlowMapScore(network, Interpolant(), target="velocity")
    loss = MeanFlow(ratio=args.ratio, p=args.p) if args.method == "meanflow" else Shortcut(clip=None)
    return loss, model, 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=["ict", "ect", "meanflow", "shortcut"])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--cosine", action="store_true", help="decay the learning rate to 0 on a half cosine")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--embedding", choices=["positional", "fourier"], default="positional")
    parser.add_argument("--time_scale", type=float, default=1.0, help="the network's factor on c_noise(t)")
    parser.add_argument("--p", type=float, default=1.0, help="MeanFlow's adaptive-weight power")
    parser.add_argument("--ratio", type=float, default=0.75, help="MeanFlow's share of r != t")
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--jumps", type=int, nargs="+", default=[1, 2, 4], help="the jump counts measured")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mixture = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2)
    data = mixture.sample(2000, torch.Generator().manual_seed(7))
    floor = float(energy_distance(mixture.sample(2000, torch.Generator().manual_seed(8)), data))
    loss, model, gamma = build(args)
    average = copy.deepcopy(model).requires_grad_(False)
    z = model.process.prior_sample((2000, 2), generator=torch.Generator().manual_seed(5))

    def quality(m) -> list[float]:
        torch.manual_seed(123)  # the re-noising draws of consistency models' multi-jump sampling
        with torch.no_grad():
            return [float(energy_distance(FlowMapSampler(k, gamma=gamma if k > 1 else 0.0)(m, z, m.process), data))
                    / floor for k in args.jumps]

    schedule = cosine_decay(args.steps) if args.cosine else None
    print(f"{args.method}: {vars(args)}; data floor {floor:.5f}; energy distance / floor at {args.jumps} jumps",
          flush=True)
    start = time.perf_counter()
    for step in training_steps(loss, model, mixture.sample, args.steps, lr=args.lr, batch=args.batch,
                               lr_factor=schedule):
        ema_update(average, model, args.ema)
        if step % args.every == 0:
            ema, raw = quality(average), quality(model)
            print(f"step {step:6d}  {time.perf_counter() - start:6.0f} s  EMA {' / '.join(f'{v:.2f}' for v in ema)}"
                  f"  raw {' / '.join(f'{v:.2f}' for v in raw)}", flush=True)


if __name__ == "__main__":
    main()
