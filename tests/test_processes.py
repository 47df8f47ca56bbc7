"""Contract suite every NoiseProcess passes (diffusers' SchedulerCommonTest habit), plus process-specific facts."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.processes import EDM, VE, VP, DiscreteVE, DiscreteVP, Interpolant, NoiseProcess, SubVP

PROCESSES = {
    "vp_linear": lambda: VP(),
    "vp_cosine": lambda: VP("cosine"),
    "subvp": lambda: SubVP(),
    "discrete_vp": lambda: DiscreteVP(num_timesteps=1000),
    "discrete_vp_cosine": lambda: DiscreteVP(num_timesteps=1000, schedule="cosine"),
    "ve": lambda: VE(),
    "discrete_ve": lambda: DiscreteVE(num_levels=50),
    "edm": lambda: EDM(),
    "interpolant": lambda: Interpolant(),
}
SHAPES = [(5, 2), (5, 7), (5, 3, 4, 4)]


@pytest.fixture(params=list(PROCESSES), ids=list(PROCESSES))
def process(request) -> NoiseProcess:
    return PROCESSES[request.param]()


def interior_times(process: NoiseProcess, n: int = 101) -> torch.Tensor:
    """Times strictly inside [t_min, t_max] (DiscreteVE's t_min = 0 is a real level, so keep the ends)."""
    return torch.linspace(process.t_min, process.t_max, n, dtype=torch.float64)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes(process, shape):
    x = torch.randn(shape)
    t = process.sample_time(shape[0])
    assert t.shape == (shape[0],) and process.alpha(t).shape == (shape[0],) and process.sigma(t).shape == (shape[0],)
    for out in (process.perturb(x, t, torch.randn_like(x)), process.drift(x, t), process.reverse_drift(x, t, x)):
        assert out.shape == x.shape
    assert process.diffusion(t).shape == (shape[0],)
    assert process.prior_sample(shape).shape == shape
    assert process.prior_log_prob(x).shape == (shape[0],)


def test_alpha_sigma_positive_and_monotone(process):
    t = interior_times(process)
    alpha, sigma = process.alpha(t), process.sigma(t)
    assert (alpha > 0).all() and (sigma > 0).all()
    assert (alpha.diff() <= 0).all(), "alpha must not increase"
    assert (sigma.diff() > 0).all(), "sigma must increase"
    assert (process.log_snr(t).diff() < 0).all(), "log-SNR must decrease"


def test_log_snr_inverse(process):
    t = interior_times(process)
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, atol=1e-7, rtol=1e-7)


def test_closed_form_coefficients_match_autograd(process):
    """f = d log α/dt and g² = dσ²/dt − 2fσ², differentiated by the base class, agree with each closed form."""
    if isinstance(process, DiscreteVP):  # piecewise linear log α: compare inside segments, away from the knots
        t = (torch.arange(1, 1000, 37, dtype=torch.float64) + 0.5) / 1000
    else:
        t = interior_times(process, 21)[1:-1]
    torch.testing.assert_close(process.f(t), NoiseProcess.f(process, t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(process.g2(t), NoiseProcess.g2(process, t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(process.alpha_dot(t), NoiseProcess.alpha_dot(process, t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(process.sigma_dot(t), NoiseProcess.sigma_dot(process, t), rtol=1e-6, atol=1e-8)


def test_perturb_has_the_marginal_mean_and_variance(process):
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    t = torch.full((n,), 0.5 * (process.t_min + process.t_max), dtype=torch.float64)
    xt = process.perturb(x0, t, torch.randn(n, 1, generator=gen, dtype=torch.float64))
    alpha, sigma = process.alpha(t[:1]).item(), process.sigma(t[:1]).item()
    assert abs(xt.mean().item() - 0.7 * alpha) < 5 * sigma / math.sqrt(n)
    assert abs(xt.var().item() / sigma**2 - 1) < 5 * math.sqrt(2 / n)


def test_euler_maruyama_reproduces_the_marginals(process):
    """Simulating dx = f x dt + g dw from the exact marginal at t_min reproduces α(t) and σ(t)² at t_end.

    Tolerance: 5 Monte Carlo standard errors plus 2 % for the O(Δt) Euler–Maruyama bias at 2000 steps.
    """
    gen = torch.Generator().manual_seed(1)
    n, steps, c = 20_000, 2000, 1.5
    t_end = process.t_min + 0.9 * (process.t_max - process.t_min)
    ts = torch.linspace(process.t_min, t_end, steps + 1, dtype=torch.float64)
    t0 = ts[:1].expand(n)
    x = process.alpha(t0) * c + process.sigma(t0) * torch.randn(n, generator=gen, dtype=torch.float64)
    for i in range(steps):
        t, dt = ts[i : i + 1].expand(n), (ts[i + 1] - ts[i]).item()
        x = x + process.f(t) * x * dt + process.diffusion(t) * math.sqrt(dt) * torch.randn(n, generator=gen).double()
    te = ts[-1:]
    alpha, sigma = process.alpha(te).item(), process.sigma(te).item()
    assert abs(x.mean().item() - alpha * c) < 5 * sigma / math.sqrt(n) + 0.02 * abs(alpha * c)
    assert abs(x.var().item() / sigma**2 - 1) < 5 * math.sqrt(2 / n) + 0.02


def test_prior_log_prob_integrates_to_one(process):
    std = process.prior_std
    z = torch.linspace(-12 * std, 12 * std, 20001, dtype=torch.float64).unsqueeze(1)
    density = process.prior_log_prob(z).exp()
    assert abs(torch.trapezoid(density, z[:, 0]).item() - 1) < 1e-6


def test_time_grid(process):
    for spacing in ("uniform", "quadratic", "karras", "logsnr"):
        grid = process.time_grid(10, spacing).double()
        assert (grid.diff() < 0).all()
        assert grid[0].item() == pytest.approx(process.t_max, rel=1e-6)
        assert grid[-1].item() == pytest.approx(process.t_min, rel=1e-5, abs=1e-7)
        assert len(grid) <= 11
        torch.testing.assert_close(process.discretize(grid.double()), grid.double(), rtol=1e-6, atol=1e-6)


def test_sample_time_in_range(process):
    t = process.sample_time(10_000, generator=torch.Generator().manual_seed(0))
    if isinstance(process, EDM):  # log-normal σ: unbounded by design (Karras et al. 2022)
        assert (t > 0).all()
        assert abs(t.log().mean().item() - process.p_mean) < 0.05
    else:
        assert (t >= process.t_min - 1e-7).all() and (t <= process.t_max + 1e-7).all()


@pytest.mark.parametrize("process", [VP(), VP("cosine"), DiscreteVP()], ids=["linear", "cosine", "discrete"])
def test_vp_preserves_variance(process):
    t = interior_times(process)
    torch.testing.assert_close(process.alpha(t) ** 2 + process.sigma(t) ** 2, torch.ones_like(t))


def test_subvp_sigma_is_one_minus_alpha_squared():
    p, t = SubVP(), torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    torch.testing.assert_close(p.sigma(t), 1 - p.alpha(t) ** 2)
    assert (p.sigma(t) ** 2 <= VP().sigma(t) ** 2).all()


def test_discrete_vp_reproduces_ddpm_alpha_bar_at_grid_points():
    """ᾱ_n = Π_{i≤n} (1 − β_i) with β linear from 1e-4 to 0.02 over 1000 steps (Ho et al. 2020, §4)."""
    p = DiscreteVP(num_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    alpha_bar, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        alpha_bar.append(prod)
    n = torch.arange(1, 1001, dtype=torch.float64)
    torch.testing.assert_close(p.alpha(n / 1000) ** 2, torch.tensor(alpha_bar, dtype=torch.float64), rtol=1e-12, atol=0)
    assert p.alpha(torch.tensor([1e-3], dtype=torch.float64)).item() ** 2 == pytest.approx(1 - 1e-4, rel=1e-12)
    # the DDPM step index handed to the network is n − 1
    torch.testing.assert_close(p.c_noise(n / 1000), n - 1)


def test_discrete_grids_snap_to_training_grid():
    p = DiscreteVP(num_timesteps=1000)
    grid = p.time_grid(49).double()
    k = grid * 1000
    torch.testing.assert_close(k, k.round(), atol=1e-3, rtol=0)
    assert len(p.time_grid(999)) == 1000  # every step of the chain: 1, 0.999, …, 0.001
    ladder = DiscreteVE(sigma_min=0.01, sigma_max=1.0, num_levels=10)
    sigmas = ladder.sigmas
    torch.testing.assert_close(sigmas, torch.logspace(0, -2, 10, dtype=torch.float64))
    torch.testing.assert_close(ladder.sigma(ladder.time_grid(9).double()), sigmas, rtol=1e-6, atol=0)


def test_ve_and_edm_facts():
    ve = VE(sigma_min=0.01, sigma_max=50)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ve.sigma(t), torch.tensor([0.01, 50.0], dtype=torch.float64))
    edm = EDM()
    grid = edm.time_grid(18).double()  # Karras et al. 2022, eq. 5 with ρ = 7
    i = torch.arange(19, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(grid, expected, rtol=1e-5, atol=0)
    fm = Interpolant()
    t = torch.tensor([0.25], dtype=torch.float64)
    assert fm.alpha(t).item() == 0.75 and fm.sigma(t).item() == 0.25


def test_buffers_move_with_the_module():
    p = DiscreteVP(num_timesteps=10)
    assert {name for name, _ in p.named_buffers()} >= {"betas", "log_alpha_table"}
    p = p.to(torch.float64)
    assert p.prior_sample((3, 2)).shape == (3, 2)


@pytest.mark.parametrize("make", [lambda: VE(0.01, 50.0), lambda: DiscreteVE(0.01, 50.0, 10), lambda: EDM(0.002, 80.0)])
def test_with_sigma_max_keeps_the_class_and_the_other_settings(make):
    """NCSN's sigma_max_from_data rebuilds the process with σ_max replaced: the same class, σ_min and (EDM) training
    σ distribution kept; a process without σ_max refuses in one line."""
    process = make()
    other = process.with_sigma_max(7.0)
    assert type(other) is type(process) and other.sigma(torch.tensor([other.t_max])).item() == pytest.approx(7.0)
    if isinstance(process, EDM):  # t = σ
        assert other.t_min == process.t_min and (other.p_mean, other.p_std) == (process.p_mean, process.p_std)
    else:
        assert other.sigma_min == process.sigma_min and (other.t_min, other.t_max) == (process.t_min, process.t_max)
    with pytest.raises(ValueError, match="sigma_max_from_data needs a VE"):
        VP().with_sigma_max(7.0)
