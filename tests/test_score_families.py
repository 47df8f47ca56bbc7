"""NCSN and ScoreSDE: defaults, a few training steps, sampling, σ₁ from the data, the likelihood-weighted loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_score.callbacks import LikelihoodCallback
from lit_score.data import GaussianMixture, Toy2D
from lit_score.losses import DenoisingLoss
from lit_score.models import NCSN, ScoreSDE, max_pairwise_distance
from lit_score.networks import MLP
from lit_score.processes import VE, VP, DiscreteVE, SubVP
from lit_score.samplers import AnnealedLangevin, EulerMaruyama, PredictorCorrector
from lit_score.scores import NetworkScore

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(**kwargs) -> pl.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "accelerator": "cpu", "devices": 1}
    return pl.Trainer(**{**options, **kwargs})


def _mlp() -> MLP:
    return MLP(2, hidden=32, depth=2, embedding="fourier")


def test_defaults():
    ncsn = NCSN(_mlp())
    assert isinstance(ncsn.process, DiscreteVE) and ncsn.process.num_levels == 232
    assert (ncsn.process.sigma_max, ncsn.process.sigma_min) == (50.0, 0.01)
    assert ncsn.score_model.target == "score" and ncsn.score_model.scale_by_sigma
    assert ncsn.loss.weighting == "sigma2" and isinstance(ncsn.sampler, AnnealedLangevin)
    sde = ScoreSDE(_mlp())
    assert isinstance(sde.process, VP) and (sde.process.beta_min, sde.process.beta_max) == (0.1, 20.0)
    assert sde.score_model.target == "score" and sde.score_model.scale_by_sigma and sde.loss.weighting == "sigma2"
    assert isinstance(sde.sampler, PredictorCorrector)
    assert not ScoreSDE(_mlp(), target="eps").score_model.scale_by_sigma
    weighted = ScoreSDE(_mlp(), likelihood_weighting=True, importance_sampling=True, reduce="sum")
    assert repr(weighted.loss) == "DenoisingLoss(weighting='likelihood', reduce='sum', importance_sampling=True)"
    assert weighted.hparams["likelihood_weighting"] and weighted.hparams["reduce"] == "sum"
    with pytest.raises(ValueError, match="default loss"):
        ScoreSDE(_mlp(), loss=DenoisingLoss(), likelihood_weighting=True)


def test_max_pairwise_distance_is_chunked_brute_force():
    x = torch.randn(301, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert max_pairwise_distance(x, chunk_size=64) == pytest.approx(torch.pdist(x.flatten(1)).max().item(), rel=1e-12)


def test_ncsn_sigma_max_from_data_trains_samples_and_survives_checkpoint(tmp_path):
    data = Toy2D("moons", num_samples=512, val_size=64, batch_size=64)
    process = DiscreteVE(sigma_min=0.01, sigma_max=1.0, num_levels=8)
    sampler = AnnealedLangevin(steps_per_level=3, eps=1e-4)
    model = NCSN(_mlp(), process=process, sampler=sampler, sample_shape=(2,), sigma_max_from_data=True,
                 sigma_max_samples=400)
    trainer = _trainer(max_steps=5, limit_val_batches=1)
    trainer.fit(model, data)
    expected = max_pairwise_distance(data.reference_samples(400, torch.Generator().manual_seed(0)).double())
    assert model.process.sigma_max == pytest.approx(expected, rel=1e-6) and model.process.num_levels == 8
    assert model.sigmas[0].item() == pytest.approx(expected) and model.sigmas[-1].item() == pytest.approx(0.01)
    drawn = model.draw(16, generator=torch.Generator().manual_seed(0))
    samples = drawn.samples
    assert samples.shape == (16, 2) and torch.isfinite(samples).all() and drawn.nfe == 8 * 3 + 1

    trainer.save_checkpoint(tmp_path / "ncsn.ckpt")
    loaded = NCSN.load_from_checkpoint(tmp_path / "ncsn.ckpt", network=_mlp(), process=process, sampler=sampler)
    assert loaded.process.sigma_max == model.process.sigma_max
    again = loaded.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(again, samples)


@pytest.mark.parametrize("process", [VP(), VE(sigma_max=5.0), SubVP()], ids=["vp", "ve", "subvp"])
def test_score_sde_trains_samples_and_logs_bits_per_dim(process):
    data = GaussianMixture(num_samples=256, val_size=32, batch_size=32)
    model = ScoreSDE(_mlp(), process=process, sampler=EulerMaruyama(num_steps=10), sample_shape=(2,),
                     likelihood_weighting=isinstance(process, VP), importance_sampling=isinstance(process, VP))
    callback = LikelihoodCallback(num_samples=16, divergence="exact", fixed_steps=4)
    trainer = _trainer(fast_dev_run=True, callbacks=[callback])
    trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["val/bpd"])
    assert callback.last_result.bits_per_dim.shape == (16,) and callback.last_result.nfe == 16
    samples, nfe, _ = model.draw(8)
    assert samples.shape == (8, 2) and torch.isfinite(samples).all() and nfe == 10
    trainer.validate(model, data, verbose=False)  # under inference_mode, which the PF-ODE must leave
    assert torch.isfinite(trainer.callback_metrics["val/bpd"])


@pytest.mark.parametrize("process", [VP(), VE(sigma_max=5.0)], ids=["vp", "ve"])
def test_importance_sampling_keeps_the_expectation(process):
    """Monte Carlo means of the likelihood-weighted loss agree with and without t ∝ g²/σ² (4 standard errors)."""
    torch.manual_seed(0)
    score = NetworkScore(_mlp(), process, "score", scale_by_sigma=True)
    x0 = torch.randn(64, 2).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        plain = DenoisingLoss("likelihood")(score, x0, g)
        weighted = DenoisingLoss("likelihood", importance_sampling=True)(score, x0, g)
    se = math.sqrt(plain.var() / len(plain) + weighted.var() / len(weighted))
    assert abs(plain.mean() - weighted.mean()) < 4 * se
    if isinstance(process, VP):  # for VE, g²/σ² is constant: importance sampling is uniform sampling
        assert weighted.std() < 0.5 * plain.std()


def test_importance_sampling_refuses_a_discrete_process():
    score = NetworkScore(_mlp(), DiscreteVE(num_levels=10), "score", scale_by_sigma=True)
    with pytest.raises(ValueError, match="discrete"):
        DenoisingLoss("likelihood", importance_sampling=True)(score, torch.randn(4, 2))


def test_likelihood_weighting_is_on_the_score_error_for_any_target():
    """For target x0 the loss is g²·mean‖s_θ − ∇log p_{0t}‖², with the score converted from x̂₀ by NetworkScore."""
    torch.manual_seed(0)
    process = SubVP()
    score = NetworkScore(_mlp(), process, "x0")
    x0 = torch.randn(32, 2)
    loss = DenoisingLoss("likelihood")(score, x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = process.sample_time(32, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = process.perturb(x0, t, noise)
    sigma = process.sigma(t)[:, None]
    expected = process.g2(t) * ((score.score(x_t, t) + noise / sigma) ** 2).mean(1)
    assert torch.allclose(loss, expected, rtol=1e-4)


TOY_CONFIGS = ["ncsn/toy", "sde/vp_toy", "sde/ve_toy", "sde/subvp_toy", "edm/toy", "ncsn/toy_ssm", "sde/vp_toy_ssm",
               "vdm/toy"]
DIGITS_CONFIGS = ["ncsn/digits", "sde/vp_digits", "sde/ve_digits", "sde/subvp_digits", "edm/digits",
                  "vdm/digits"]
# shrink the models' own samplers (used by the toy configs' sample grids) so a fast_dev_run stays fast
FEW_STEPS = {
    "ncsn": ["--model.init_args.sampler.init_args.steps_per_level", "1"],
    "sde/vp": ["--model.init_args.sampler.init_args.num_steps", "5"],
    "sde/subvp": ["--model.init_args.sampler.init_args.num_steps", "5"],
    "sde/ve": ["--model.init_args.sampler.init_args.predictor.init_args.num_steps", "5"],
    "edm": ["--model.init_args.sampler.init_args.num_steps", "3"],
    "vdm": ["--model.init_args.sampler.init_args.num_steps", "5"],
}


# the SDE digits configs' callbacks (a 99-NFE U-Net sample grid, a 20-step likelihood) with their costs cut
HEUN_3 = {"class_path": "lit_score.samplers.Heun", "init_args": {"num_steps": 3}}
CHEAP_CALLBACKS = json.dumps([
    {"class_path": "lit_score.callbacks.SampleGrid", "init_args": {"num_samples": 4, "sampler": HEUN_3}},
    {"class_path": "lit_score.callbacks.LikelihoodCallback", "init_args": {"num_samples": 4, "fixed_steps": 2}},
    {"class_path": "lit_score.callbacks.EMA", "init_args": {"decay": 0.995}},
])


@pytest.mark.parametrize("config", TOY_CONFIGS + DIGITS_CONFIGS)
def test_cli_fast_dev_run(config, tmp_path):
    from lit_score.cli import main

    few = next(v for k, v in FEW_STEPS.items() if config.startswith(k))
    unet = config.startswith(("sde", "edm", "vdm")) and "digits" in config
    cheap = ["--trainer.callbacks", CHEAP_CALLBACKS] if unet else []
    main(["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--trainer.fast_dev_run", "true",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.accelerator", "cpu", "--data.init_args.batch_size", "16", *few, *cheap])
