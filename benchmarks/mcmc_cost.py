"""Wall time per sample of the MCMC kernels on the same energy and step count: ULA vs MALA vs HMC (issue 12).

    python benchmarks/mcmc_cost.py [--steps 50] [--repeats 3] [--device cpu|cuda]

Two energies: the toy EBM's EnergyMLP(2, 128, 3) on 2,000 chains, and the digits EBM's EnergyCNN
(configs/ebm/digits.yaml, 1x16x16) on 256 chains. Each kernel runs ``--steps`` iterations from the same start
(MALA and HMC with a fixed step, no warm-up; HMC with 3 leapfrog steps per iteration); runs alternate kernel by kernel
so that machine noise hits all of them, and the ratio of each kernel's median time to ULA's is printed.
MALA needs E(x) as well as ∇ₓE(x): the same backward pass gives both, so its extra cost is the accept/reject
arithmetic and the proposal density; HMC pays per leapfrog step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lit_score.networks import EnergyCNN, EnergyMLP
from lit_score.samplers import HMC, MALA, ULA
from lit_score.scores.energy import EnergyScore


def kernels(steps: int) -> dict[str, object]:
    return {"ULA": ULA(num_steps=steps, step_size=0.01), "MALA": MALA(num_steps=steps, step_size=0.01),
            "HMC (L=3)": HMC(num_steps=steps, step_size=0.05, leapfrog_steps=3)}


def time_one(sampler, score, x0: torch.Tensor) -> tuple[float, int]:
    """(seconds, NFE) of one call."""
    if x0.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    nfe = sampler.draw(score, x0.clone(), None, generator=torch.Generator(x0.device).manual_seed(0)).nfe
    if x0.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cases = {
        "toy EnergyMLP, 2-D, 2000 chains": (EnergyMLP(data_dim=2, hidden=128, depth=3), (2000, 2)),
        "digits EnergyCNN, 1x16x16, 256 chains": (EnergyCNN(in_channels=1, channels=(32, 64, 64), resolution=16),
                                                  (256, 1, 16, 16)),
    }
    for name, (net, shape) in cases.items():
        score = EnergyScore(net.to(device).eval().requires_grad_(False))
        x0 = torch.rand(shape, generator=torch.Generator().manual_seed(1)).mul(2).sub(1).to(device)
        samplers = kernels(args.steps)
        for sampler in samplers.values():  # warm-up (allocator, kernels)
            time_one(sampler.with_settings(num_steps=2), score, x0)
        times: dict[str, list[float]] = {k: [] for k in samplers}
        nfes: dict[str, int] = {}
        for _ in range(args.repeats):
            for label, sampler in samplers.items():
                seconds, nfes[label] = time_one(sampler, score, x0)
                times[label].append(seconds)
        base = statistics.median(times["ULA"])
        print(f"{name}, {args.steps} iterations, {device.type}:")
        for label, values in times.items():
            median = statistics.median(values)
            nfe = nfes[label]
            print(f"  {label:10s} {1e6 * median / shape[0]:9.1f} µs/sample  NFE {nfe:4d}  x{median / base:.2f} of ULA")


if __name__ == "__main__":
    main()
