"""Ancestral (DDPM) and DDIM samplers against the Gaussian-mixture oracle and a hand-written DDPM loop."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.data import GaussianMixtureDistribution
from lit_score.metrics.distances import data_floor, energy_distance, median_distance
from lit_score.processes import VE, VP, DiscreteVP, SubVP
from lit_score.samplers import DDIM, Ancestral

N = 1500
MIXTURE = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.3, dim=2)


def reproduces_mixture(samples: torch.Tensor) -> tuple[float, float]:
    """(median energy distance to fresh mixture draws, the data-vs-data floor at the same n)."""
    gen = torch.Generator().manual_seed(123)
    draw = lambda n, g=None: MIXTURE.sample(n, generator=g)  # noqa: E731
    floor = data_floor(draw, N, energy_distance, num_draws=5, generator=gen)
    dist = median_distance(samples, draw, N, energy_distance, num_draws=5, generator=gen)
    return dist, floor


CASES = [
    ("discrete_vp", DiscreteVP(num_timesteps=1000), Ancestral(num_steps=200)),
    ("discrete_vp_beta", DiscreteVP(num_timesteps=1000), Ancestral(num_steps=200, variance="beta")),
    ("vp", VP(), Ancestral(num_steps=200)),
    ("subvp", SubVP(), Ancestral(num_steps=200)),
    ("ve", VE(sigma_min=0.01, sigma_max=10.0), Ancestral(num_steps=300)),
    ("vp_ddim", VP(), DDIM(num_steps=50)),
    ("ve_ddim", VE(sigma_min=0.01, sigma_max=10.0), DDIM(num_steps=100)),
    ("vp_ddim_eta1", VP(), DDIM(num_steps=100, eta=1.0)),
]


@pytest.mark.parametrize("name,process,sampler", CASES, ids=[c[0] for c in CASES])
def test_sampler_reproduces_mixture_with_exact_score(name, process, sampler):
    score = MIXTURE.noised(process)
    x = process.prior_sample((N, 2), generator=torch.Generator().manual_seed(0))
    drawn = sampler.draw(score, x, process, generator=torch.Generator().manual_seed(1))
    out = drawn.samples
    assert torch.isfinite(out).all()
    dist, floor = reproduces_mixture(out)
    assert dist < 2 * floor, f"{name}: distance {dist:.4g} vs floor {floor:.4g}"
    assert drawn.nfe == sampler.num_steps


def test_samples_from_the_wrong_model_are_detected():
    """The criterion above can fail: an over-dispersed Gaussian is far beyond 2x the floor."""
    dist, floor = reproduces_mixture(2.5 * torch.randn(N, 2, generator=torch.Generator().manual_seed(0)))
    assert dist > 4 * floor


def test_ddim_eta0_is_deterministic():
    process = VP()
    score = MIXTURE.noised(process)
    x = process.prior_sample((64, 2), generator=torch.Generator().manual_seed(0))
    a = DDIM(num_steps=20)(score, x, process, generator=torch.Generator().manual_seed(1))
    b = DDIM(num_steps=20)(score, x, process, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = DDIM(num_steps=20, eta=1.0)(score, x, process, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ancestral_matches_ddpm_algorithm_2_step_for_step(variance):
    """Ho et al. 2020, Algorithm 2 written out from the β table: x_{n−1} = (x_n − β_n/√(1−ᾱ_n) ε)/√(1−β_n) + σ_n z."""
    T = 50
    process = DiscreteVP(num_timesteps=T, beta_start=1e-3, beta_end=0.2)
    betas = process.betas.tolist()
    alpha_bar = [math.prod(1 - b for b in betas[: n + 1]) for n in range(T)]
    eps_model = lambda x, n: torch.sin(x + n)  # noqa: E731  any deterministic ε-predictor

    class Eps:
        def predict(self, x, t):
            n = round(t[0].item() * T)
            eps = eps_model(x, n)
            return (x - math.sqrt(1 - alpha_bar[n - 1]) * eps) / math.sqrt(alpha_bar[n - 1]), eps

        def __call__(self, x, t):
            raise AssertionError("the sampler should use predict()")

    x_init = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = Ancestral(num_steps=T, variance=variance)(Eps(), x_init, process, generator=torch.Generator().manual_seed(5))

    gen = torch.Generator().manual_seed(5)
    x = x_init.clone()
    for n in range(T, 1, -1):  # n = T … 2; the last step (n = 1) adds no noise
        b, ab, ab_prev = betas[n - 1], alpha_bar[n - 1], alpha_bar[n - 2]
        mean = (x - b / math.sqrt(1 - ab) * eps_model(x, n)) / math.sqrt(1 - b)
        var = b * (1 - ab_prev) / (1 - ab) if variance == "beta_tilde" else b
        x = mean + math.sqrt(var) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x = (x - betas[0] / math.sqrt(1 - alpha_bar[0]) * eps_model(x, 1)) / math.sqrt(1 - betas[0])
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_ddim_matches_song_et_al_eq_12():
    """DDIM(η=0) on the discrete chain: x_{s} = √ᾱ_s x̂₀ + √(1−ᾱ_s) ε̂, checked against the formula directly."""
    process = DiscreteVP(num_timesteps=100)
    ab = process.alphas_cumprod
    eps_model = lambda x, t: torch.cos(3 * x) * t[:, None]  # noqa: E731

    class Eps:
        def predict(self, x, t):
            eps = eps_model(x, t)
            a = process.alpha(t)[:, None]
            return (x - (1 - a**2).sqrt() * eps) / a, eps

    x0 = torch.randn(4, 2, dtype=torch.float64)
    out = DDIM(num_steps=5, denoise=False)(Eps(), x0, process)
    grid = process.time_grid(5).double()
    x = x0.clone()
    for t, s in zip(grid[:-1], grid[1:]):
        n, m = round(t.item() * 100), round(s.item() * 100)
        eps = eps_model(x, torch.full((4,), t.item(), dtype=torch.float64))
        x0_hat = (x - (1 - ab[n - 1]).sqrt() * eps) / ab[n - 1].sqrt()
        x = ab[m - 1].sqrt() * x0_hat + (1 - ab[m - 1]).sqrt() * eps
    torch.testing.assert_close(out, x)


def test_nfe_counts_and_progress_and_callback():
    process = VP()
    score = MIXTURE.noised(process)
    seen = []
    x = process.prior_sample((10, 2))
    DDIM(num_steps=7)(score, x, process, callback=lambda info: seen.append(info["step"]), progress=True)
    assert seen == list(range(6))  # 6 transitions + 1 final denoise = 7 NFE


def test_sampler_without_process_fails_clearly():
    with pytest.raises(ValueError, match="needs a noise process"):
        DDIM(num_steps=5)(lambda x, t: x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="num_steps"):
        DDIM(num_steps=1)
