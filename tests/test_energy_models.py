"""Noise-conditional energies: a diffusion model whose score is −∇ₓE(x, t) runs every sampler, and its energy gives
the Metropolis-adjusted corrector its accept/reject test. Checked with the exact mixture energy −log p_t."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from test_samplers_oracle import MIXTURE, SAMPLERS, N

from lit_score.losses import RecoveryLikelihood
from lit_score.metrics.distances import energy_distance
from lit_score.models import DDPM, ScoreSDE
from lit_score.networks import MLP, NoiseConditionalEnergy
from lit_score.processes import VP, DiscreteVP
from lit_score.samplers import (
    HMC,
    MALA,
    AnnealedMCMC,
    MALACorrector,
    PredictorCorrector,
    RecoverySampler,
    ReverseDiffusion,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PROCESS = VP()
NOISED = MIXTURE.noised(PROCESS)


class ExactEnergy(torch.nn.Module):
    """−log p_t(x) of the mixture under VP, as a backbone taking the network's conditioning c = 999·t."""

    def forward(self, x, c):
        return -NOISED.log_prob(x, c / 999.0)


def exact_model() -> ScoreSDE:
    return ScoreSDE(NoiseConditionalEnergy(ExactEnergy(), head="sum"), process=PROCESS, target="score",
                    scale_by_sigma=False, sample_shape=(2,))


@pytest.fixture(scope="module")
def floor() -> float:
    g = torch.Generator().manual_seed(0)
    return statistics.median(float(energy_distance(MIXTURE.sample(N, g), MIXTURE.sample(N, g))) for _ in range(5))


def distance(samples: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(3)
    return statistics.median(float(energy_distance(part, MIXTURE.sample(N, g))) for part in samples.split(N))


def test_the_energy_is_the_log_density_and_its_gradient_the_score():
    model = exact_model()
    assert model.has_energy
    x, t = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), torch.rand(64) * 0.9 + 0.05
    torch.testing.assert_close(model.score_model.energy(x, t), -NOISED.log_prob(x, t))
    energy, score = model.score_model.energy_and_score(x, t)
    torch.testing.assert_close(score, NOISED.score(x, t), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.score_model(x, t), NOISED.score(x, t), rtol=1e-4, atol=1e-5)


ALL = {**SAMPLERS, "pc_mala_corrector": lambda: PredictorCorrector(ReverseDiffusion(100), MALACorrector()),
       "annealed_mala": lambda: AnnealedMCMC(MALA(step_size=0.2, adapt_steps=10), num_levels=20, steps_per_level=5)}


@pytest.mark.parametrize("name", list(ALL))
def test_every_sampler_runs_on_an_energy_model_and_reproduces_the_mixture(name, floor):
    sampler = ALL[name]()
    samples = exact_model().sample(2 * N, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert distance(samples) <= 2 * floor, f"{name}: {distance(samples) / floor:.2f}× the floor"


def test_the_mala_corrector_accepts_most_snr_steps_on_the_exact_energy(floor):
    sampler = PredictorCorrector(ReverseDiffusion(100), MALACorrector(snr=0.16))
    drawn = exact_model().draw(2 * N, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert 0.6 < drawn.measurements["acceptance_rate"] < 0.9  # measured 0.73: the SNR-0.16 step is near MALA's optimum
    assert drawn.nfe == 100 + 99 * 2  # the predictor's steps and two energy evaluations per corrector step


def test_a_trained_energy_network_backpropagates_through_its_gradient_and_serves_mala():
    """ε-parameterised energy on the MLP: one denoising step changes every backbone weight (double backprop), and
    the model's score is −∇ₓE of the energy NetworkScore reports."""
    torch.manual_seed(0)
    model = DDPM(NoiseConditionalEnergy(MLP(data_dim=2, hidden=32, depth=2)), process=DiscreteVP(num_timesteps=50),
                 sample_shape=(2,))
    x0 = torch.randn(32, 2)
    loss = model.loss(model.score_model, x0).mean()
    loss.backward()
    grads = [p.grad for p in model.network.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    energy, score = model.score_model.energy_and_score(x, t)
    torch.testing.assert_close(score, model.score_model.score(x, t), rtol=1e-4, atol=1e-6)
    assert model.can_use(MALA()) and model.can_use(HMC())
    plain = DDPM(MLP(data_dim=2, hidden=32, depth=2), process=DiscreteVP(num_timesteps=50), sample_shape=(2,))
    assert not plain.has_energy and "has only a score" in plain.sampler_problem(MALA())
    with pytest.raises(ValueError, match="defines no energy"):
        DDPM(NoiseConditionalEnergy(MLP(data_dim=2)), target="x0", sample_shape=(2,)).score_model.energy(x, t)


def test_the_likelihood_ode_differentiates_through_an_energy_score():
    """The PF-ODE divergence ∇ₓ·s needs the Hessian of E: on the exact mixture energy (eval mode, as evaluation runs)
    the model's bits/dim equal the mixture's exact −log p_{t_min} (1e-2 nats per dimension, as the oracle test)."""
    model = exact_model().double().eval()
    x = MIXTURE.sample(32, torch.Generator().manual_seed(0)).double()
    est = model.estimate_likelihood("pf_ode", x, "none", torch.Generator().manual_seed(1), {"divergence": "exact"})
    exact = -NOISED.log_prob(x, PROCESS.t_min)
    assert (est.nats - exact).abs().max() < 2e-2


def test_annealed_mala_adapts_every_noise_level_to_the_optimal_acceptance(floor):
    """Each level's dual averaging lands near MALA's 0.574 although σ_t spans 1 → 0.0045 (measured 0.52-0.61);
    without adaptation the ladder's c·σ² steps are far too timid at this budget (measured 2.99× the floor)."""
    sampler = AnnealedMCMC(MALA(step_size=0.2, adapt_steps=10), num_levels=20, steps_per_level=5)
    samples, nfe, measured = exact_model().draw(2 * N, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert all(abs(a - 0.574) < 0.06 for a in measured["level_acceptance"]), measured["level_acceptance"]
    assert len(measured["level_step_sizes"]) == 20 and nfe == 20 * (1 + 10 + 5)
    timid = AnnealedMCMC(MALA(step_size=0.2), num_levels=20, steps_per_level=5)
    assert distance(exact_model().sample(2 * N, sampler=timid, generator=torch.Generator().manual_seed(1))) > 2 * floor
    assert distance(samples) <= 2 * floor  # measured 1.29×


# --- diffusion recovery likelihood ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mh", [False, True])
def test_recovery_chains_on_the_exact_energy_reproduce_the_mixture(mh, floor):
    """With E = −log p_t of the mixture every recovery density p(x_s | x_t) is exact, so 6 recoveries of 30 steps from
    the prior reproduce the mixture (measured 0.87× the floor with plain Langevin, 1.40× with MH at acceptance 0.99)."""
    sampler = RecoverySampler(num_levels=6, steps_per_level=30, mh=mh)
    samples, _, measured = exact_model().draw(2 * N, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert distance(samples) <= 2 * floor, f"{distance(samples) / floor:.2f}× the floor"
    assert (measured["acceptance_rate"] > 0.7) if mh else "acceptance_rate" not in measured
    assert sampler.requires_energy == mh


def test_the_recovery_loss_trains_energy_differences_at_the_ladders_levels():
    """The loss is E(x_s, s) − E(x̃_s, s) at the ladder's levels: on the exact energy its negatives are (nearly)
    distributed as the positives, so the mean is small next to the energies' spread; a model whose energies are
    halved (a hotter density: negatives spread out) gets a clearly negative mean (measured −0.014 ± 0.006 vs −0.21);
    the gradient reaches every weight of an energy network by plain backpropagation (no double backprop)."""
    x0 = MIXTURE.sample(20000, torch.Generator().manual_seed(2))
    loss = RecoveryLikelihood()
    exact = loss(exact_model().score_model, x0, torch.Generator().manual_seed(3))

    class Hot(torch.nn.Module):
        def forward(self, x, c):
            return -0.5 * NOISED.log_prob(x, c / 999.0)

    hot = ScoreSDE(NoiseConditionalEnergy(Hot(), head="sum"), process=PROCESS, target="score", scale_by_sigma=False,
                   sample_shape=(2,))
    hotter = loss(hot.score_model, x0, torch.Generator().manual_seed(3))
    assert exact.mean().abs() < 0.05 and hotter.mean() < exact.mean() - 0.1
    model = ScoreSDE(NoiseConditionalEnergy(MLP(data_dim=2, hidden=32, depth=2)), process=VP(), loss=loss,
                     sample_shape=(2,))
    model.loss(model.score_model, x0[:64], torch.Generator().manual_seed(0)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.network.parameters())
    with pytest.raises(ValueError, match="trains an energy E"):
        ScoreSDE(MLP(data_dim=2), process=VP(), loss=loss, sample_shape=(2,))


@pytest.mark.parametrize("config, shorter", [
    ("noise_conditional_toy", ["--model.init_args.sampler.init_args.predictor.init_args.num_steps", "4"]),
    ("recovery_toy", ["--model.init_args.sampler.init_args.steps_per_level", "2",
                      "--model.init_args.loss.init_args.num_steps", "2"]),
    ("noise_conditional_digits", ["--trainer.callbacks", json.dumps([  # the config's grid sampler, fewer steps
        {"class_path": "lit_score.callbacks.SampleGrid",
         "init_args": {"num_samples": 4, "sampler": {"class_path": "lit_score.samplers.Heun",
                                                     "init_args": {"num_steps": 2}}}}])]),
])
def test_the_noise_conditional_energy_configs_train_sample_and_score(tmp_path, config, shorter):
    """One fast_dev_run of each config as written (only the chains shortened) trains, validates and writes a finite
    grid of 2-D samples drawn with the config's own energy sampler."""
    from pathlib import Path

    import numpy as np

    from lit_score.cli import main

    root = Path(__file__).resolve().parents[1]
    main(["fit", "--config", str(root / f"configs/ebm/{config}.yaml"), "--trainer.fast_dev_run", "true",
          "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--data.init_args.batch_size",
          "32", *shorter])
    grids = sorted(tmp_path.rglob("samples/*.npz"))
    assert grids, sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    samples = np.load(grids[-1])["samples"]
    shape = (1, 16, 16) if "digits" in config else (2,)
    assert samples.shape[1:] == shape and len(samples) > 0 and np.isfinite(samples).all()


def test_a_norm_energy_on_a_zero_initialised_unet_is_refused_and_trains_without_it():
    """Ẽ = ½‖F‖² with DDPM's zero-initialised last conv (F ≡ 0) is a saddle: the loss's gradient is exactly 0, so
    such a run never moves (found on digits: 367 steps at a flat loss). It is refused; without the zero init the
    double-backprop gradient reaches every parameter."""
    from lit_score.losses import DenoisingLoss
    from lit_score.networks import UNet
    from lit_score.scores import NetworkScore

    kw = dict(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
              dropout=0.0, resolution=8)
    with pytest.raises(ValueError, match="zero_init_output false"):
        NoiseConditionalEnergy(UNet(**kw))
    torch.manual_seed(0)
    score = NetworkScore(NoiseConditionalEnergy(UNet(**kw, zero_init_output=False)), VP(), "eps")
    DenoisingLoss()(score, torch.randn(4, 1, 8, 8)).mean().backward()
    grads = [p.grad for p in score.network.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
