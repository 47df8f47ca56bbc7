"""NFE each probability-flow ODE sampler needs on the Gaussian-mixture oracle (VP) to come within 5 % of the
converged sample distance.

The exact noised score of a 2-D mixture drives every sampler from the same prior draw. The distance of a
sample set is its energy distance to fixed reference draws (mean over draws); the converged distance is that
of a tight adaptive Dormand–Prince solve (rtol = atol = 1e-7) with the same final-denoise setting. For each
sampler the step count grows until ``--confirm`` consecutive counts stay within the tolerance; the table gives
the NFE of the first of them (the sampler's own count, ``sampler.draw(...).nfe``), the distance there and, for context,
the mean distance of each sample from its converged ODE solution (the distribution-level criterion can be met
while single trajectories are still off).

    python benchmarks/ode_nfe.py [--samples 2000] [--tolerance 0.05] [--process vp|ve|subvp]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.metrics.distances import energy_distance
from lit_score.processes import VE, VP, SubVP
from lit_score.samplers import DPMSolver, EDMHeun, Euler, Heun, Sampler
from lit_score.samplers.ode import AdaptiveODE

STEPS = [2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300, 400, 500]

SAMPLERS: dict[str, Callable[[int], Sampler]] = {  # defaults unless the name says otherwise
    "Euler": lambda n: Euler(n),
    "Euler (quadratic)": lambda n: Euler(n, spacing="quadratic"),
    "Heun": lambda n: Heun(n),
    "Heun (quadratic)": lambda n: Heun(n, spacing="quadratic"),
    "DPM-Solver++ 1 (DDIM)": lambda n: DPMSolver(n, 1),
    "DPM-Solver++ 2M": lambda n: DPMSolver(n, 2),
    "DPM-Solver++ 2M (quadratic)": lambda n: DPMSolver(n, 2, spacing="quadratic"),
    "DPM-Solver++ 3M": lambda n: DPMSolver(n, 3),
    "DPM-Solver++ 3M corrected": lambda n: DPMSolver(n, 3, corrected_3m=True),
    "DPM-Solver++ 2S": lambda n: DPMSolver(n, 2, multistep=False),
    "DPM-Solver++ 3S": lambda n: DPMSolver(n, 3, multistep=False),
    "DPM-Solver 2M": lambda n: DPMSolver(n, 2, algorithm="dpmsolver"),
    "DPM-Solver 3S": lambda n: DPMSolver(n, 3, multistep=False, algorithm="dpmsolver"),
    "EDMHeun": lambda n: EDMHeun(n),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--references", type=int, default=4, help="reference draws the distance averages over")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--process", choices=["vp", "ve", "subvp"], default="vp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confirm", type=int, default=3, help="consecutive counts within tolerance to stop")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)

    means = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]])
    mixture = GaussianMixtureDistribution(means, torch.tensor([0.3, 0.4, 0.25]), torch.tensor([0.3, 0.3, 0.4]))
    process = {"vp": VP, "ve": VE, "subvp": SubVP}[args.process]()
    score = mixture.noised(process)
    prior = process.prior_sample((args.samples, 2), torch.Generator().manual_seed(args.seed))
    generator = torch.Generator().manual_seed(args.seed + 1)
    references = [mixture.sample(args.samples, generator) for _ in range(args.references)]

    def distance(x: torch.Tensor) -> float:
        return statistics.fmean(float(energy_distance(x, ref)) for ref in references)

    floor = statistics.fmean(float(energy_distance(mixture.sample(args.samples, generator), ref)) for ref in references)
    solutions = {d: AdaptiveODE(1e-7, 1e-7, denoise=d)(score, prior, process) for d in (False, True)}
    converged = {d: distance(x) for d, x in solutions.items()}
    print(f"process {args.process}, {args.samples} samples, tolerance {args.tolerance:.0%}; data-vs-data distance "
          f"{floor:.5f}, converged ODE distance {converged[False]:.5f} (denoised: {converged[True]:.5f})\n")
    print(f"| {'sampler':28s} | NFE | distance (vs converged) | mean ‖x − x_ODE‖ | seconds |")
    print(f"|{'-' * 30}|----:|-----------------------:|-----------------:|--------:|")
    for name, make in SAMPLERS.items():
        start, rows = time.perf_counter(), []
        for n in STEPS:
            try:
                sampler = make(n)
            except ValueError:  # too few steps for this configuration
                continue
            x, nfe, _ = sampler.draw(score, prior, process)
            d, target = distance(x), converged[sampler.denoise]
            path_error = float((x - solutions[sampler.denoise]).norm(dim=1).mean())
            rows.append((nfe, d, d / target - 1, path_error, abs(d - target) <= args.tolerance * target))
            if len(rows) >= args.confirm and all(row[-1] for row in rows[-args.confirm:]):
                break
        if all(row[-1] for row in rows[-args.confirm:]):
            nfe, d, rel, path_error, _ = rows[len(rows) - args.confirm]
            cells = f"{nfe:>3} | {f'{d:.5f} ({rel:+.1%})':>22s} | {path_error:16.4f}"
        else:
            cells = f">{rows[-1][0]} | {'-':>22s} | {'-':>16s}"
        print(f"| {name:28s} | {cells} | {time.perf_counter() - start:7.1f} |", flush=True)

if __name__ == "__main__":
    main()
