"""PF-ODE likelihood against the Gaussian-mixture oracle, and DDPM's VLB against its analytic expectation."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.losses.vlb import discretized_gaussian_log_likelihood, normal_kl
from lit_score.metrics.likelihood import ddpm_vlb, dequantize_8bit, log_likelihood
from lit_score.processes import VE, VP, DiscreteVP, SubVP

PROCESSES = {"vp": VP, "ve": VE, "subvp": SubVP}

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def mixture() -> GaussianMixtureDistribution:
    return GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.4)


def _data(mixture, n: int = 32, seed: int = 0) -> torch.Tensor:
    return mixture.sample(n, torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("name", list(PROCESSES))
def test_exact_divergence_matches_oracle_density(mixture, name):
    """log p_{t_min}(x) by the PF-ODE with the exact score and exact divergence = the mixture's exact log-density."""
    process = PROCESSES[name]()
    oracle = mixture.noised(process)
    x = _data(mixture)
    result = log_likelihood(oracle, process, x, divergence="exact")
    exact = oracle.log_prob(x, process.t_min)
    assert (result.log_prob - exact).abs().max() < 1e-2 * 2  # 1e-2 nats per dimension, D = 2
    assert torch.allclose(result.nats, -result.log_prob)
    assert torch.allclose(result.bits_per_dim, result.nats / (2 * math.log(2)))
    assert result.nfe > 0 and result.protocol["divergence"] == "exact"


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_hutchinson_is_unbiased(mixture, name):
    """The Hutchinson estimate differs from the exact value by noise whose mean is within 4 standard errors of 0."""
    process = PROCESSES[name]()
    oracle = mixture.noised(process)
    x = _data(mixture, n=64, seed=1)
    exact = log_likelihood(oracle, process, x, divergence="exact", fixed_steps=25).log_prob
    generator = torch.Generator().manual_seed(2)
    for probe in ("gaussian", "rademacher"):
        est = log_likelihood(oracle, process, x, probe=probe, num_probes=4, fixed_steps=25, generator=generator)
        diff = est.log_prob - exact
        assert diff.abs().max() > 0  # it is an estimate, not the exact value
        assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff)) + 1e-6


def test_fixed_grid_matches_adaptive_and_counts_nfe(mixture):
    process = VP()
    oracle = mixture.noised(process)
    x = _data(mixture, n=8)
    adaptive = log_likelihood(oracle, process, x, divergence="exact")
    fixed = log_likelihood(oracle, process, x, divergence="exact", fixed_steps=20, fixed_method="rk4")
    assert fixed.nfe == 4 * 20 and fixed.protocol["solver"] == "rk4" and fixed.rtol is None
    assert (fixed.log_prob - adaptive.log_prob).abs().max() < 1e-3


def test_any_shape_and_inference_mode(mixture):
    """Data of shape (B, 1, 2) gives the same answer as (B, 2); it runs under inference_mode (trainer.validate)."""
    process = SubVP()
    oracle = mixture.noised(process)
    x = _data(mixture, n=4)

    def score_3d(x3, t):
        return oracle.score(x3.reshape(x3.shape[0], 2), t).reshape(x3.shape)

    flat = log_likelihood(oracle, process, x, divergence="exact", fixed_steps=10)
    with torch.inference_mode():
        shaped = log_likelihood(score_3d, process, x.reshape(4, 1, 2), divergence="exact", fixed_steps=10)
    assert torch.allclose(flat.log_prob, shaped.log_prob)


def test_dequantized_bits_per_dim_convention():
    """8-bit data: x̃ = 2(u + w)/256 − 1 stays in u's bin; bpd = −log p(x̃)/(D ln 2) + 7 (Jacobian 1/128 per dim)."""
    u = torch.randint(0, 256, (64, 3, 2, 2), generator=torch.Generator().manual_seed(0)).double()
    x = 2 * u / 255 - 1
    x_tilde = dequantize_8bit(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.floor((x_tilde + 1) * 128), u)
    # a standard-normal "model" (the VE prior with σ = 1 everywhere: zero velocity) gives log p(x̃) in closed form
    process = VE(sigma_min=0.999, sigma_max=1.0)
    result = log_likelihood(lambda y, t: torch.zeros_like(y), process, x, divergence="exact", fixed_steps=1,
                            dequantize="uniform8bit", generator=torch.Generator().manual_seed(1))
    log_p = -0.5 * (x_tilde**2).flatten(1).sum(1) - 6 * math.log(2 * math.pi)
    assert torch.allclose(result.log_prob, log_p)
    assert torch.allclose(result.bits_per_dim, -log_p / (12 * math.log(2)) + 7)


def test_discretized_gaussian_is_a_distribution_over_bins():
    """The 256 bin probabilities sum to one (end bins extend to ±∞)."""
    x = (2 * torch.arange(256, dtype=torch.float64) / 255 - 1).reshape(256, 1)
    for mean, std in ((0.1, 0.05), (-0.97, 0.2), (0.5, 1e-3)):
        log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, std))
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def _vlb_expectation(process: DiscreteVP, s: float, dim: int, variance: str) -> torch.Tensor:
    """E[L_N], E[L_{n−1}] (n = 2..N) and E[L_0] in nats for x₀ ~ N(0, s² I_D) and the exact denoiser, from β alone.

    With ᾱ_n = Π(1 − β), the posterior mean of x₀ given x_n has error variance v_n = s²(1 − ᾱ_n)/(ᾱ_n s² + 1 − ᾱ_n);
    the model mean differs from q's posterior mean by c_n (x₀ − x̂₀), c_n = √ᾱ_{n−1} β_n/(1 − ᾱ_n) (Ho et al. eq. 7),
    so each KL has expectation ½[log(v_p/β̃) + β̃/v_p − 1 + c_n² v_n / v_p]. The decoder (variance β̃₂, bins 2/255
    much narrower than √β̃₂) is ½ log(2π β̃₂) + v₁/(2β̃₂) − log(2/255) per dim; the prior KL is ᾱ_N s²/(2(1 − ᾱ_N)).
    """
    betas = process.betas
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    v = s**2 * (1 - abar) / (abar * s**2 + 1 - abar)
    c = abar_prev.sqrt() * betas / (1 - abar)
    var_p = beta_tilde if variance == "beta_tilde" else betas
    kl = 0.5 * (torch.log(var_p / beta_tilde) + beta_tilde / var_p - 1 + c**2 * v / var_p)
    decoder = 0.5 * math.log(2 * math.pi * beta_tilde[1]) + v[0] / (2 * beta_tilde[1]) - math.log(2 / 255)
    prior = abar[-1] * s**2 / (2 * (1 - abar[-1]))
    return dim * torch.cat([prior.reshape(1), decoder.reshape(1), kl[1:]])


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_vlb_matches_analytic_expectation(variance):
    """On a 50-step chain with the exact denoiser of N(0, s²): every term's mean matches its expectation."""
    process = DiscreteVP(num_timesteps=50, beta_start=0.002, beta_end=0.4)  # improved-diffusion's 1000/N scaling
    s, dim, n = 0.25, 2, 4000
    oracle = GaussianMixtureDistribution(torch.zeros(1, dim), torch.full((1,), s), torch.ones(1)).noised(process)
    x0 = s * torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = ddpm_vlb(oracle, process, x0, variance=variance, clip_denoised=False,
                      generator=torch.Generator().manual_seed(1))
    scale = dim * math.log(2)
    expected = _vlb_expectation(process, s, dim, variance) / scale
    measured = torch.cat([result.prior_bpd.reshape(n, 1), result.terms], dim=1)
    se = measured.std(dim=0) / math.sqrt(n)
    assert torch.isfinite(result.bits_per_dim).all()
    assert ((measured.mean(0) - expected).abs() <= 4 * se + 1e-3 * expected.abs()).all()
    total_se = result.bits_per_dim.std() / math.sqrt(n)
    assert abs(result.bits_per_dim.mean() - expected.sum()) < 4 * total_se + 1e-3
    assert torch.allclose(result.bits_per_dim, result.prior_bpd + result.terms.sum(1))


def test_normal_kl_closed_form():
    m1, v1, m2, v2 = (torch.tensor(a, dtype=torch.float64) for a in (0.3, 0.5, -0.2, 2.0))
    samples = m1 + v1.sqrt() * torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_ratio = torch.distributions.Normal(m1, v1.sqrt()).log_prob(samples) - torch.distributions.Normal(
        m2, v2.sqrt()
    ).log_prob(samples)
    assert normal_kl(m1, v1, m2, v2).item() == pytest.approx(log_ratio.mean().item(), abs=5e-3)
