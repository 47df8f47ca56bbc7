"""EBM and flow matching on toy distributions with their toy configs' budgets: sample distance vs the data floor.

    python benchmarks/ebm_flow.py [--datasets moons 8gaussians] [--n 2000] [--families ebm flow]

Trains through the CLI (configs/ebm/toy.yaml and configs/flow/toy.yaml exactly as a user runs them, only the
dataset name changed), loads the last checkpoint, draws n samples with several samplers and prints the median
energy distance and sliced W2 to 5 fresh draws of the data next to the median between two fresh draws (the
floor). EBM rows: the model's short-run Langevin from uniform noise (60 steps), the replay buffer restored from
the checkpoint, and a long-run chain (500 steps); flow rows: Heun on the ODE (the default) and DDIM through the
velocity → score conversion.
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
from lit_score.samplers import DDIM, Heun, Langevin

ROOT = Path(__file__).resolve().parents[1]
DISTANCES = {"energy": energy_distance, "sw": partial(sliced_wasserstein, num_projections=256)}


def samples_of(family: str, model, n: int) -> dict[str, tuple[torch.Tensor, int]]:
    """Named sample sets (and their NFE) of a trained model."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    if family == "ebm":
        out["langevin-60 (fresh)"] = model.draw(n, generator=gen)[:2]
        out["replay buffer"] = (model.replay_buffer[:n].clone(), 0)
        base = model.sampler
        long_run = Langevin(500, base.step_size, base.noise_scale, base.grad_clip, base.clamp)
        out["langevin-500 (fresh)"] = model.draw(n, sampler=long_run, generator=gen)[:2]
    else:
        out["heun-50"] = model.draw(n, sampler=Heun(num_steps=50), generator=gen)[:2]
        out["ddim-50"] = model.draw(n, sampler=DDIM(num_steps=50), generator=gen)[:2]
    return out


def run(family: str, name: str, n: int, workdir: Path) -> dict[str, dict[str, float]]:
    start = time.perf_counter()
    main(
        [
            "fit",
            "--config",
            str(ROOT / f"configs/{family}/toy.yaml"),
            "--data.init_args.name",
            name,
            "--trainer.logger.init_args.save_dir",
            str(workdir),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(workdir),
        ]
    )
    train_s = time.perf_counter() - start
    model = load_model(workdir / f"{family}_toy" / "version_0" / "checkpoints" / "last.ckpt")
    draw = lambda k, g=None: TOY_DISTRIBUTIONS[name](k, generator=g)  # noqa: E731
    floors = {
        label: data_floor(draw, n, dist, num_draws=5, generator=torch.Generator().manual_seed(2))
        for label, dist in DISTANCES.items()
    }
    rows = {}
    for sampler, (x, nfe) in samples_of(family, model, n).items():
        row = {"train_s": train_s, "nfe": nfe}
        for label, dist in DISTANCES.items():
            row[f"{label}_model"] = median_distance(
                x, draw, n, dist, num_draws=5, generator=torch.Generator().manual_seed(1)
            )
            row[f"{label}_floor"] = floors[label]
        rows[sampler] = row
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["moons", "8gaussians"])
    parser.add_argument("--families", nargs="+", default=["ebm", "flow"], choices=["ebm", "flow"])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    results = []
    for family in args.families:
        for name in args.datasets:
            with tempfile.TemporaryDirectory() as tmp:
                results += [(family, name, s, r) for s, r in run(family, name, args.n, Path(tmp)).items()]
    print(f"\nconfigs/{{ebm,flow}}/toy.yaml budgets, n = {args.n}, medians over 5 reference draws")
    print(
        f"{'family':<7}{'data':<12}{'sampler':<22}{'energy dist':>12}{'floor':>10}{'ratio':>8}{'sliced W2':>11}"
        f"{'floor':>9}{'ratio':>8}{'NFE':>6}{'train s':>9}"
    )
    for family, name, sampler, r in results:
        print(
            f"{family:<7}{name:<12}{sampler:<22}{r['energy_model']:>12.5f}{r['energy_floor']:>10.5f}"
            f"{r['energy_model'] / r['energy_floor']:>8.2f}{r['sw_model']:>11.4f}{r['sw_floor']:>9.4f}"
            f"{r['sw_model'] / r['sw_floor']:>8.2f}{r['nfe']:>6}{r['train_s']:>9.1f}"
        )
