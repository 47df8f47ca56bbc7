"""UniPC (lit_score/samplers/unipc.py) on the exact Gaussian-mixture oracle of test_samplers_oracle.py.

- Step equality with diffusers' ``UniPCMultistepScheduler`` (0.42) on DDPM's discrete schedule (``DiscreteVP``),
  float64: every predicted x of a 9-step run, for bh1 / bh2, orders 1–3, with and without the corrector, on x̂₀ and on ε̂.
  Max difference measured: 1.1e-13 (bh2, order 3, corrector, ε̂); most cases 1e-15. With diffusers' dynamic
  thresholding (x̂₀ prediction) against ``DynamicThreshold`` on image-shaped data: 1.8e-15.
- Converged order on the smooth mixture: UniPC-p shows p + 1 with the corrector and p without it.
- Sample quality at 10 NFE on VP, EDM and the flow-matching interpolant within 2× the data-vs-data floor.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler  # test-only reference (dev extra)
from jsonargparse import ArgumentParser
from test_samplers_oracle import MIXTURE, SETS, SMOOTH, N, distance, float64, floor, host_reads  # noqa: F401

from lit_score.control import decode, encode
from lit_score.processes import EDM, VE, VP, DiscreteVP
from lit_score.processes.interpolant import Interpolant
from lit_score.samplers import DPMSolver, DynamicThreshold, Sampler, StaticThreshold, UniPC, solve_ode
from lit_score.samplers.ode import velocity_fn
from lit_score.utils import append_dims

pytestmark = pytest.mark.usefixtures("one_thread")


# --- step equality with diffusers --------------------------------------------------------------------------------
DDPM = DiscreteVP(1000)


def reference_on_our_grid(sampler: UniPC, x: torch.Tensor, **config):
    """diffusers' scheduler set like ``sampler``: its ``linspace`` timesteps k_i with ``final_sigmas_type="sigma_min"``
    are t = (k_i + 1)/N and t_min = 1/N, our ``uniform`` grid of ``DiscreteVP`` (9 steps: no rounding tie in either
    grid). diffusers keeps its σ = σ_t/α_t in float32 (ours to 1e-4 relative: 1 − ᾱ is 1e-4 at t_min); they are
    replaced by the float64 values so that the updates compare at float64 rounding. ``disable_corrector`` lists the
    steps it leaves uncorrected."""
    n = sampler.num_steps
    scheduler = UniPCMultistepScheduler(solver_order=sampler.order, solver_type=sampler.variant,
                                        predict_x0=sampler.predict_x0, final_sigmas_type="sigma_min",
                                        disable_corrector=[] if sampler.use_corrector else list(range(n)), **config)
    scheduler.set_timesteps(n)
    grid = sampler.grid(DDPM, x.device)
    torch.testing.assert_close(grid, torch.cat([scheduler.timesteps + 1, torch.ones(1)]) / 1000, rtol=0, atol=0)
    noise_level = (-DDPM.log_snr(grid)).exp()
    torch.testing.assert_close(scheduler.sigmas.double(), noise_level, rtol=1e-3, atol=0)
    scheduler.sigmas = noise_level.clone()
    return scheduler


def assert_step_for_step(scheduler, sampler: UniPC, score, x: torch.Tensor) -> None:
    """Every predicted x equal to float64 rounding, diffusers' model being the exact ε̂ = −σ·score at t = (k+1)/N."""
    theirs = []
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), (float(k) + 1) / DDPM.num_timesteps)
        theirs.append(scheduler.step(-append_dims(DDPM.sigma(t), x) * score(theirs[-1] if theirs else x, t), k,
                                     theirs[-1] if theirs else x).prev_sample)
    infos = []
    out = sampler(score, x, DDPM, callback=infos.append)
    assert len(infos) == len(theirs) == sampler.num_steps and torch.equal(out, infos[-1]["x"])
    for info, reference in zip(infos, theirs):
        torch.testing.assert_close(info["x"], reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_matches_diffusers_step_for_step(variant, order, corrector):
    with float64():
        score, x = MIXTURE.noised(DDPM), DDPM.prior_sample((16, 2), torch.Generator().manual_seed(0))
        for predict_x0 in (True, False):
            sampler = UniPC(9, order, variant, predict_x0, corrector, spacing="uniform")
            assert_step_for_step(reference_on_our_grid(sampler, x), sampler, score, x)


def test_thresholding_matches_diffusers_step_for_step():
    """diffusers' ``thresholding=True`` (x̂₀ prediction) is ``DynamicThreshold`` on every model value; images from
    N(0, 2²I), whose exact score is −x/(4α² + σ²), have x̂₀ beyond the threshold's 1.5 at the clean end."""
    with float64():
        def score(y, t):
            return -y / append_dims(4 * DDPM.alpha(t) ** 2 + DDPM.sigma(t) ** 2, y)

        x = DDPM.prior_sample((4, 3, 8, 8), torch.Generator().manual_seed(0))
        sampler = UniPC(9, 3, spacing="uniform", thresholding=DynamicThreshold(0.9, 1.5))
        scheduler = reference_on_our_grid(sampler, x, thresholding=True,
                                          dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
        assert_step_for_step(scheduler, sampler, score, x)
        assert not sampler.reversible and UniPC().reversible
        assert (sampler(score, x, DDPM) - sampler.with_settings(thresholding=None)(score, x, DDPM)).abs().max() > 0.1


# --- exact identities ---------------------------------------------------------------------------------------------
def test_unip2_bh2_is_dpm_solver_2m_and_the_dpmsolver_predictor_is_dpm_solver():
    """UniP-2 with B₂(h) = e^ĥ − 1 and a = ½ is DPM-Solver(++)-2M (unipc.py notes); with ``predictor="dpmsolver"`` and
    no corrector UniPC is DPMSolver multistep (below 10 steps both lower the final orders alike); UniP-1 is DDIM."""
    process = VP()
    with float64():
        score, x = MIXTURE.noised(process), process.prior_sample((32, 2), torch.Generator().manual_seed(0))
        for predict_x0, algorithm in ((True, "dpmsolver++"), (False, "dpmsolver")):
            dpm = DPMSolver(9, 2, algorithm=algorithm)(score, x, process)
            torch.testing.assert_close(UniPC(9, 2, "bh2", predict_x0, False)(score, x, process), dpm)
            assert not torch.allclose(UniPC(9, 2, "bh1", predict_x0, False)(score, x, process), dpm)
            for order in (1, 3):
                dpm_predictor = UniPC(9, order, predict_x0=predict_x0, use_corrector=False, predictor="dpmsolver")
                torch.testing.assert_close(dpm_predictor(score, x, process),
                                           DPMSolver(9, order, algorithm=algorithm)(score, x, process))
            torch.testing.assert_close(UniPC(9, 1, predict_x0=predict_x0, use_corrector=False)(score, x, process),
                                       DPMSolver(9, 1, algorithm=algorithm)(score, x, process))


class RecordingClamp(StaticThreshold):
    """The static clamp at 0.5 that also records what it is given."""

    def __init__(self, seen: list) -> None:
        super().__init__(0.5)
        self.seen = seen

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        self.seen.append(x0)
        return super().__call__(x0)


def test_every_model_value_goes_through_denoised():
    """x̂₀ is formed by ``Sampler.denoised``, so a sampler's thresholding sees every model value (one per NFE)."""
    process = VP()
    score, x = MIXTURE.noised(process), process.prior_sample((8, 2), torch.Generator().manual_seed(0))
    for predict_x0 in (True, False):
        seen = []
        sampler = UniPC(7, 3, predict_x0=predict_x0, thresholding=RecordingClamp(seen))
        out = sampler.draw(score, x, process)
        assert len(seen) == out.nfe == 7
        assert not torch.allclose(out.samples, UniPC(7, 3, predict_x0=predict_x0)(score, x, process))


# --- convergence order, float64 ----------------------------------------------------------------------------------
@functools.cache
def ode_problem(name: str):
    """(process, score, x, exact): 64 prior points carried to t_min by a tight Dormand–Prince solve (computed once)."""
    with float64():
        process = {"vp": VP, "ve": VE}[name]()
        score = SMOOTH.noised(process)
        x = process.prior_sample((64, 2), torch.Generator().manual_seed(0))
        exact, _ = solve_ode(velocity_fn(score, process), x, process.t_max, process.t_min, rtol=1e-12, atol=1e-12)
    return process, score, x, exact


ORDERS = [  # (process, order p, corrector, variant, predict_x0, n (then 2n, 4n))
    *[(name, p, c, "bh2", True, 32 if (p, c) == (3, True) else 16) for name in ("vp", "ve") for p in (1, 2, 3)
      for c in (False, True)],
    ("vp", 1, True, "bh1", True, 16), ("vp", 2, True, "bh1", True, 16),  # B(h) enters only UniC-1 and UniP-2 (a = ½)
    ("vp", 2, True, "bh2", False, 16), ("vp", 3, True, "bh1", False, 32),  # ε̂ prediction
]


@pytest.mark.parametrize("name, order, corrector, variant, predict_x0, n", ORDERS,
                         ids=[f"{c[0]}-p{c[1]}{'+UniC' if c[2] else ''}-{c[3]}-{'x0' if c[4] else 'eps'}"
                              for c in ORDERS])
def test_converged_order(name, order, corrector, variant, predict_x0, n):
    """The error against a tight Dormand–Prince solve falls as n^{−q}, q = p + 1 with UniC and p without (Zhao et al.
    2023, Theorem 3.1 and Corollary 3.2). As in test_samplers_oracle.test_ode_order, both estimates
    log₂(e(n)/e(2n)), log₂(e(2n)/e(4n)) must lie within ½ of q (measured: within 0.4, most within 0.2).
    ``lower_order_final=False``: the default ends on an uncorrected first-order step, an O(h²) error."""
    process, score, x, exact = ode_problem(name)
    with float64():
        errors = [float((UniPC(k, order, variant, predict_x0, corrector, lower_order_final=False)(score, x, process)
                         - exact).abs().max()) for k in (n, 2 * n, 4 * n)]
    estimates = [math.log2(errors[0] / errors[1]), math.log2(errors[1] / errors[2])]
    assert all(abs(q - order - corrector) < 0.5 for q in estimates), (estimates, errors)


def test_encode_decode_round_trip_converges():
    """``reversible``: run inside a reversed window the updates integrate the ODE forward. UniPC-2 (order 3 with UniC)
    round trip x → z → x on one grid converges at order 3 (odd p: no cancellation; test_control_inverse's
    ``test_fixed_grid_round_trip_converges``); measured log₂(e(40)/e(80)) = 2.93 on VP."""
    process = VP()
    score = MIXTURE.noised(process)
    x0 = score.sample(128, process.t_min, torch.Generator().manual_seed(0)).double()

    def error(n: int) -> float:
        z = encode(score, process, UniPC(n), x0).samples
        return float((decode(score, process, UniPC(n), z).samples - x0).norm(dim=1).median())

    errors = [error(n) for n in (40, 80)]
    assert abs(math.log2(errors[0] / errors[1]) - 3) < 0.5, errors


def test_any_data_shape():
    """Images or vectors alike: data N(0, s²I) has the exact score −x/(α²s² + σ²) and the probability-flow map
    x_t = x_T·√((α_t²s² + σ_t²)/(α_T²s² + σ_T²)); a (4, 3, 8, 8) batch follows it and equals the flattened run."""
    process, s2 = VP(), 0.25
    with float64():
        def score(y, t):
            return -y / (process.alpha(t) ** 2 * s2 + process.sigma(t) ** 2).reshape(-1, *[1] * (y.ndim - 1))

        x = process.prior_sample((4, 3, 8, 8), torch.Generator().manual_seed(0))
        ends = torch.tensor([process.t_max, process.t_min])
        scale = ((process.alpha(ends) ** 2 * s2 + process.sigma(ends) ** 2).sqrt()).tolist()
        images = UniPC(24, 3)(score, x, process)  # measured: 1.4e-5 relative
        torch.testing.assert_close(images, x * scale[1] / scale[0], rtol=1e-4, atol=0)
        torch.testing.assert_close(images.flatten(1), UniPC(24, 3)(score, x.flatten(1), process), rtol=1e-12, atol=0)


# --- sample quality ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process, spacing", [(VP(), "logsnr"), (EDM(), "logsnr"), (Interpolant(), "uniform")],
                         ids=["vp", "edm", "flow"])
def test_reproduces_the_mixture_at_10_nfe(process, spacing, floor):  # noqa: F811
    """Measured 0.94× (VP), 1.33× (EDM), 0.56× (flow, uniform grid) the floor; DPM-Solver++(2M) on the same grids at
    10 NFE: 1.51×, 2.04×, 1.58×. On the flow's λ-uniform grid both do worse (UniPC 4.2×, DPM-Solver++(2M) 4.5×)."""
    x = process.prior_sample((N * SETS, 2), torch.Generator().manual_seed(0))
    samples, nfe, _ = UniPC(10, spacing=spacing).draw(MIXTURE.noised(process), x, process)
    assert nfe == 10 and distance(samples) <= 2 * floor, f"{distance(samples) / floor:.2f}× the floor"


# --- NFE, configuration, YAML ------------------------------------------------------------------------------------
def test_nfe_is_num_steps():
    """One evaluation per grid point but the last (whose value UniC would need: skipped), plus the final denoise."""
    process = VE()
    score, x = MIXTURE.noised(process), process.prior_sample((8, 2), torch.Generator().manual_seed(0))
    for sampler in (UniPC(7), UniPC(7, 3, denoise=True), UniPC(7, use_corrector=False), UniPC(1),
                    UniPC(7, 3, predictor="dpmsolver"), UniPC(7, 3, "bh1", predict_x0=False, spacing="karras"),
                    UniPC(12, 3, denoise=True).interval()):
        drawn = sampler.draw(score, x, process, progress=True)
        assert drawn.nfe == sampler.num_steps and torch.isfinite(drawn.samples).all(), sampler
    assert UniPC(12, 3, denoise=True).interval().settings() == {**UniPC(12, 3).settings(), "num_steps": 1}


def test_invalid_configurations():
    for kwargs, match in (({"order": 4}, "order"), ({"variant": "bh3"}, "variant"),
                          ({"predictor": "heun"}, "predictor"), ({"num_steps": 0}, "num_steps"),
                          ({"num_steps": 1, "denoise": True}, "num_steps")):
        with pytest.raises(ValueError, match=match):
            UniPC(**kwargs)
    with pytest.raises(ValueError, match="needs a noise process"):
        UniPC(5)(MIXTURE.noised(VP()), torch.zeros(4, 2))


def test_yaml_constructible():
    parser = ArgumentParser()
    parser.add_argument("--sampler", type=Sampler)
    config = parser.parse_string("sampler:\n  class_path: lit_score.samplers.UniPC\n  init_args:\n    num_steps: 8\n"
                                 "    order: 3\n    variant: bh1\n    predict_x0: false\n    predictor: dpmsolver\n"
                                 "    thresholding:\n      class_path: lit_score.samplers.DynamicThreshold\n"
                                 "      init_args: {percentile: 0.99}\n")
    sampler = parser.instantiate_classes(config).sampler
    assert isinstance(sampler, UniPC) and sampler.settings() == {**UniPC().settings(), "num_steps": 8, "order": 3,
                                                                 "variant": "bh1", "predict_x0": False,
                                                                 "predictor": "dpmsolver",
                                                                 "thresholding": DynamicThreshold(0.99)}


def test_no_host_sync_inside_the_loop(monkeypatch):
    """Doubling the steps adds no host reads (the linear solve is ``solve_ex``: no singularity check on the host)."""
    process = VP()
    score, x = MIXTURE.noised(process), process.prior_sample((8, 2))
    reads = [host_reads(monkeypatch, lambda n=n: UniPC(n, 3)(score, x, process)) for n in (6, 12)]
    assert reads[0] == reads[1]
