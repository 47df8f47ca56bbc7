"""NCSN and score SDE (VP) on toy data with the budgets of their toy configs: sample quality and PF-ODE likelihood.

    python benchmarks/score_families.py [--datasets moons mixture] [--n 2000] [--threads 1]

Trains through the CLI (configs/ncsn/toy.yaml and configs/sde/vp_toy.yaml as a user runs them, with only the data
swapped — ``mixture`` is lit_score.data.GaussianMixture, an 8-component ring with exact density — and one validation
at the end instead of three), loads the last checkpoints, draws n samples with each config's sampler and prints
the median energy distance and sliced W2 to 5 fresh draws of the data next to the data-vs-data floor. On the
mixture it also prints the score SDE's PF-ODE negative log-likelihood (exact divergence, adaptive dopri5,
rtol = atol = 1e-5) of n/4 fresh points next to the exact NLL of the data, of the noised marginal at t_min, and of
the oracle score pushed through the same ODE.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from lit_score.cli import load_model, main
from lit_score.data import GaussianMixture
from lit_score.data.toy import TOY_DISTRIBUTIONS
from lit_score.metrics.distances import data_floor, energy_distance, median_distance, sliced_wasserstein
from lit_score.metrics.likelihood import log_likelihood

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"NCSN": "configs/ncsn/toy.yaml", "ScoreSDE (VP)": "configs/sde/vp_toy.yaml"}


def data_args(name: str) -> tuple[list[str], callable]:
    """CLI overrides selecting the data set, and its sampler ``(n, generator) -> (n, 2)``."""
    if name == "mixture":
        mixture = GaussianMixture().distribution
        return ["--data.class_path", "lit_score.data.GaussianMixture"], lambda k, g=None: mixture.sample(k, g)
    return ["--data.init_args.name", name], lambda k, g=None: TOY_DISTRIBUTIONS[name](k, generator=g)


def train(config: str, name: str, workdir: Path):
    start = time.perf_counter()
    main(["fit", "--config", str(ROOT / config), *data_args(name)[0], "--trainer.logger.init_args.save_dir",
          str(workdir), "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.check_val_every_n_epoch", "60"])  # validate (sample grid) once, at the end
    train_s = time.perf_counter() - start
    ckpt = next(workdir.rglob("last.ckpt"))
    return load_model(ckpt), train_s


def quality(model, draw, n: int) -> dict[str, float]:
    start = time.perf_counter()
    samples, nfe, _ = model.draw(n, generator=torch.Generator().manual_seed(0))
    row = {"nfe": nfe, "sample_s": time.perf_counter() - start}
    for label, dist in (("energy", energy_distance), ("sw", partial(sliced_wasserstein, num_projections=256))):
        row[f"{label}_model"] = median_distance(samples, draw, n, dist, num_draws=5,
                                                generator=torch.Generator().manual_seed(1))
        row[f"{label}_floor"] = data_floor(draw, n, dist, num_draws=5, generator=torch.Generator().manual_seed(2))
    return row


def likelihood(model, n: int) -> dict[str, float]:
    mixture = GaussianMixture().distribution
    x = mixture.sample(n, torch.Generator().manual_seed(3))
    process = model.process
    model.eval()
    start = time.perf_counter()
    learned = log_likelihood(model.score_model, process, x, divergence="exact")
    seconds = time.perf_counter() - start
    oracle = mixture.noised(process)
    through_ode = log_likelihood(oracle, process, x.double(), divergence="exact")
    return {
        "model": -learned.log_prob.mean().item(), "model_nfe": learned.nfe, "model_s": seconds,
        "oracle_ode": -through_ode.log_prob.mean().item(),
        "exact_tmin": -oracle.log_prob(x.double(), process.t_min).mean().item(),
        "exact_data": -mixture.log_prob(x.double()).mean().item(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["moons", "mixture"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny MLPs: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, nll = {}, None
    for family, config in FAMILIES.items():
        for name in args.datasets:
            with tempfile.TemporaryDirectory() as tmp:
                model, train_s = train(config, name, Path(tmp))
                rows[family, name] = {"train_s": train_s, **quality(model, data_args(name)[1], args.n)}
                if name == "mixture" and family.startswith("ScoreSDE"):
                    nll = likelihood(model, args.n // 4)

    print(f"\nScore families, toy-config budgets (2400 Adam steps), n = {args.n}, medians over 5 reference draws")
    print(f"{'family':<15}{'data':<9}{'energy dist':>12}{'floor':>9}{'ratio':>7}{'sliced W2':>11}{'floor':>8}"
          f"{'ratio':>7}{'NFE':>6}{'train s':>9}{'sample s':>10}")
    for (family, name), r in rows.items():
        print(f"{family:<15}{name:<9}{r['energy_model']:>12.5f}{r['energy_floor']:>9.5f}"
              f"{r['energy_model'] / r['energy_floor']:>7.2f}{r['sw_model']:>11.4f}{r['sw_floor']:>8.4f}"
              f"{r['sw_model'] / r['sw_floor']:>7.2f}{r['nfe']:>6}{r['train_s']:>9.1f}{r['sample_s']:>10.1f}")
    if nll is not None:
        print(f"\nScoreSDE (VP) on the mixture: mean NLL in nats of {args.n // 4} fresh points (D = 2)")
        print(f"  PF-ODE, trained score (exact div., dopri5 1e-5)  {nll['model']:8.4f}   "
              f"NFE {nll['model_nfe']}, {nll['model_s']:.1f} s")
        print(f"  PF-ODE, exact mixture score (same protocol)      {nll['oracle_ode']:8.4f}")
        print(f"  exact NLL of the noised marginal p_t_min         {nll['exact_tmin']:8.4f}")
        print(f"  exact NLL of the data density p_0                {nll['exact_data']:8.4f}")
