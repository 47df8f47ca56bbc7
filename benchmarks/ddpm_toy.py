"""DDPM on toy distributions with the budget of configs/ddpm/toy.yaml: sample distance vs the data-vs-data floor.

    python benchmarks/ddpm_toy.py [--datasets moons 8gaussians] [--n 2000]

Trains through the CLI (the config exactly as a user runs it, only the dataset name changed), loads the
last checkpoint, draws n samples with the config's sampler (1000-step ancestral) and prints the median
energy distance to 5 fresh draws of the data next to the median distance between two fresh draws (the floor).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from lit_score.cli import load_model, main
from lit_score.data.toy import TOY_DISTRIBUTIONS
from lit_score.metrics.distances import data_floor, energy_distance, median_distance, sliced_wasserstein

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, n: int, workdir: Path) -> dict[str, float]:
    start = time.perf_counter()
    main(["fit", "--config", str(ROOT / "configs/ddpm/toy.yaml"), "--data.init_args.name", name,
          "--trainer.logger.init_args.save_dir", str(workdir), "--trainer.enable_progress_bar", "false"])
    train_s = time.perf_counter() - start
    model = load_model(workdir / "ddpm_toy" / "version_0" / "checkpoints" / "last.ckpt")
    samples, nfe, _ = model.draw(n, generator=torch.Generator().manual_seed(0))
    draw = lambda k, g=None: TOY_DISTRIBUTIONS[name](k, generator=g)  # noqa: E731
    row = {"train_s": train_s, "nfe": nfe}
    for label, dist in (("energy", energy_distance), ("sw", partial(sliced_wasserstein, num_projections=256))):
        gen = torch.Generator().manual_seed(1)
        row[f"{label}_model"] = median_distance(samples, draw, n, dist, num_draws=5, generator=gen)
        row[f"{label}_floor"] = data_floor(draw, n, dist, num_draws=5, generator=torch.Generator().manual_seed(2))
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["moons", "8gaussians"])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    rows = {}
    for name in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            rows[name] = run(name, args.n, Path(tmp))
    print(f"\nDDPM, configs/ddpm/toy.yaml budget, n = {args.n}, medians over 5 reference draws")
    print(f"{'data':<12}{'energy dist':>12}{'floor':>10}{'ratio':>8}{'sliced W2':>11}{'floor':>9}{'ratio':>8}"
          f"{'NFE':>6}{'train s':>9}")
    for name, r in rows.items():
        ratio = r["energy_model"] / r["energy_floor"]
        print(f"{name:<12}{r['energy_model']:>12.5f}{r['energy_floor']:>10.5f}{ratio:>8.2f}"
              f"{r['sw_model']:>11.4f}{r['sw_floor']:>9.4f}{r['sw_model'] / r['sw_floor']:>8.2f}{r['nfe']:>6}"
              f"{r['train_s']:>9.1f}")
