"""SA-Solver (lit_score/samplers/sa_solver.py) against diffusers' ``SASolverScheduler`` and the exact mixture oracle.

Step equality: on ``DiscreteVP()`` (diffusers' default linear β table) with ``spacing="uniform"`` the grid is diffusers'
``linspace`` timesteps (timestep k is t = (k + 1)/N); diffusers' float32 σ table is replaced by our float64 σ/α at
those times, the ε model is −σ·score of the exact mixture, and both draw their noise from one seeded generator. The max
difference over predictor / corrector orders 1–3 and τ ∈ {0, 1, diffusers' default 200–800 window} measured
6.0e-15 over all nine (p, c) pairs (float64, |x| ≲ 3; the test runs six of them).
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from diffusers import SASolverScheduler
from mixture_oracle import MIXTURE, SETS, N, distance, mixture_floor

from lit_score.processes import EDM, VE, VP, DiscreteVP, Interpolant, SubVP
from lit_score.samplers import DDIM, SASolver
from lit_score.samplers.base import full_like_t

pytestmark = pytest.mark.usefixtures("one_thread")


def diffusers_run(process, score, x, n, p, c, tau_func, seed):
    """diffusers' SASolverScheduler loop on the ε model −σ·score, with float64 σ/α taken from ``process``."""
    scheduler = SASolverScheduler(predictor_order=p, corrector_order=c, tau_func=tau_func)
    scheduler.set_timesteps(n)
    steps = scheduler.timesteps.tolist()
    times = torch.tensor([(k + 1) / process.num_timesteps for k in steps] + [1 / process.num_timesteps],
                         dtype=torch.float64)
    scheduler.sigmas = (-process.log_snr(times)).exp()
    generator = torch.Generator().manual_seed(seed)
    for k, t in zip(steps, times):
        t = full_like_t(x, t)
        eps = -process.sigma(t)[:, None] * score(x, t)
        x = scheduler.step(eps, k, x, generator=generator).prev_sample
    return x, times


TAUS = {"ode": (0.0, {}, lambda k: 0), "sde": (1.0, {}, lambda k: 1), "window": (1.0, "window", None)}


@pytest.mark.parametrize("tau_name", list(TAUS))
@pytest.mark.parametrize(("p", "c"), [(1, 1), (2, 2), (3, 3), (1, 3), (3, 1), (2, 1)])
def test_matches_diffusers_step_for_step(p, c, tau_name):
    process, n = DiscreteVP(), 10
    score = MIXTURE.noised(process)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tau, window, tau_func = TAUS[tau_name]
    if window:  # diffusers' default τ(k) = 1 for 200 ≤ k ≤ 800: the σ̃ of timesteps 200 and 800
        ends = torch.tensor([201e-3, 801e-3], dtype=torch.float64)
        window = dict(zip(("S_min", "S_max"), (-process.log_snr(ends)).exp().tolist()))
    expected, times = diffusers_run(process, score, x, n, p, c, tau_func, seed=7)
    sampler = SASolver(n, p, c, tau=tau, spacing="uniform", **(window or {}))
    torch.testing.assert_close(sampler.grid(process, x.device), times, rtol=0, atol=0)
    out = sampler(score, x, process, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_first_order_predictor_without_noise_is_ddim():
    """With τ = 0 the order-1 predictor is (σ_t/σ_s) x + α_t(1 − e^{−h}) x̂₀, DDIM's η = 0 step (the first step)."""
    process = VP()
    score, x = MIXTURE.noised(process), torch.randn(8, 2, dtype=torch.float64)
    seen = []
    sampler = SASolver(5, 1, 1, tau=0.0, spacing="uniform")
    sampler(score, x, process, callback=lambda info: seen.append(info["x"]))
    grid = sampler.grid(process, x.device)
    with process.window(float(grid[0]), float(grid[1])):
        ddim = DDIM(1, spacing="uniform", eta=0.0, denoise=False)(score, x, process)
    torch.testing.assert_close(seen[0], ddim, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def floor() -> float:
    return mixture_floor()


@pytest.mark.parametrize("process_class", [VP, EDM])
@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_reproduces_mixture_and_counts_nfe(process_class, tau, floor):
    process = process_class()
    x = process.prior_sample((N * SETS, 2), torch.Generator().manual_seed(0))
    sampler = SASolver(20, 3, 3, tau=tau, denoise=True)
    samples, nfe, _ = sampler.draw(MIXTURE.noised(process), x, process, generator=torch.Generator().manual_seed(1))
    assert nfe == 20
    assert distance(samples) <= 2 * floor, f"{sampler!r}: {distance(samples) / floor:.2f}× the floor"


def test_tau_zero_ignores_the_generator_and_tau_one_does_not():
    process = VP()
    score, x = MIXTURE.noised(process), torch.randn(8, 2)
    a, b = (SASolver(6, tau=0.0)(score, x, process, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    assert torch.equal(a, b)
    c, d = (SASolver(6, tau=1.0)(score, x, process, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    assert not torch.allclose(c, d)


@pytest.mark.parametrize("kwargs", [{"predictor_order": 0}, {"predictor_order": 4}, {"corrector_order": 0},
                                    {"corrector_order": 2.5}, {"tau": -1.0}, {"tau": math.nan},
                                    {"S_min": 2.0, "S_max": 1.0}, {"num_steps": 0}])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SASolver(**kwargs)


def test_yaml_constructible():
    from jsonargparse import ArgumentParser

    config = yaml.safe_load("sampler: {class_path: lit_score.samplers.SASolver, "
                            "init_args: {num_steps: 12, predictor_order: 3, corrector_order: 1, tau: 0.5, S_max: 10}}")
    parser = ArgumentParser()
    parser.add_argument("--sampler", type=SASolver)
    sampler = parser.instantiate_classes(parser.parse_object(config)).sampler
    assert isinstance(sampler, SASolver)
    assert sampler.settings() == {**SASolver().settings(), "num_steps": 12, "predictor_order": 3,
                                  "corrector_order": 1, "tau": 0.5, "S_max": 10.0}


@pytest.mark.parametrize("process_class", [VE, SubVP, Interpolant])
def test_any_process_any_shape(process_class):
    """Samples of shape (B, 2, 1, 1) are the flat samples reshaped (the per-sample maths never assumes a shape)."""
    process = process_class()
    score = MIXTURE.noised(process)
    image_score = lambda x, t: score(x.flatten(1), t).view_as(x)  # noqa: E731
    x = process.prior_sample((64, 2), torch.Generator().manual_seed(0))
    sampler = SASolver(8, 3, 3, tau=1.0, denoise=True)
    flat = sampler(score, x, process, generator=torch.Generator().manual_seed(1))
    image = sampler(image_score, x.view(64, 2, 1, 1), process, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(flat).all()
    torch.testing.assert_close(image.flatten(1), flat, rtol=1e-6, atol=1e-6)


def test_x0_goes_through_sampler_denoised():
    """x̂₀ is formed by ``Sampler.denoised`` (where thresholding applies): with every x̂₀ thresholded to 0 and τ = 0,
    each update is x_t = (σ_t/σ_s) x_s, so the run ends at (σ(t_min)/σ(t_max)) x."""
    process = VP()
    sampler = SASolver(6, 3, 3, tau=0.0)
    sampler.thresholding = torch.zeros_like
    x = torch.randn(8, 2, dtype=torch.float64)
    ends = process.sigma(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
    torch.testing.assert_close(sampler(MIXTURE.noised(process), x, process), ends[0] / ends[1] * x)
