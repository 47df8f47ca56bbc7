"""Flow matching: velocity target, velocity → score conversion against the mixture oracle, OT coupling, sampling."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn

from lit_score.data import GaussianMixtureDistribution, Toy2D
from lit_score.losses import DenoisingLoss
from lit_score.losses.flow import FlowMatchingLoss, ot_permutation
from lit_score.metrics import data_floor, energy_distance
from lit_score.models import FlowMatching
from lit_score.networks import MLP
from lit_score.processes import Interpolant
from lit_score.samplers import DDIM, Heun
from lit_score.scores import NetworkScore

MIXTURE = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.3)


class OracleVelocity(nn.Module):
    """The exact velocity E[ε − x₀ | x_t] of the interpolant for MIXTURE data, as a network of (x, c_noise)."""

    def __init__(self, process: Interpolant) -> None:
        super().__init__()
        self.process, self.oracle = process, MIXTURE.noised(process)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        t = c_noise / 1000.0  # Interpolant.c_noise(t) = 1000 t
        return self.oracle.eps(x, t) - self.oracle.denoise(x, t)


def test_defaults():
    model = FlowMatching(MLP(2, hidden=16, depth=1), sample_shape=(2,))
    assert isinstance(model.process, Interpolant) and model.score_model.target == "velocity"
    assert isinstance(model.sampler, Heun) and isinstance(model.loss, FlowMatchingLoss)
    assert not model.loss.ot_coupling and FlowMatching(MLP(2), ot_coupling=True).loss.ot_coupling


def test_velocity_target_is_eps_minus_x0_and_the_point_mass_optimum():
    """Target ε − x₀; for a point mass x₀ = c it is a function of x_t alone, (x_t − c)/t: the regression optimum."""
    process = Interpolant()
    score = NetworkScore(nn.Identity(), process, "velocity")
    gen = torch.Generator().manual_seed(0)
    c = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(64, 2)
    noise, t = torch.randn(64, 2, generator=gen, dtype=torch.float64), process.sample_time(64, gen).double()
    target = score.training_target(c, noise, t)
    torch.testing.assert_close(target, noise - c)
    torch.testing.assert_close(target, (process.perturb(c, t, noise) - c) / t[:, None])


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_velocity_converts_to_the_exact_score_and_denoiser(t):
    process = Interpolant()
    model = NetworkScore(OracleVelocity(process), process, "velocity")
    oracle = MIXTURE.noised(process)
    x = oracle.sample(256, t, torch.Generator().manual_seed(0))
    tt = torch.full((256,), t)
    torch.testing.assert_close(model.score(x, tt), oracle.score(x, tt), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.denoise(x, tt), oracle.denoise(x, tt), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", [Heun(num_steps=20), DDIM(num_steps=40)], ids=["heun", "ddim"])
def test_oracle_velocity_samples_the_mixture_with_ode_and_score_samplers(sampler):
    model = FlowMatching(OracleVelocity(Interpolant()), sample_shape=(2,))
    gen = torch.Generator().manual_seed(0)
    x = model.sample(1000, sampler=sampler, generator=gen)
    floor = data_floor(MIXTURE.sample, 1000, energy_distance, generator=gen)
    assert float(energy_distance(x, MIXTURE.sample(1000, gen))) < 3 * floor


def test_loss_without_coupling_equals_denoising_loss():
    model = NetworkScore(MLP(2, hidden=16, depth=1), Interpolant(), "velocity")
    x0 = MIXTURE.sample(32)
    a = FlowMatchingLoss()(model, x0, torch.Generator().manual_seed(3))
    b = DenoisingLoss()(model, x0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_ot_permutation_is_the_exact_minimiser():
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 2, generator=gen), torch.randn(6, 2, generator=gen)

    def cost(perm) -> float:
        return float(((x0 - noise[list(perm)]) ** 2).sum())

    best = min(cost(p) for p in itertools.permutations(range(6)))
    assert cost(ot_permutation(x0, noise).tolist()) == pytest.approx(best)
    assert sorted(ot_permutation(x0, noise).tolist()) == list(range(6))


@pytest.mark.parametrize("ot_coupling", [False, True])
def test_trains_and_samples_with_heun_and_ddim(tmp_path, ot_coupling):
    pl.seed_everything(0)
    model = FlowMatching(MLP(2, hidden=32, depth=2), ot_coupling=ot_coupling, sample_shape=(2,))
    data = Toy2D(num_samples=512, val_size=64, batch_size=64)
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=6,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and torch.isfinite(
        trainer.callback_metrics["val/loss"]
    )
    for sampler in (Heun(num_steps=5), DDIM(num_steps=5)):
        x = model.sample(16, sampler=sampler)
        assert x.shape == (16, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("config", ["toy", "digits"])
def test_cli_fast_dev_run(tmp_path, config):
    from lit_score.cli import main

    root = Path(__file__).resolve().parents[1]
    smaller = {"toy": [], "digits": ["--model.init_args.network.init_args.base_channels", "16"]}[config]
    argv = ["fit", "--config", str(root / f"configs/flow/{config}.yaml"), "--trainer.fast_dev_run", "true",
            "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--data.init_args.batch_size",
            "16", "--model.init_args.sampler.init_args.num_steps", "2", *smaller]  # fmt: skip
    main(argv)
    assert (tmp_path / "samples" / "epoch=0000.png").is_file()
