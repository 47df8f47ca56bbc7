"""Restart sampling (lit_score/samplers/restart.py) against its reference update, EDM's Heun and the mixture oracle."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from mixture_oracle import MIXTURE, SETS, N, distance, mixture_floor

from lit_score.processes import EDM, VE, VP, Interpolant, SubVP
from lit_score.samplers import EDMHeun, Restart

INTERVALS = [{"N": 3, "K": 2, "t_min": 0.06, "t_max": 0.30}, {"N": 4, "K": 1, "t_min": 1.0, "t_max": 2.0}]

pytestmark = pytest.mark.usefixtures("one_thread")


def trajectory(sampler, score, x, process, seed=0):
    states = []
    out = sampler(score, x, process, generator=torch.Generator().manual_seed(seed),
                  callback=lambda info: states.append(info["x"]))
    return out, states


@pytest.mark.parametrize("process_class", [VP, EDM])
@pytest.mark.parametrize("restart", [[], [{**INTERVALS[0], "K": 0}]])
def test_without_restarts_it_is_edm_heun_step_for_step(process_class, restart):
    process = process_class()
    score, x = MIXTURE.noised(process), process.prior_sample((16, 2), torch.Generator().manual_seed(0))
    out, states = trajectory(Restart(12, restart), score, x, process)
    heun_out, heun_states = trajectory(EDMHeun(12), score, x, process)
    assert len(states) == len(heun_states) == 11
    assert all(torch.equal(a, b) for a, b in zip(states, heun_states)) and torch.equal(out, heun_out)


def reference_restart(denoiser, x, num_steps, intervals, S_noise, generator, gamma=0.0, churn_range=(0.0, math.inf),
                      rho=7.0, sigma_min=0.002, sigma_max=80.0):
    """Xu et al. 2023, Algorithm 1 as their code runs it on EDM (α = 1, σ = t), written out from the paper: Heun on the
    Karras grid (Euler for the last step to σ = 0); after landing on the level nearest t_min, K times: x + √(t_max² −
    σ_j²)·S_noise·ε, then Heun along N Karras levels t_max → σ_j, each step from σ̂ = (1 + γ)σ after x + √(σ̂² − σ²)·
    S_noise·ε when the code's ``restart_gamma`` γ > 0 (γ = 0 outside [S_min, S_max])."""

    def karras(hi, lo, n):
        return [(hi ** (1 / rho) + k / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for k in range(n)]

    def heun(x, s, s_next):
        d = (x - denoiser(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next == 0:
            return x_next
        return x + (s_next - s) * 0.5 * (d + (x_next - denoiser(x_next, s_next)) / s_next)

    sigmas = karras(sigma_max, sigma_min, num_steps) + [0.0]
    at = {min(range(len(sigmas)), key=lambda j: abs(sigmas[j] - r["t_min"])): r for r in intervals}
    x = x * sigmas[0]
    for i in range(num_steps):
        x = heun(x, sigmas[i], sigmas[i + 1])
        if i + 1 in at:
            r = at[i + 1]
            levels = karras(r["t_max"], sigmas[i + 1], r["N"])
            for _ in range(r["K"]):
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                x = x + noise * math.sqrt(levels[0] ** 2 - levels[-1] ** 2) * S_noise
                for s, s_next in zip(levels[:-1], levels[1:]):
                    if gamma > 0:
                        s_hat = s * (1 + (gamma if churn_range[0] <= s <= churn_range[1] else 0.0))
                        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                        x, s = x + math.sqrt(s_hat**2 - s**2) * S_noise * noise, s_hat
                    x = heun(x, s, s_next)
    return x


@pytest.mark.parametrize("churn", [{}, {"restart_gamma": 0.05, "S_min": 0.01, "S_max": 1.0}])
def test_matches_the_reference_update_on_edm(churn):
    """Same latents, same restart noise, float64: they agree to rounding (measured max difference 8.0e-15; 1.5e-14
    with the reference code's restart churn as its README commands set it, γ = 0.05 on [0.01, 1]; |x| ≲ 3)."""
    process = EDM()
    score = MIXTURE.noised(process)

    def denoiser(x, sigma):  # D(x; σ) = x + σ² ∇log p_σ(x) (Tweedie)
        return x + sigma**2 * score(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))

    latents = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = reference_restart(denoiser, latents, 12, INTERVALS, 1.003, torch.Generator().manual_seed(5),
                                 churn.get("restart_gamma", 0.0), (churn.get("S_min", 0.0), churn.get("S_max", 1.0)))
    sampler = Restart(12, INTERVALS, S_noise=1.003, **churn)
    out = sampler(score, latents * 80.0, process, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_on_vp_it_is_the_edm_algorithm_in_scaled_variables():
    """x̃ = x/α, σ̃ = σ/α: the forward jump q(x_{t'} | x_t) is x̃ + √(σ̃'² − σ̃²)·ε, so Restart on VP is Restart on an EDM
    process with VP's σ̃ range (the mixture's x̂₀ is the same function of (x̃, σ̃) under both; measured 1.6e-15)."""
    vp = VP()
    ends = (-vp.log_snr(torch.tensor([vp.t_min, vp.t_max], dtype=torch.float64))).exp().tolist()
    edm = EDM(sigma_min=ends[0], sigma_max=ends[1])
    x_tilde = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * ends[1]
    alpha_max = float(vp.alpha(torch.tensor([vp.t_max], dtype=torch.float64)))
    sampler = Restart(10, INTERVALS)
    out_vp = sampler(MIXTURE.noised(vp), alpha_max * x_tilde, vp, generator=torch.Generator().manual_seed(2))
    out_edm = sampler(MIXTURE.noised(edm), x_tilde, edm, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out_vp, out_edm, rtol=1e-8, atol=1e-8)


def test_nfe_is_the_main_runs_plus_2_n_minus_1_per_restart():
    """The reference README's ImageNet-64 setting: 36 main levels (2·36 − 1 = 71 NFE) and five intervals,
    Σ K·2(N − 1) = 6 + 6 + 30 + 30 + 60 = 132: 203 NFE, the NFE the README states for it."""
    imagenet = [[4, 1, 19.35, 40.79], [4, 1, 1.09, 1.92], [4, 5, 0.59, 1.09], [4, 5, 0.30, 0.59], [6, 6, 0.06, 0.30]]
    restart = [dict(zip(("N", "K", "t_min", "t_max"), r)) for r in imagenet]
    process = EDM()
    x = process.prior_sample((2, 2), torch.Generator().manual_seed(0))
    assert Restart(36, restart).draw(MIXTURE.noised(process), x, process).nfe == 203
    assert Restart(10, INTERVALS, denoise=False).draw(MIXTURE.noised(process), x, process).nfe == 2 * 10 + 8 + 6


@pytest.fixture(scope="module")
def floor() -> float:
    return mixture_floor()


@pytest.mark.parametrize("process_class", [VP, EDM])
def test_reproduces_mixture(process_class, floor):
    process = process_class()
    x = process.prior_sample((N * SETS, 2), torch.Generator().manual_seed(0))
    sampler = Restart(12, INTERVALS)
    samples = sampler(MIXTURE.noised(process), x, process, generator=torch.Generator().manual_seed(1))
    assert distance(samples) <= 2 * floor, f"{sampler!r}: {distance(samples) / floor:.2f}× the floor"


@pytest.mark.parametrize("restart", [{"N": 3}, [{"N": 3, "K": 1, "t_min": 0.1}], [{**INTERVALS[0], "N": 1}],
                                     [{**INTERVALS[0], "K": -1}], [{**INTERVALS[0], "K": 1.5}],
                                     [{**INTERVALS[0], "t_min": 0.0}], [{**INTERVALS[0], "t_max": 0.06}]])
def test_invalid_intervals_raise(restart):
    with pytest.raises(ValueError, match="restart"):
        Restart(10, restart)


@pytest.mark.parametrize(("restart", "match"), [
    ([{**INTERVALS[0], "t_max": 100.0}], "above the process's largest"),
    ([{"N": 3, "K": 1, "t_min": 70.0, "t_max": 79.0}], "nearest the first"),
    ([INTERVALS[0], {**INTERVALS[0], "t_min": 0.061}], "same grid level"),
])
def test_intervals_that_do_not_fit_the_grid_raise(restart, match):
    process = EDM()
    with pytest.raises(ValueError, match=match):
        Restart(10, restart)(MIXTURE.noised(process), process.prior_sample((2, 2)), process)


def test_yaml_constructible():
    from jsonargparse import ArgumentParser

    config = yaml.safe_load("sampler: {class_path: lit_score.samplers.Restart, init_args: {num_steps: 12, "
                            "restart: [{N: 3, K: 2, t_min: 0.06, t_max: 0.3}], S_noise: 1.003}}")
    parser = ArgumentParser()
    parser.add_argument("--sampler", type=Restart)
    sampler = parser.instantiate_classes(parser.parse_object(config)).sampler
    assert isinstance(sampler, Restart) and sampler.restart == [{"N": 3, "K": 2, "t_min": 0.06, "t_max": 0.3}]
    assert type(sampler)(**sampler.settings()).settings() == sampler.settings()


@pytest.mark.parametrize("process_class", [VE, SubVP, Interpolant])
def test_any_process_any_shape(process_class):
    """Samples of shape (B, 2, 1, 1) are the flat samples reshaped (the per-sample maths never assumes a shape)."""
    process = process_class()
    score = MIXTURE.noised(process)
    image_score = lambda x, t: score(x.flatten(1), t).view_as(x)  # noqa: E731
    x = process.prior_sample((64, 2), torch.Generator().manual_seed(0))
    sampler = Restart(8, INTERVALS)
    flat = sampler(score, x, process, generator=torch.Generator().manual_seed(1))
    image = sampler(image_score, x.view(64, 2, 1, 1), process, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(flat).all()
    torch.testing.assert_close(image.flatten(1), flat, rtol=1e-6, atol=1e-6)
