"""Wall time of a MeanFlow training step against a flow-matching step on the same network and batch (issue 26).

    python benchmarks/meanflow_cost.py [--steps 20] [--repeats 5] [--device cpu|cuda]

Two two-time networks: the toy MLP(2, 128, 3) at batch 500 (configs/fewstep/meanflow_toy.yaml) and the digits U-Net
(configs/flow/digits.yaml's arguments, 1x16x16) at batch 64. A step is the loss on one batch, backward and one Adam
update. The flow-matching step evaluates the network once (at s = t) and backpropagates; the MeanFlow step evaluates
it once with autograd for u_θ and once more under ``torch.func.jvp`` (no_grad) for du/dt, whose forward-mode pass
carries a tangent through every layer (lit_score/losses/meanflow.py). Runs alternate loss by loss so that machine noise
hits both; the ratio of the medians is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lit_score.losses import FlowMatchingLoss, MeanFlow
from lit_score.networks import MLP, UNet
from lit_score.processes import Interpolant
from lit_score.scores import FlowMapScore


def problems(device: torch.device) -> dict[str, tuple[FlowMapScore, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = MLP(2, hidden=128, depth=3, two_time=True)
    unet = UNet(in_channels=1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                dropout=0.0, resolution=16, two_time=True)
    return {name: (FlowMapScore(net, Interpolant(), target="velocity").to(device), torch.randn(shape, device=device))
            for name, net, shape in (("toy MLP 128x3, batch 500", mlp, (500, 2)),
                                     ("digits U-Net, batch 64", unet, (64, 1, 16, 16)))}


def time_steps(loss, model: FlowMapScore, x0: torch.Tensor, steps: int) -> float:
    """Seconds per step (loss, backward, Adam) over ``steps`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator(x0.device).manual_seed(0)
    if x0.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        value = loss(model, x0, generator).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    if x0.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    losses = {"flow matching": FlowMatchingLoss(), "MeanFlow": MeanFlow()}
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    for name, (model, x0) in problems(device).items():
        for loss in losses.values():
            time_steps(loss, model, x0, 2)  # warm-up
        times = {label: [] for label in losses}
        for _ in range(args.repeats):
            for label, loss in losses.items():
                times[label].append(time_steps(loss, model, x0, args.steps))
        medians = {label: statistics.median(values) for label, values in times.items()}
        print(f"{name}: flow matching {1e3 * medians['flow matching']:.2f} ms/step, MeanFlow"
              f" {1e3 * medians['MeanFlow']:.2f} ms/step, ratio {medians['MeanFlow'] / medians['flow matching']:.2f}")


if __name__ == "__main__":
    main()
