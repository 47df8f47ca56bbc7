"""DPM-Solver++ SDE (lit_score/samplers/dpm_solver_sde.py) and its noise sources (lit_score/samplers/noise.py).

Step equality with k-diffusion 0.1.1 on the EDM process with the exact mixture denoiser, float64, the same noise draws
(the reference's ``noise_sampler`` draws from a generator seeded as ours, in the same order): measured max |Δx| over
every step 4e-14 (2M midpoint / heun, 3M, singlestep; η = 1 and ½), and 1e-14 with k-diffusion's own
``BrownianTreeNoiseSampler`` built on our tree's entropy.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from jsonargparse import ArgumentParser
from test_samplers_oracle import (  # noqa: F401 (floor: the fixture)
    MIXTURE,
    SETS,
    N,
    distance,
    float64,
    floor,
    host_reads,
)

from lit_score.processes import EDM, VP, DiscreteVP, Interpolant
from lit_score.samplers import DPMSolver, DPMSolverSDE, Sampler
from lit_score.samplers.dpm_solver import multistep_update
from lit_score.samplers.noise import BrownianTreeNoise, GaussianNoise, entropy_from

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def k_sampling():
    return importlib.import_module("k_diffusion.sampling")  # a test-only reference (dev extra): never skipped


def trajectory(sampler, score, x, process, seed=1):
    states = []
    out = sampler(score, x, process, generator=torch.Generator().manual_seed(seed),
                  callback=lambda info: states.append(info["x"]))
    return out, states


REFERENCES = {  # our settings, k-diffusion's sampler and its keywords
    "2m_midpoint": ({}, "sample_dpmpp_2m_sde", {}),
    "2m_heun": ({"solver_type": "heun"}, "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "3m": ({"order": 3, "solver_type": "heun"}, "sample_dpmpp_3m_sde", {}),  # its order-2 warm-up is the heun form
    "singlestep": ({"multistep": False}, "sample_dpmpp_sde", {}),
}


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_k_diffusion_step_for_step(name, eta, k_sampling):
    """The same updates as k-diffusion with the same noise: every intermediate state and the output, float64."""
    ours_kw, reference, ref_kw = REFERENCES[name]
    with float64():
        process = EDM()
        score = MIXTURE.noised(process)
        x = process.prior_sample((16, 2), torch.Generator().manual_seed(0))
        num_steps = 9  # with denoise: 8 intervals (multistep) or 4 two-stage intervals (singlestep), then x̂₀
        sampler = DPMSolverSDE(num_steps, eta=eta, spacing="karras", **ours_kw)
        out, states = trajectory(sampler, score, x, process)
        grid = process.time_grid(8 if sampler.multistep else 4, "karras")
        sigmas = torch.cat([grid, grid.new_zeros(1)])  # k-diffusion's last step to σ = 0 is the x̂₀ step
        generator, seen = torch.Generator().manual_seed(1), []
        ref = getattr(k_sampling, reference)(
            lambda y, sigma: score.denoise(y, sigma), x, sigmas, eta=eta, disable=True, **ref_kw,
            noise_sampler=lambda a, b: torch.randn(x.shape, generator=generator),
            callback=lambda info: seen.append(info["x"]))
    assert len(states) == len(seen) - 1
    for ours_x, ref_x in zip(states, seen[1:]):
        torch.testing.assert_close(ours_x, ref_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_brownian_tree_is_k_diffusions_for_the_same_entropy(k_sampling):
    """noise="brownian_tree" draws the path of k-diffusion's BrownianTreeNoiseSampler seeded with our entropy."""
    with float64():
        process = EDM()
        score = MIXTURE.noised(process)
        x = process.prior_sample((16, 2), torch.Generator().manual_seed(0))
        out = DPMSolverSDE(9, order=3, solver_type="heun", noise="brownian_tree", spacing="karras")(
            score, x, process, generator=torch.Generator().manual_seed(1))
        sigmas = torch.cat([process.time_grid(8, "karras"), torch.zeros(1)])
        tree = k_sampling.BrownianTreeNoiseSampler(x, sigmas[-2], sigmas[0],
                                                   seed=entropy_from(torch.Generator().manual_seed(1)))
        ref = k_sampling.sample_dpmpp_3m_sde(lambda y, sigma: score.denoise(y, sigma), x, sigmas, disable=True,
                                             noise_sampler=tree)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_matches_diffusers_sde_dpmsolver_pp(solver_type):
    """diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2) on DDPM's chain, its
    timesteps n − 1 at our times t = n/N, the same noise: every state agrees to its float32 arithmetic (measured
    max |Δx| 4e-6 at |x| ≈ 2; diffusers upcasts x to float32 and keeps its schedule in float32)."""
    diffusers = importlib.import_module("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type=solver_type)
    scheduler.set_timesteps(10)
    with float64():
        process = DiscreteVP(num_timesteps=1000)  # diffusers' default linear β from 1e-4 to 0.02
        score = MIXTURE.noised(process)
        x = process.prior_sample((16, 2), torch.Generator().manual_seed(0))
        times = (scheduler.timesteps.double() + 1) / 1000
        sampler = DPMSolverSDE(10, solver_type=solver_type)
        sampler.grid = lambda process, device: times.to(device)  # diffusers' grid (its last step, to σ = 0: x̂₀)
        out, states = trajectory(sampler, score, x, process)
        generator, y, seen = torch.Generator().manual_seed(1), x, []
        for i, timestep in enumerate(scheduler.timesteps):
            noise = torch.randn(x.shape, generator=generator) if i < 9 else torch.zeros_like(x)
            y = scheduler.step(score.eps(y, times[i]), timestep, y, variance_noise=noise).prev_sample
            seen.append(y)
    assert len(states) == len(seen) - 1 == 9
    for ours_x, ref_x in zip([*states, out], seen):
        torch.testing.assert_close(ours_x, ref_x, rtol=0, atol=1e-5)


def test_diffusers_3m_sde_update_differs_by_its_d2_sign():
    """Why the 3M SDE is compared with k-diffusion only: diffusers 0.42's third-order "sde-dpmsolver++" update has
    α_s((1 − e^{−2h} − 2h)/(2h)² − ½)·D₂ where the exact integral (and k-diffusion, and its own ODE form with ĥ = −2h)
    has α_s((1 − e^{−2h} − 2h)/(2h)² + ½)·D₂: the two differ by exactly α_s·D₂ (measured to 4e-7, its float32), a
    term that does not vanish with h relative to D₂ = O(h²), so diffusers' 3M SDE is first order."""
    diffusers = importlib.import_module("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3)
    scheduler.set_timesteps(20)
    scheduler._step_index = 5  # the step from timesteps[5] to timesteps[6], with the model values at 3, 4, 5
    with float64():
        process, generator = DiscreteVP(num_timesteps=1000), torch.Generator().manual_seed(0)
        x, *ms = (torch.randn(8, 2, generator=generator) for _ in range(4))
        ts = [torch.full((8,), (float(scheduler.timesteps[k]) + 1) / 1000) for k in (3, 4, 5, 6)]
        ref = scheduler.multistep_dpm_solver_third_order_update(ms, sample=x, noise=torch.zeros_like(x))
        lam = [process.log_snr(t) for t in ts]
        h = lam[3] - lam[2]
        ours = multistep_update(process, x, ts[:3], ms, ts[3], True, eta_h=h)
        r0, r1 = (lam[2] - lam[1]) / h, (lam[1] - lam[0]) / h
        d2 = ((ms[2] - ms[1]) / r0[:, None] - (ms[1] - ms[0]) / r1[:, None]) / (r0 + r1)[:, None]
        torch.testing.assert_close(ours - ref, process.alpha(ts[3])[:, None] * d2, rtol=0, atol=1e-5)
        assert float(d2.abs().max()) > 0.1


@pytest.mark.parametrize("process", [VP(), Interpolant()], ids=["vp", "flow"])
def test_eta_zero_is_dpm_solver_2m_step_for_step(process):
    with float64():
        score = MIXTURE.noised(process)
        x = process.prior_sample((32, 2), torch.Generator().manual_seed(0))
        _, sde = trajectory(DPMSolverSDE(8, eta=0.0, spacing="logsnr", denoise=False), score, x, process)
        _, ode = trajectory(DPMSolver(8, 2, spacing="logsnr", lower_order_final=False), score, x, process)
    assert len(sde) == len(ode) == 8
    for a, b in zip(sde, ode):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


QUALITY = {  # measured (seed 1, VP / EDM): 0.68 / 0.60, 0.74 / 0.50, 1.11 / 0.78 × the floor
    "2m": lambda: DPMSolverSDE(20),
    "3m": lambda: DPMSolverSDE(20, order=3),
    # k-diffusion's default noise for it: its second stage then reuses the first stage's increment (i.i.d. draws
    # measured 2.7 / 2.5 × the floor at this NFE)
    "singlestep_brownian_tree": lambda: DPMSolverSDE(31, multistep=False, noise="brownian_tree"),
}


@pytest.mark.parametrize("process_name", ["vp", "edm"])
@pytest.mark.parametrize("name", list(QUALITY))
def test_reproduces_mixture(name, process_name, floor):  # noqa: F811
    process = {"vp": VP, "edm": EDM}[process_name]()
    sampler = QUALITY[name]()
    x = process.prior_sample((N * SETS, 2), torch.Generator().manual_seed(0))
    samples = sampler(MIXTURE.noised(process), x, process, generator=torch.Generator().manual_seed(1))
    assert distance(samples) <= 2 * floor, f"{sampler!r}: {distance(samples) / floor:.2f}× the floor"


# --- noise sources -------------------------------------------------------------------------------------------
def test_brownian_tree_increments_add_up_in_any_query_order():
    """W(1) − W(80) from one query is the sum of the increments over [80, 10] and [10, 1], whichever is asked first."""
    with float64():
        x = torch.zeros(64, 3)
        fine_first, coarse_first = (BrownianTreeNoise(x, 0.002, 80.0, torch.Generator().manual_seed(5))
                                    for _ in range(2))
        fine = fine_first(80.0, 10.0) * math.sqrt(70) + fine_first(10.0, 1.0) * math.sqrt(9)
        coarse = coarse_first(80.0, 1.0) * math.sqrt(79)
        torch.testing.assert_close(fine, coarse, rtol=0, atol=1e-12)
        torch.testing.assert_close(coarse_first(10.0, 1.0) * math.sqrt(9) + coarse_first(80.0, 10.0) * math.sqrt(70),
                                   coarse, rtol=0, atol=1e-12)
        # a unit-variance draw whose direction is reversed with the times
        torch.testing.assert_close(coarse_first(1.0, 80.0), -coarse_first(80.0, 1.0))
        draw = coarse_first(80.0, 40.0)
        assert abs(float(draw.std()) - 1) < 0.2  # 192 normal draws: std 1 ± 0.05
        other = BrownianTreeNoise(x, 0.002, 80.0, torch.Generator().manual_seed(6))(80.0, 40.0)
        assert not torch.allclose(draw, other)


def test_brownian_tree_runs_follow_one_path_across_step_counts():
    """With one Brownian path the runs at N, 2N, 4N steps converge to one sample path (strongly); with i.i.d. noise
    each step count draws a different path, so runs at N and 2N steps stay O(1) apart."""
    with float64():
        process = EDM()
        score, x = MIXTURE.noised(process), process.prior_sample((256, 2), torch.Generator().manual_seed(0))

        def run(n, noise, seed=1):
            sampler = DPMSolverSDE(n, noise=noise, denoise=False)
            return sampler(score, x, process, generator=torch.Generator().manual_seed(seed))

        tree = [run(n, "brownian_tree") for n in (16, 32, 64)]
        gaussian = [run(n, "gaussian") for n in (16, 32)]
        assert torch.equal(tree[0], run(16, "brownian_tree"))  # deterministic by seed
        assert not torch.equal(tree[0], run(16, "brownian_tree", seed=2))
    gaps = [float((a - b).norm(dim=1).mean()) for a, b in zip(tree, tree[1:])]
    gap_gaussian = float((gaussian[0] - gaussian[1]).norm(dim=1).mean())
    assert gaps[1] < gaps[0] < gap_gaussian / 3, (gaps, gap_gaussian)


def test_gaussian_noise_draws_from_the_generator():
    x = torch.zeros(4, 3)
    first = GaussianNoise(x, torch.Generator().manual_seed(0))
    assert torch.equal(first(1.0, 0.5), torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("make", [lambda n: DPMSolverSDE(n, order=3),
                                  lambda n: DPMSolverSDE(n, multistep=False, noise="brownian_tree")])
def test_no_host_sync_inside_the_loop(make, monkeypatch):
    """Doubling the steps adds no host reads: the Brownian times are read once before the loop."""
    process = VP()
    score, x = MIXTURE.noised(process), process.prior_sample((8, 2))
    reads = [host_reads(monkeypatch, lambda n=n: make(n)(score, x, process, generator=torch.Generator()))
             for n in (6, 12)]
    assert reads[0] == reads[1]


# --- NFE, settings --------------------------------------------------------------------------------------------
def test_nfe_counts():
    process = VP()
    score, x = MIXTURE.noised(process), process.prior_sample((8, 2), torch.Generator().manual_seed(0))
    expected = {  # one x̂₀ per multistep grid point but the last, two per singlestep interval, one for the denoise
        DPMSolverSDE(20): 20,
        DPMSolverSDE(20, order=3, noise="brownian_tree"): 20,
        DPMSolverSDE(20, denoise=False): 20,
        DPMSolverSDE(21, multistep=False): 21,  # 10 two-stage intervals, then x̂₀
        DPMSolverSDE(20, multistep=False): 20,  # 9 two-stage intervals, one first-order step, then x̂₀
        DPMSolverSDE(7, multistep=False, denoise=False): 7,
    }
    for sampler, nfe in expected.items():
        assert sampler.draw(score, x, process, generator=torch.Generator().manual_seed(1)).nfe == nfe, sampler


@pytest.mark.parametrize("kwargs, match", [
    ({"eta": 1.5}, "eta"), ({"eta": -0.1}, "eta"), ({"s_noise": -1.0}, "s_noise"), ({"order": 4}, "order"),
    ({"multistep": False, "order": 3}, "singlestep"), ({"solver_type": "bogus"}, "solver_type"),
    ({"noise": "pink"}, "noise"), ({"num_steps": 1}, "num_steps"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverSDE(**kwargs)


def test_brownian_tree_needs_an_interval():
    with pytest.raises(ValueError, match="tau_lo < tau_hi"):
        BrownianTreeNoise(torch.zeros(2), 1.0, 1.0)


def test_needs_a_process():
    with pytest.raises(ValueError, match="needs a noise process"):
        DPMSolverSDE(5)(MIXTURE.noised(VP()), torch.zeros(4, 2))


def test_constructible_from_yaml():
    parser = ArgumentParser()
    parser.add_argument("--sampler", type=Sampler)
    config = parser.parse_string("sampler:\n  class_path: lit_score.samplers.DPMSolverSDE\n  init_args:\n"
                                 "    num_steps: 12\n    order: 3\n    eta: 0.5\n    noise: brownian_tree\n")
    sampler = parser.instantiate_classes(config).sampler
    assert isinstance(sampler, DPMSolverSDE)
    assert sampler.settings() == {**DPMSolverSDE().settings(), "num_steps": 12, "order": 3, "eta": 0.5,
                                  "noise": "brownian_tree"}
    assert DPMSolverSDE(**sampler.settings()).settings() == sampler.settings()
