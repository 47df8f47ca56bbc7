"""Where a two-time (flow-map) student's one jump is good: X_{t→t_min} from exactly noised training data and from the
pure prior at each of several noise levels, scored by the energy distance to held-out data (2-D toy checkpoints).

    python benchmarks/flow_map_by_noise.py CKPT [--sigmas 80 40 20 10 5 2 1 0.5] [--n 2000]

Noised data x_t = α x₀ + σ ε with x₀ from the training split tests the jump on the marginal p_t it is trained on; the
prior σ̃·z (σ̃ = σ/α) is what a 1-jump sampler started at t would feed it. A consistency model whose jump is good up to
some σ and poor above it has not yet propagated consistency that far (configs/fewstep/ect_toy.yaml).
"""

from __future__ import annotations

import argparse

import torch

from lit_score.loading.checkpoint import checkpoint_datamodule, load_for_evaluation
from lit_score.metrics.distances import energy_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[80, 40, 20, 10, 5, 2, 1, 0.5])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--weights", default="auto")
    args = parser.parse_args()
    model, weights = load_for_evaluation(args.ckpt, args.weights, torch.device("cpu"))
    data = checkpoint_datamodule(args.ckpt)
    data.setup("fit")
    points = torch.stack([data.split_dataset("train")[i] for i in range(2 * args.n)])
    x0, held_out = points[: args.n], points[args.n:]
    process, flow_map = model.process, model.score_model.flow_map
    generator = torch.Generator().manual_seed(0)
    print(f"{args.ckpt} ({weights} weights), energy distance to {args.n} held-out points")
    print("σ̃ = σ/α | from noised data | from the prior")
    with torch.no_grad():
        for sigma in args.sigmas:
            t = process.t_from_log_snr(torch.full((args.n,), -float(torch.tensor(sigma).log()), dtype=torch.float64))
            t = t.to(x0.dtype)
            z = torch.randn(x0.shape, generator=generator)
            t_min = torch.full_like(t, process.t_min)
            noised = flow_map(process.perturb(x0, t, z), t, t_min)
            prior = flow_map(z * process.sigma(t)[:, None], t, t_min)
            print(f"{sigma:8g} | {energy_distance(noised, held_out).item():.4f}"
                  f" | {energy_distance(prior, held_out).item():.4f}")


if __name__ == "__main__":
    main()
