"""Langevin and annealed Langevin: stationary law on quadratic energies, NCSN step sizes, the final denoise step."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lit_score.data import GaussianMixtureDistribution
from lit_score.metrics import data_floor, energy_distance
from lit_score.processes import VE, DiscreteVE
from lit_score.samplers import AnnealedLangevin, Langevin, langevin_step
from lit_score.scores import EnergyScore

MU = torch.tensor([0.5, -1.0])
# A = Q diag(a) Qᵀ with eigenvalues a = (1, 4) along the diagonals of the plane.
Q = torch.tensor([[1.0, 1.0], [-1.0, 1.0]]) / 2**0.5
EIG = torch.tensor([1.0, 4.0])
A = Q @ torch.diag(EIG) @ Q.T


class Quadratic(nn.Module):
    """E(x) = ½ (x − μ)ᵀ A (x − μ); ignores t."""

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        d = x - MU
        return 0.5 * torch.einsum("bi,ij,bj->b", d, A, d)


def chain_moments(sampler: Langevin, n: int = 1000, burn_in: int = 300) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the chain after ``burn_in`` steps, pooled over chains and later steps."""
    states: list[Tensor] = []

    def keep(info: dict) -> None:
        if info["step"] >= burn_in and info["step"] % 10 == 0:
            states.append(info["x"].clone())

    gen = torch.Generator().manual_seed(0)
    sampler(EnergyScore(Quadratic()), torch.zeros(n, 2), None, generator=gen, callback=keep)
    x = torch.cat(states).double()
    return x.mean(0), torch.cov(x.T)


def stationary_cov(step_size: float, noise_scale: float) -> Tensor:
    """Per eigen-direction: x ← (1 − ηa) x + s z is AR(1) with stationary variance s² / (1 − (1 − ηa)²)."""
    var = noise_scale**2 / (1 - (1 - step_size * EIG) ** 2)
    return (Q @ torch.diag(var) @ Q.T).double()


def test_langevin_step_is_the_update_formula():
    x, s = torch.randn(3, 2), torch.randn(3, 2)
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    out = langevin_step(x, s, 0.1, 0.3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x + 0.1 * s + 0.3 * z)
    torch.testing.assert_close(langevin_step(x, s, torch.full((3,), 0.1), 0.0), x + 0.1 * s)


def test_textbook_langevin_samples_the_gaussian():
    """noise = √(2η): stationary N(μ, A⁻¹) up to the O(η) bias, which the exact AR(1) formula accounts for."""
    eta = 0.01
    sampler = Langevin(num_steps=900, step_size=eta, noise_scale=(2 * eta) ** 0.5, grad_clip=None, clamp=None)
    mean, cov = chain_moments(sampler)
    torch.testing.assert_close(mean, MU.double(), atol=0.03, rtol=0)
    torch.testing.assert_close(cov, torch.linalg.inv(A).double(), atol=0.05, rtol=0.05)
    torch.testing.assert_close(cov, stationary_cov(eta, (2 * eta) ** 0.5), atol=0.02, rtol=0.05)
    assert sampler.draw(EnergyScore(Quadratic()), torch.zeros(2, 2)).nfe == 900


def test_tempered_langevin_has_the_ar1_variance():
    """Decoupled noise: per eigen-direction variance s²/(1 − (1 − ηa)²), not the continuous-time s²/(2ηa)."""
    eta, s = 0.1, 0.1
    mean, cov = chain_moments(Langevin(num_steps=600, step_size=eta, noise_scale=s, grad_clip=None, clamp=None))
    eigen_var = torch.diagonal(Q.T.double() @ cov @ Q.double())
    expected = s**2 / (1 - (1 - eta * EIG.double()) ** 2)  # (0.0526, 0.0156)
    torch.testing.assert_close(mean, MU.double(), atol=0.01, rtol=0)
    torch.testing.assert_close(eigen_var, expected, atol=0, rtol=0.04)
    continuous_limit = s**2 / (2 * eta * EIG.double())  # (0.05, 0.0125): 25 % off along a = 4
    assert not torch.allclose(eigen_var, continuous_limit, rtol=0.1)


def test_grad_clip_and_clamp():
    x0 = torch.zeros(5, 2)
    out = Langevin(num_steps=1, step_size=1.0, noise_scale=0.0, grad_clip=0.03, clamp=None)(
        lambda x, t: torch.full_like(x, 100.0), x0
    )
    torch.testing.assert_close(out, torch.full_like(x0, 0.03))
    out = Langevin(num_steps=3, step_size=1.0, noise_scale=0.0, grad_clip=None, clamp=(-1.0, 1.0))(
        lambda x, t: torch.full_like(x, 100.0), x0
    )
    torch.testing.assert_close(out, torch.ones_like(x0))


def test_langevin_time_none_without_process_and_t_min_with_one():
    seen: list = []

    def score(x, t):
        seen.append(t)
        return -x

    Langevin(num_steps=2)(score, torch.zeros(4, 2))
    assert seen == [None, None]
    seen.clear()
    process = VE()
    Langevin(num_steps=3, denoise=True, clamp=None)(score, torch.zeros(4, 2), process)
    assert len(seen) == 3 and all(torch.equal(t, torch.full((4,), process.t_min)) for t in seen)


def test_langevin_denoise_without_process_is_a_noise_free_last_step():
    sampler = Langevin(num_steps=4, step_size=0.1, noise_scale=1.0, grad_clip=None, clamp=None, denoise=True)
    last: list[Tensor] = []
    out, nfe, _ = sampler.draw(
        lambda x, t: -x,
        torch.ones(3, 2),
        callback=lambda info: last.append(info["x"]),
        generator=torch.Generator().manual_seed(0),
    )
    assert len(last) == 3 and nfe == 4
    torch.testing.assert_close(out, last[-1] * 0.9)


def test_annealed_langevin_step_sizes_and_single_denoise_step():
    """α_i = ε σ_i²/σ_L² over all L levels, T steps each, then x + σ_L² s(x, σ_L) exactly once."""
    process = DiscreteVE(sigma_min=0.1, sigma_max=5.0, num_levels=5)
    sampler = AnnealedLangevin(steps_per_level=3, eps=1e-3)
    records: list[dict] = []
    calls: list[Tensor] = []

    def score(x, t):
        calls.append(t)
        return -x / (1 + process.sigma(t)[:, None] ** 2)

    gen = torch.Generator().manual_seed(0)
    out, nfe, _ = sampler.draw(score, torch.randn(6, 2), process, callback=records.append, generator=gen)
    sigmas = process.sigmas.float()
    assert len(records) == 5 * 3 and nfe == 5 * 3 + 1 == len(calls)
    for r in records:
        torch.testing.assert_close(r["step_size"], 1e-3 * sigmas[r["level"]] ** 2 / sigmas[-1] ** 2)
        torch.testing.assert_close(process.sigma(r["t"]), sigmas[r["level"]].expand(6))
    x_last, sigma_l = records[-1]["x"], sigmas[-1]
    torch.testing.assert_close(out, x_last + sigma_l**2 * score(x_last, torch.zeros(6)))
    assert torch.equal(calls[-1], calls[-2])  # the denoise step is at σ_L, right after the last level


def test_annealed_langevin_continuous_process_needs_levels():
    with pytest.raises(ValueError, match="num_levels"):
        AnnealedLangevin(steps_per_level=1)(lambda x, t: -x, torch.zeros(2, 2), VE())
    sampler = AnnealedLangevin(steps_per_level=2, num_levels=4)
    assert sampler.draw(lambda x, t: -x, torch.zeros(2, 2), VE()).nfe == 2 * 4 + 1


def test_annealed_langevin_with_the_exact_score_reproduces_a_mixture():
    """NCSN sampling with the oracle score of a noised 2-D mixture lands within 3x the data-vs-data floor."""
    mixture = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2)
    process = DiscreteVE(sigma_min=0.05, sigma_max=4.0, num_levels=10)
    oracle = mixture.noised(process)
    gen = torch.Generator().manual_seed(0)
    x = process.prior_sample((500, 2), generator=gen)
    samples = AnnealedLangevin(steps_per_level=30, eps=2e-3)(oracle.score, x, process, generator=gen)
    floor = data_floor(mixture.sample, 500, energy_distance, generator=gen)
    assert float(energy_distance(samples, mixture.sample(500, gen))) < 3 * floor
