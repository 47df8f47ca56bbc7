"""x̂₀ thresholding (``lit_score.samplers.thresholding``): what it leaves alone, equality with diffusers'
``_threshold_sample`` and with its DDIM / DPM-Solver++ schedulers run with ``thresholding=True``, ``clip_denoised`` as
the static shorthand, the refusal on data without a known range, and the YAML form.

Measured (float64, this machine): ``DynamicThreshold`` vs ``DPMSolverMultistepScheduler._threshold_sample`` /
``DDIMScheduler._threshold_sample`` max |difference| 0 (the same operations); DDIM step for step vs
``DDIMScheduler.step(use_clipped_model_output=True)`` 6.7e-16; DPM-Solver(++) 2M step for step vs
``DPMSolverMultistepScheduler`` 2.1e-7 (dpmsolver++) and 3.6e-7 (dpmsolver), which is float32 rounding: its ``step``
casts the sample to float32. Both run on diffusers' own timesteps with the schedule given to both in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers  # a test-only reference: the dev extra installs it
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonargparse import ArgumentParser

from lit_score.cli import main
from lit_score.data import Digits, Toy2D
from lit_score.loading.sampler import data_range_problem
from lit_score.processes import DiscreteVP
from lit_score.samplers import (
    DDIM,
    DEIS,
    IPNDM,
    Ancestral,
    DPMSolver,
    DPMSolverSDE,
    DynamicThreshold,
    EDMHeun,
    Restart,
    Sampler,
    SASolver,
    StaticThreshold,
    UniPC,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

T = 100
PROCESS = DiscreteVP(num_timesteps=T, beta_start=1e-3, beta_end=0.2)


class Eps:
    """A deterministic ε-predictor whose x̂₀ leaves [−1, 1] at the noisy end (so thresholding acts there)."""

    def predict(self, x, t):
        eps = 0.3 * torch.sin(2 * x + 5 * t.reshape(-1, *[1] * (x.ndim - 1)))
        alpha, sigma = (v.reshape(-1, *[1] * (x.ndim - 1)) for v in (PROCESS.alpha(t), PROCESS.sigma(t)))
        return (x - sigma * eps) / alpha, eps

    def eps(self, x, k: int):
        """ε̂ at diffusers' timestep k (our t = (k + 1)/T)."""
        return self.predict(x, torch.full((x.shape[0],), (k + 1) / T, dtype=torch.float64))[1]


def start() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def on_grid(sampler: Sampler, times: list[float]) -> Sampler:
    """``sampler`` walking exactly ``times`` (diffusers' timesteps as our t) instead of its own grid."""
    sampler.grid = lambda process, device: torch.tensor(times, dtype=torch.float64)
    return sampler


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=48), st.floats(0.05, 1.0), st.floats(1.0, 3.0))
def test_an_x0_inside_the_range_is_returned_unchanged(values, percentile, max_value):
    """|x̂₀| ≤ 1 everywhere: the dynamic s = clamp(quantile, 1, max) is 1, so x̂₀ comes back as it was; the static clip
    at any c ≥ 1 likewise."""
    x0 = torch.tensor(values, dtype=torch.float64).reshape(2, -1) if len(values) % 2 == 0 else torch.tensor(
        values, dtype=torch.float64)[None]
    assert torch.equal(DynamicThreshold(percentile, max_value)(x0), x0)
    assert torch.equal(StaticThreshold(max_value)(x0), x0)


def test_outside_the_range_dynamic_lands_in_it_and_static_clips():
    x0 = 3 * start()
    dynamic, static = DynamicThreshold(0.9, 2.0)(x0), StaticThreshold(1.5)(x0)
    assert dynamic.abs().max() <= 1 and not torch.equal(dynamic, x0.clamp(-1, 1))  # rescaled, not clipped at 1
    assert torch.equal(static, x0.clamp(-1.5, 1.5))
    assert DynamicThreshold()(x0.float()).dtype == torch.float32 and DynamicThreshold()(x0.half()).dtype == torch.half


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("percentile, max_value", [(0.995, 1.0), (0.9, 1.5), (0.6, 4.0)])
def test_dynamic_threshold_is_diffusers_threshold_sample(scheduler, percentile, max_value):
    reference = getattr(diffusers, scheduler)(thresholding=True, dynamic_thresholding_ratio=percentile,
                                              sample_max_value=max_value)
    g = torch.Generator().manual_seed(1)
    for shape, scale in [((6, 3, 8, 8), 2.0), ((5, 1, 4, 4), 0.7), ((3, 4, 16), 5.0)]:
        x0 = scale * torch.randn(shape, dtype=torch.float64, generator=g)
        assert torch.equal(DynamicThreshold(percentile, max_value)(x0), reference._threshold_sample(x0))


def test_ddim_with_thresholding_is_diffusers_ddim_step_for_step():
    """diffusers' DDIMScheduler(thresholding=True) with ``use_clipped_model_output=True``: ε̂ re-derived from the
    thresholded x̂₀, as lit-score's DDIM does (GLIDE's choice; diffusers' default keeps the model's ε̂ instead)."""
    reference = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                        thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5,
                                        set_alpha_to_one=True)
    reference.alphas_cumprod = PROCESS.alphas_cumprod.double()  # the same table in float64
    reference.set_timesteps(10)
    steps = reference.timesteps.tolist()
    x = start()
    for k in steps:
        x = reference.step(Eps().eps(x, k), k, x, use_clipped_model_output=True).prev_sample
    threshold = DynamicThreshold(0.9, 1.5)
    ours = on_grid(DDIM(num_steps=10, thresholding=threshold), [(k + 1) / T for k in steps])(Eps(), start(), PROCESS)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-14)
    plain = on_grid(DDIM(num_steps=10), [(k + 1) / T for k in steps])(Eps(), start(), PROCESS)
    assert (plain - x).abs().max() > 0.1  # thresholding acted


@pytest.mark.filterwarnings("ignore:.*algorithm_type dpmsolver is deprecated:FutureWarning")
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
def test_dpm_solver_2m_with_thresholding_is_diffusers_step_for_step(algorithm):
    """DPMSolverMultistepScheduler(thresholding=True, solver_order=2, final_sigmas_type="sigma_min") on its own
    timesteps; for ``dpmsolver`` both step with the ε̂ re-derived from the thresholded x̂₀."""
    reference = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", solver_order=2, algorithm_type=algorithm,
        thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5, final_sigmas_type="sigma_min")
    reference.set_timesteps(8)
    steps = reference.timesteps.tolist()
    times = [(k + 1) / T for k in steps] + [1 / T]
    t = torch.tensor(times, dtype=torch.float64)
    reference.sigmas = PROCESS.sigma(t) / PROCESS.alpha(t)  # its σ/α table, in float64
    x = start()
    for k in steps:
        x = reference.step(Eps().eps(x, k), k, x).prev_sample
    threshold = DynamicThreshold(0.9, 1.5)
    ours = on_grid(DPMSolver(num_steps=8, algorithm=algorithm, thresholding=threshold), times)
    # diffusers' step casts the sample to float32 ("upcast"): its x is float32-rounded once per step
    torch.testing.assert_close(ours(Eps(), start(), PROCESS), x, rtol=0, atol=1e-6)
    plain = on_grid(DPMSolver(num_steps=8, algorithm=algorithm), times)(Eps(), start(), PROCESS)
    assert (plain - x).abs().max() > 0.1  # thresholding acted


@pytest.mark.parametrize("make", [DDIM, Ancestral])
def test_clip_denoised_is_static_thresholding(make):
    """``clip_denoised=c`` is ``thresholding=StaticThreshold(c)``: the same samples, the same x0_threshold; not both."""
    clipped, static = make(num_steps=8, clip_denoised=0.5), make(num_steps=8, thresholding=StaticThreshold(0.5))
    assert clipped.x0_threshold == static.x0_threshold == StaticThreshold(0.5)
    runs = [s(Eps(), start(), PROCESS, generator=torch.Generator().manual_seed(3)) for s in (clipped, static)]
    assert torch.equal(*runs) and runs[0].abs().max() <= 0.5
    assert type(clipped)(**clipped.settings()).x0_threshold == StaticThreshold(0.5)
    with pytest.raises(ValueError, match="pass clip_denoised or thresholding, not both"):
        make(clip_denoised=1.0, thresholding=DynamicThreshold())
    assert not DDIM(thresholding=StaticThreshold()).reversible and not DPMSolver(
        thresholding=StaticThreshold()).reversible and DPMSolver().reversible


@pytest.mark.parametrize("make", [EDMHeun, Restart, SASolver, DPMSolverSDE, UniPC, DEIS, IPNDM],
                         ids=lambda m: m.__name__)
def test_every_sampler_that_forms_x0_takes_thresholding(make):
    """The option of CONTRACTS' rule: x̂₀ through ``Sampler.denoised``, so the final x̂₀ lies in the bound and the run
    differs from the unthresholded one; the settings rebuild it."""
    kw = {"num_steps": 8, "denoise": True}
    thresholded, plain = make(**kw, thresholding=StaticThreshold(0.5)), make(**kw)
    runs = [s(Eps(), start(), PROCESS, generator=torch.Generator().manual_seed(3)) for s in (thresholded, plain)]
    assert runs[0].abs().max() <= 0.5 and (runs[0] - runs[1]).abs().max() > 0.1
    assert type(thresholded)(**thresholded.settings()).x0_threshold == StaticThreshold(0.5)


def test_thresholding_needs_a_known_symmetric_data_range():
    dynamic, wide = DPMSolver(thresholding=DynamicThreshold()), DDIM(thresholding=StaticThreshold(2.0))
    assert data_range_problem(dynamic, Digits()) is None and data_range_problem(wide, Digits()) is None
    assert data_range_problem(DPMSolver(), Toy2D()) is None  # no thresholding: any data
    assert "unbounded" in data_range_problem(dynamic, Toy2D())
    assert "unknown" in data_range_problem(DDIM(clip_denoised=1.0), None)
    assert "cuts the data range" in data_range_problem(DDIM(clip_denoised=0.5), Digits())
    for bad in ({"percentile": 0.0}, {"percentile": 1.5}, {"max_value": 0.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DynamicThreshold(**bad)


def test_fit_refuses_thresholding_on_toy_data_in_one_line(tmp_path, capsys):
    """The command path: ``lit-score fit`` of toy 2-D data with a thresholding sampler stops before training."""
    sampler = {"class_path": "lit_score.samplers.DPMSolver",
               "init_args": {"thresholding": {"class_path": "lit_score.samplers.DynamicThreshold"}}}
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "configs/ddpm/toy.yaml"), "--trainer.logger.init_args.save_dir",
              str(tmp_path / "runs"), "--data.init_args.num_samples", "300", "--model.init_args.sampler",
              json.dumps(sampler)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-score: error:")]
    assert info.value.code != 0 and len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert "data range is unbounded" in lines[0] and "drop the sampler's thresholding" in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()


def test_yaml_config_builds():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Sampler, "sampler")
    text = """
sampler:
  class_path: lit_score.samplers.DPMSolver
  init_args:
    num_steps: 10
    thresholding: {class_path: lit_score.samplers.DynamicThreshold, init_args: {percentile: 0.995, max_value: 1.0}}
"""
    built = parser.instantiate_classes(parser.parse_string(text)).sampler
    assert built.thresholding == DynamicThreshold(0.995, 1.0) and built.num_steps == 10
    old = "sampler: {class_path: lit_score.samplers.DDIM, init_args: {clip_denoised: 1.0}}"  # an old config
    assert parser.instantiate_classes(parser.parse_string(old)).sampler.x0_threshold == StaticThreshold(1.0)
