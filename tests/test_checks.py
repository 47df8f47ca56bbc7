"""Numeric ranges are checked in constructors (one line naming the argument, its range and the value; NaN refused),
and every sampler can rebuild itself from its settings."""

from __future__ import annotations

import inspect
import math

import pytest

from lit_score import callbacks, data, losses, models, networks, processes, samplers
from lit_score.checks import check_number, check_range
from lit_score.evaluation.evaluate import describe_sampler

NAN, INF = float("nan"), float("inf")

# (constructor, keyword arguments, what the message must name)
BAD = [
    (processes.VP, {"cosine_s": -1.0}, "cosine_s must be a finite number >= 0"),
    (processes.VP, {"t_min": NAN}, "t_min"),
    (processes.VE, {"sigma_min": 2.0, "sigma_max": 1.0}, "0 < sigma_min < sigma_max"),
    (processes.DiscreteVP, {"num_timesteps": 0}, "num_timesteps must be an integer >= 1, got 0"),
    (processes.DiscreteVP, {"cosine_s": NAN}, "cosine_s"),
    (processes.DiscreteVP, {"beta_end": 1.5}, "0 < beta_start <= beta_end < 1"),
    (processes.EDM, {"p_std": 0.0}, "p_std must be a finite number > 0"),
    (processes.EDM, {"p_mean": NAN}, "p_mean must be a finite number"),
    (processes.Interpolant, {"t_max": INF}, "t_max must be a finite number > 0, got inf"),
    (samplers.Euler, {"num_steps": 2.5}, "num_steps must be an integer >= 1, got 2.5"),
    (samplers.DDIM, {"eta": NAN}, "eta must be a finite number >= 0, got nan"),
    (samplers.DDIM, {"clip_denoised": 0.0}, "clip_denoised must be a finite number > 0 or None"),
    (samplers.Ancestral, {"clip_denoised": -1.0}, "clip_denoised"),
    (samplers.AdaptiveODE, {"rtol": 0.0}, "rtol must be a finite number > 0"),
    (samplers.AdaptiveODE, {"max_steps": 0}, "max_steps must be an integer >= 1"),
    (samplers.AdaptiveSDE, {"safety": 1.5}, "safety must be a finite number > 0 and <= 1, got 1.5"),
    (samplers.AdaptiveSDE, {"h_init": NAN}, "h_init"),
    (samplers.EDMHeun, {"S_max": 0.5, "S_min": 1.0}, "S_max must be a number >= 1, got 0.5"),
    (samplers.EDMHeun, {"rho": 0.0}, "rho must be a finite number > 0"),
    (samplers.EDMHeun, {"S_churn": NAN}, "S_churn"),
    (samplers.Langevin, {"step_size": NAN}, "step_size must be a finite number > 0, got nan"),
    (samplers.Langevin, {"noise_scale": -0.1}, "noise_scale must be a finite number >= 0"),
    (samplers.Langevin, {"clamp": (1.0, -1.0)}, "clamp must be a pair (lo, hi) of finite numbers with lo < hi"),
    (samplers.AnnealedLangevin, {"eps": NAN}, "eps"),
    (samplers.AnnealedLangevin, {"num_levels": 1}, "num_levels must be an integer >= 2 or None, got 1"),
    (samplers.LangevinCorrector, {"snr": NAN}, "snr must be a finite number > 0"),
    (samplers.LangevinCorrector, {"n_steps": -1}, "n_steps must be an integer >= 0"),
    (losses.ContrastiveDivergence, {"alpha": NAN}, "alpha must be a finite number >= 0"),
    (losses.ExactScoreMatching, {"max_dim": 0}, "max_dim must be an integer >= 1"),
    (losses.SlicedScoreMatching, {"num_projections": 0}, "num_projections must be an integer >= 1"),
    (losses.SlicedScoreMatching, {"t": -0.5}, "t must be a finite number >= 0 or None"),
    (networks.MLP, {"data_dim": 0}, "data_dim must be an integer >= 1, got 0"),
    (networks.MLP, {"data_dim": 2, "hidden": -4}, "hidden must be an integer >= 1"),
    (networks.EnergyMLP, {"data_dim": 2, "depth": -1}, "depth must be an integer >= 0"),
    (networks.UNet, {"base_channels": 0}, "base_channels must be an integer >= 1"),
    (networks.UNet, {"dropout": 1.0}, "dropout must be a finite number >= 0 and < 1, got 1.0"),
    (networks.UNet, {"channel_mult": ()}, "channel_mult must be a non-empty tuple of integers >= 1"),
    (networks.EnergyCNN, {"in_channels": 0}, "in_channels must be an integer >= 1"),
    (networks.EnergyCNN, {"channels": (32, 0)}, "channels must be a non-empty tuple of integers >= 1"),
    (data.GaussianMixture, {"std": NAN}, "std must be a finite number > 0, got nan"),
    (data.GaussianMixture, {"num_components": 0}, "num_components must be an integer >= 1"),
    (data.Toy2D, {"num_samples": 0}, "num_samples must be an integer >= 1"),
    (data.Toy2D, {"batch_size": -1}, "batch_size >= 1"),
    (data.Digits, {"image_size": 0}, "image_size must be an integer >= 1"),
    (data.Digits, {"val_fraction": 1.5}, "val_size is a count >= 0 or a fraction in [0, 1)"),
    (callbacks.SampleGrid, {"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1"),
    (callbacks.EnergyHistogram, {"bins": 0}, "bins must be an integer >= 1"),
    (callbacks.LikelihoodCallback, {"num_probes": 0}, "num_probes must be an integer >= 1"),
    (callbacks.LikelihoodCallback, {"rtol": NAN}, "rtol must be a finite number > 0"),
    (callbacks.LikelihoodCallback, {"fixed_steps": 0}, "fixed_steps must be an integer >= 1 or None"),
    (callbacks.NonFiniteGuard, {"max_consecutive": 0}, "max_consecutive"),
]


def _model(cls, **kwargs):
    if cls is models.EBM:
        return cls(networks.EnergyMLP(data_dim=2), **kwargs)
    return cls(networks.MLP(data_dim=2), **kwargs)


MODEL_BAD = [
    (models.EBM, {"reuse_prob": 1.5}, "reuse_prob must be a finite number >= 0 and <= 1, got 1.5"),
    (models.EBM, {"reuse_prob": NAN}, "reuse_prob"),
    (models.EBM, {"max_energy": 0.0}, "max_energy must be a finite number > 0"),
    (models.EBM, {"max_rollbacks": -1}, "max_rollbacks must be an integer >= 0"),
    (models.EBM, {"data_range": (1.0, 1.0)}, "data_range must be a pair (lo, hi) of finite numbers with lo < hi"),
    (models.DDPM, {"warmup_steps": -5}, "warmup_steps must be an integer >= 0"),
    (models.DDPM, {"sample_shape": (2, 0)}, "sample_shape must be a non-empty tuple of integers >= 1"),
    (models.NCSN, {"sigma_max_samples": 0}, "sigma_max_samples must be an integer >= 1"),
]


@pytest.mark.parametrize("cls, kwargs, says", BAD, ids=lambda v: getattr(v, "__name__", None) or str(v)[:30])
def test_a_bad_number_fails_in_the_constructor_naming_it(cls, kwargs, says):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cls, kwargs, says", MODEL_BAD, ids=lambda v: getattr(v, "__name__", None) or str(v)[:30])
def test_a_bad_model_setting_fails_in_the_constructor_naming_it(cls, kwargs, says):
    with pytest.raises(ValueError, match=None) as info:
        _model(cls, **kwargs)
    assert says in str(info.value)


def test_check_number_refuses_nan_bools_and_strings_and_allows_inf_only_when_asked():
    for bad in (NAN, True, "1", None):
        with pytest.raises(ValueError):
            check_number("x", bad, ge=0.0)
    assert check_number("x", INF, ge=0.0, allow_inf=True) == INF
    with pytest.raises(ValueError, match="x must be a finite number >= 0, got inf"):
        check_number("x", INF, ge=0.0)
    assert check_number("x", None, gt=0.0, allow_none=True) is None
    assert check_range("r", [0, 1]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="r must be a pair"):
        check_range("r", 3)


def test_defaults_and_edge_values_still_construct():
    # the boundaries that are legal: t_min 0, eta 0, noise 0, S_max inf, dropout 0, reuse_prob 0 and 1
    processes.VP(t_min=0.0)
    samplers.DDIM(eta=0.0)
    samplers.Langevin(noise_scale=0.0)
    samplers.EDMHeun(S_max=math.inf)
    networks.UNet(dropout=0.0, base_channels=8, channel_mult=(1,), resolution=8)
    for p in (0.0, 1.0):
        _model(models.EBM, reuse_prob=p)


SAMPLERS = [getattr(samplers, n) for n in samplers.__all__ if inspect.isclass(getattr(samplers, n))
            and issubclass(getattr(samplers, n), samplers.Sampler) and not inspect.isabstract(getattr(samplers, n))]


@pytest.mark.parametrize("cls", SAMPLERS, ids=lambda c: c.__name__)
def test_every_sampler_rebuilds_from_its_settings_and_changes_only_what_is_given(cls):
    sampler = cls()
    assert describe_sampler(sampler.with_settings()) == describe_sampler(sampler)
    changed = sampler.with_settings(num_steps=7) if "num_steps" in sampler.settings() else sampler.with_settings()
    before, after = describe_sampler(sampler)["init_args"], describe_sampler(changed)["init_args"]
    assert {k for k in before if before[k] != after[k]} <= {"num_steps"}
