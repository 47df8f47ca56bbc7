"""Step schedules (issue 27): the KL-optimal grid, grid files, the grid fitted to a model, Watson's strided bound.

The KL-optimal grid's optimality, derived here: for unit-variance Gaussian data x₀ ~ N(0, I) the denoiser is
x̂₀ = x̃/(1 + σ̃²) (x̃ = x/α, σ̃ = σ/α), so one DDIM (η = 0) step t → s gives x̃_s = x̃_t (1 + σ̃_s σ̃_t)/(1 + σ̃_t²). In
θ = arctan σ̃ and the normalised state y = x̃ cos θ (y ~ N(0, I) at every t) that is y_s = cos(θ_t − θ_s)·y_t: an
n-step run multiplies y by Π cos Δθ_i, and the output's KL to N(0, I) falls as that product rises. With Σ Δθ_i fixed
by the ends and log cos concave, equal Δθ_i — linear in arctan σ̃, the grid of Sabour et al. 2024 — is the optimum.

Measured (VP, DDIM with 5 steps, exact 3-component mixture, fitted on 256 draws, 2000 fresh draws, float64; the
test's settings): mean log p of the samples / terminal MSE to a 128-step run: uniform −3.44 / 0.137, quadratic
−2.28 / 0.066, Karras −2.99 / 0.141, log-SNR −4.03 / 0.195, KL-optimal −1.70 / 0.0334, fitted −1.67 / 0.0331; exact
samples −1.53. The fit starts from KL-optimal, already close to the terminal-error optimum on this near-unit-variance
mixture, and gains little beyond it (41 sampling runs).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from lit_score.cli import main
from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.metrics.likelihood import ddpm_vlb
from lit_score.metrics.likelihood.strided import best_path, stride_costs, strided_bound
from lit_score.processes import EDM, VE, VP, DiscreteVP, Interpolant, StoredGrid, SubVP, load_grid, save_grid
from lit_score.samplers import DDIM, Ancestral, DPMSolver, EDMHeun, Euler, Heun
from lit_score.samplers.schedules import closed_form_grid, fit_grid

pytestmark = pytest.mark.usefixtures("one_thread")

PROCESSES = {"vp": VP, "subvp": SubVP, "ve": VE, "edm": EDM, "flow": Interpolant}
MIXTURE = GaussianMixtureDistribution(
    torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]]), torch.tensor([0.3, 0.4, 0.25]), torch.tensor([0.3, 0.3, 0.4])
)
UNIT = GaussianMixtureDistribution(torch.zeros(1, 2), torch.ones(1), torch.ones(1))  # N(0, I)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_redesign"


def angles(process, t: torch.Tensor) -> torch.Tensor:
    """θ = arctan(σ/α) at t."""
    return (process.sigma(t) / process.alpha(t)).atan()


# --- the KL-optimal grid ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROCESSES)
def test_kl_optimal_grid_is_linear_in_arctan_sigma_between_the_ends(name):
    process = PROCESSES[name]()
    n = 7
    t = process.time_grid(n, "kl_optimal")
    ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    theta_max, theta_min = angles(process, ends).tolist()
    expected = torch.linspace(theta_max, theta_min, n + 1, dtype=torch.float64)  # the closed form, in θ
    assert t[0] == process.t_max and t[-1] == process.t_min and (t.diff() < 0).all()
    torch.testing.assert_close(angles(process, t), expected, rtol=0, atol=1e-9)


def test_kl_optimal_on_a_discrete_chain_is_snapped_and_decreasing():
    process = DiscreteVP(num_timesteps=1000)
    t = process.time_grid(10, "kl_optimal")
    assert len(t) == 11 and (t.diff() < 0).all() and torch.equal(process.discretize(t), t)


@pytest.mark.parametrize("name", PROCESSES)
def test_kl_optimal_grid_is_the_best_grid_for_unit_gaussian_data_with_ddim(name, tmp_path):
    process, n = PROCESSES[name](), 5
    score = UNIT.noised(process)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)

    def gain(times: torch.Tensor) -> float:
        """y_out / y_in of DDIM on ``times`` (through a grid file: the run takes exactly these times)."""
        grid = StoredGrid.for_process(process, times, {"method": "test"})
        path = save_grid(grid, tmp_path / "g.json")
        out = DDIM(num_steps=n, denoise=False, spacing=str(path))(score, x.clone(), process)
        scale = torch.cos(angles(process, ends)) / process.alpha(ends)  # y = x cos θ / α at either end
        ratio = (out * scale[1]) / (x * scale[0])
        predicted = torch.cos(angles(process, times).diff()).prod()  # Π cos Δθ_i, derived in the module docstring
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(predicted)), rtol=1e-9, atol=0)
        return float(predicted)

    best = gain(process.time_grid(n, "kl_optimal"))
    for spacing in ("uniform", "quadratic", "karras", "logsnr"):
        assert gain(process.time_grid(n, spacing)) < best
    generator = torch.Generator().manual_seed(1)
    theta = angles(process, process.time_grid(n, "kl_optimal"))
    for _ in range(5):  # interior angles moved at random, the ends kept
        moved = theta.clone()
        moved[1:-1] += 0.3 * theta.diff().abs().min() * (torch.rand(n - 1, generator=generator) - 0.5)
        times = process.t_from_log_snr(-moved.tan().log())
        times[0], times[-1] = process.t_max, process.t_min
        assert gain(times) < best


# --- grid files -------------------------------------------------------------------------------------------------------
def visited_times(sampler, process, score) -> list[float]:
    seen: list[float] = []
    x = process.prior_sample((3, 2), generator=torch.Generator().manual_seed(0)).double()
    sampler(score, x, process, callback=lambda step: seen.append(float(step["t"][0])))
    return seen


def test_every_sampler_runs_the_stored_times_exactly(tmp_path):
    process = VP()
    times = torch.tensor([1.0, 0.61, 0.37, 0.2, 0.05, 1e-3], dtype=torch.float64)  # no closed form has these
    path = save_grid(StoredGrid.for_process(process, times, {"method": "hand"}), tmp_path / "vp5.json")
    assert load_grid(path).times == tuple(times.tolist())
    spacing = str(path)
    for sampler in (Euler(num_steps=5, spacing=spacing, denoise=False), DDIM(num_steps=6, spacing=spacing),
                    Heun(num_steps=6, spacing=spacing), Ancestral(num_steps=6, spacing=spacing),
                    EDMHeun(num_steps=6, spacing=spacing), DPMSolver(num_steps=5, spacing=spacing, order=2)):
        assert sampler.grid(process, torch.device("cpu")).tolist() == times.tolist(), type(sampler).__name__
    euler = Euler(num_steps=5, spacing=spacing, denoise=False)
    assert visited_times(euler, process, MIXTURE.noised(process)) == times[:-1].tolist()
    edm = EDM()
    edm_times = edm.time_grid(4, "kl_optimal")
    edm_path = save_grid(closed_form_grid(edm, 4, "kl_optimal"), tmp_path / "edm4.json")
    assert EDMHeun(num_steps=5, spacing=str(edm_path)).grid(edm, torch.device("cpu")).tolist() == edm_times.tolist()


def test_bad_grid_files_are_refused_with_the_fix(tmp_path):
    process = VP()
    path = save_grid(closed_form_grid(process, 4, "kl_optimal"), tmp_path / "vp4.json")
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="made for a VP process, not this model's EDM"):
        Euler(num_steps=4, spacing=str(path), denoise=False).grid(EDM(), cpu)
    with pytest.raises(ValueError, match="set the sampler's num_steps to 4"):
        Euler(num_steps=6, spacing=str(path), denoise=False).grid(process, cpu)
    with pytest.raises(ValueError, match="σ/α at its times differs"):
        # same class and range, another schedule
        Euler(num_steps=4, spacing=str(path), denoise=False).grid(VP(beta_max=10.0), cpu)
    data = json.loads(path.read_text())
    data["times"][1], data["times"][2] = data["times"][2], data["times"][1]
    (tmp_path / "swapped.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="decrease strictly"):
        load_grid(tmp_path / "swapped.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        Euler(num_steps=4, spacing=str(tmp_path / "broken.json"), denoise=False).grid(process, cpu)
    with pytest.raises(ValueError, match="no grid file"):
        Euler(num_steps=4, spacing=str(tmp_path / "missing.json"), denoise=False).grid(process, cpu)
    with pytest.raises(ValueError, match="unknown time spacing 'karas'"):
        Euler(num_steps=4, spacing="karas")
    with pytest.raises(ValueError, match="SDEdit"):
        with process.window(0.5, process.t_min):
            Euler(num_steps=4, spacing=str(path), denoise=False).grid(process, cpu)


# --- the grid fitted to a model ---------------------------------------------------------------------------------------
def test_the_fitted_grid_beats_uniform_and_karras_on_the_mixture_likelihood_of_its_samples(tmp_path):
    torch.set_default_dtype(torch.float64)
    try:
        process, sampler = VP(), DDIM(num_steps=5)
        score = MIXTURE.noised(process)
        fit_noise = process.prior_sample((256, 2), generator=torch.Generator().manual_seed(0))
        grid = fit_grid(score, process, sampler, fit_noise, reference_steps=128, sweeps=2, candidates=6)
        assert grid.protocol["value"] <= min(grid.protocol["closed_forms"].values())
        path = save_grid(grid, tmp_path / "fitted.json")
        noise = process.prior_sample((2000, 2), generator=torch.Generator().manual_seed(1))  # fresh, shared
        reference = sampler.with_settings(num_steps=129, spacing="logsnr")(score, noise.clone(), process)
        quality, error = {}, {}
        for spacing in ("uniform", "karras", str(path)):
            out = sampler.with_settings(spacing=spacing)(score, noise.clone(), process)
            quality[spacing] = float(MIXTURE.log_prob(out).mean())
            error[spacing] = float(((out - reference) ** 2).mean())
        assert quality[str(path)] > max(quality["uniform"], quality["karras"])
        assert error[str(path)] < min(error["uniform"], error["karras"])
    finally:
        torch.set_default_dtype(torch.float32)


# --- Watson et al.'s strided bound ------------------------------------------------------------------------------------
SMALL = GaussianMixtureDistribution(  # inside [−1, 1]: the 8-bit decoder applies
    torch.tensor([[-0.5, -0.3], [0.5, -0.3], [0.0, 0.5]]), torch.tensor([0.1, 0.12, 0.08]),
    torch.tensor([0.3, 0.3, 0.4]),
)


@pytest.fixture(scope="module")
def chain():
    torch.set_default_dtype(torch.float64)
    try:
        process = DiscreteVP(num_timesteps=10, beta_start=0.01, beta_end=0.5)
        x0 = SMALL.sample(1000, torch.Generator().manual_seed(0)).double()
        costs = stride_costs(SMALL.noised(process), process, x0, generator=torch.Generator().manual_seed(1))
        full = ddpm_vlb(SMALL.noised(process), process, x0, clip_denoised=False,
                        generator=torch.Generator().manual_seed(1))
    finally:
        torch.set_default_dtype(torch.float32)
    return process, costs, float(full.bits_per_dim.mean())


def test_the_full_path_is_ddpm_vlb_and_the_dp_equals_brute_force(chain):
    process, costs, ddpm_bound = chain
    num = process.num_timesteps
    assert strided_bound(costs, num).bits_per_dim == pytest.approx(ddpm_bound, rel=1e-12)  # the same per-step terms
    for k in (2, 3, 4, 5):
        result = strided_bound(costs, k)
        brute = min((costs.bound([num, *inner, 1, 0]), [num, *inner, 1, 0])
                    for inner in itertools.combinations(range(num - 1, 1, -1), k - 2))
        assert result.path == brute[1] and result.bits_per_dim == pytest.approx(brute[0], rel=1e-12)
        assert result.bits_per_dim <= result.even_bits_per_dim
    with pytest.raises(ValueError, match="no path of 1 steps"):
        best_path(costs.costs, 1)  # the decoder follows step 1 only: N → 0 in one step is no edge


def test_watson_grid_runs_in_ancestral_with_its_steps(chain, tmp_path):
    process, costs, _ = chain
    result = strided_bound(costs, 4)
    path = save_grid(result.grid(process), tmp_path / "watson.json")
    times = Ancestral(num_steps=4, spacing=str(path)).grid(process, torch.device("cpu"))
    assert [round(float(t) * 10) for t in times] == result.path[:-1]


# --- the command ------------------------------------------------------------------------------------------------------
def test_lit_score_grid_writes_a_file_that_sample_uses(tmp_path, capsys):
    ckpt = FIXTURES / "edm.ckpt"
    out = tmp_path / "edm_kl.json"
    main(["grid", "--ckpt_path", str(ckpt), "--method", "kl_optimal", "--steps", "4", "--output", str(out)])
    grid = load_grid(out)
    assert grid.process == "EDM" and grid.n == 4 and grid.protocol["checkpoint"]["path"] == str(ckpt)
    assert grid.times == tuple(EDM().time_grid(4, "kl_optimal").tolist())
    fitted = tmp_path / "edm_fit.json"
    main(["grid", "--ckpt_path", str(ckpt), "--method", "fit", "--steps", "3", "--num_samples", "32",
          "--reference_steps", "16", "--sampler.class_path", "lit_score.samplers.Euler", "--output", str(fitted)])
    record = load_grid(fitted).protocol
    assert record["method"] == "fitted" and record["sampler"]["class_path"] == "lit_score.samplers.ode.Euler"
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "8", "--sampler.class_path", "lit_score.samplers.Euler",
          "--sampler.init_args.num_steps", "4", "--sampler.init_args.spacing", str(fitted),
          "--output", str(tmp_path / "s")])
    capsys.readouterr()
    for change, words in ((["--output", str(out)], "exists"), (["--method", "bogus"], "unknown --method"),
                          (["--steps", "0"], "--steps")):
        argv = {"--ckpt_path": str(ckpt), "--method": "kl_optimal", "--steps": "4",
                "--output": str(tmp_path / "o.json"), **dict(zip(change[::2], change[1::2]))}
        with pytest.raises(SystemExit):
            main(["grid", *[item for pair in argv.items() for item in pair]])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lit-score: error:") and words in err[0], err


@pytest.mark.slow
def test_lit_score_grid_watson_on_a_ddpm_checkpoint(tmp_path):
    """Watson's DP on the 1000-step toy DDPM fixture (N = 1000: 1000 network evaluations and N²/2 KL terms)."""
    out = tmp_path / "watson.json"
    main(["grid", "--ckpt_path", str(FIXTURES / "ddpm.ckpt"), "--method", "watson", "--steps", "4",
          "--num_samples", "8", "--output", str(out)])
    grid = load_grid(out)
    steps = grid.protocol["steps"]
    assert grid.n == 4 and steps[0] == 1000 and steps[-1] == 1 and grid.times == tuple(n / 1000 for n in steps)
    assert grid.protocol["value"] <= grid.protocol["even_stride_value"]
    assert Ancestral(num_steps=5, spacing=str(out)).grid(DiscreteVP(), torch.device("cpu")).tolist() == list(grid.times)
