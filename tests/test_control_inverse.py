"""Control (DESIGN.md 3c) against closed-form answers: inpainting / imputation, SDEdit, probability-flow encoding, and
the process window they run samplers in. The score is the exact score of a Gaussian mixture under the process
(``GaussianMixtureDistribution.noised``), so every error measured here is the method's own (plus the sampler's
discretisation), never a network's.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy import stats

from lit_score.control import decode, encode, inpaint, interpolate, repaint_schedule, sdedit, sdedit_time, slerp
from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.metrics.distances import energy_distance
from lit_score.processes import EDM, VE, VP, DiscreteVE, DiscreteVP, Interpolant, SubVP
from lit_score.samplers import (
    DDIM,
    AdaptiveODE,
    AdaptiveSDE,
    Ancestral,
    DPMSolver,
    EDMHeun,
    Euler,
    EulerMaruyama,
    Heun,
    LangevinCorrector,
    PredictorCorrector,
    ReverseDiffusion,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MIXTURE = GaussianMixtureDistribution(
    torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]]), torch.tensor([0.3, 0.4, 0.25]), torch.tensor([0.3, 0.3, 0.4])
)
N, SETS = 1000, 5


def median_distance(samples: torch.Tensor, reference, seed: int = 3) -> float:
    """Median energy distance of ``SETS`` parts of ``samples`` to fresh reference draws of the same size."""
    generator = torch.Generator().manual_seed(seed)
    return statistics.median(float(energy_distance(part, reference(len(part), generator)))
                             for part in samples.split(N))


def floor_of(reference) -> float:
    """The data-vs-data floor: median energy distance between two independent reference draws of N."""
    generator = torch.Generator().manual_seed(0)
    return statistics.median(float(energy_distance(reference(N, generator), reference(N, generator)))
                             for _ in range(SETS))


# --- the window ------------------------------------------------------------------------------------------------
ALL_PROCESSES = [VP, lambda: VP("cosine"), SubVP, VE, DiscreteVP, DiscreteVE, EDM, Interpolant]


@pytest.mark.parametrize("make", ALL_PROCESSES)
@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "karras", "logsnr"])
def test_reversed_window_grid_is_the_forward_grid_backwards(make, spacing):
    process = make()
    for n in (7, 50):
        forward = process.time_grid(n, spacing)
        with process.window(process.t_min, process.t_max):
            backward = process.time_grid(n, spacing)
        assert torch.equal(backward, forward.flip(0))
        assert forward[0] == process.t_max and forward[-1] == process.t_min


def test_window_restores_the_ends_even_when_the_sampler_raises():
    process = VP()
    ends = (process.t_min, process.t_max)

    def broken(x, t):
        assert process.t_max == 0.5 and process.t_min == ends[0]  # the sampler runs inside the window
        raise RuntimeError("score failed")

    with pytest.raises(RuntimeError, match="score failed"), process.window(0.5, process.t_min):
        Ancestral(10)(broken, torch.zeros(4, 2), process)
    assert (process.t_min, process.t_max) == ends
    with process.window(process.t_min, 0.25):
        assert process.time_grid(4).tolist()[-1] == 0.25
    assert (process.t_min, process.t_max) == ends


@pytest.mark.parametrize(("t_start", "t_end", "match"), [
    (1.5, 0.001, "t_start must be"), (0.5, 0.0, "t_end must be"), (0.3, 0.3, "t_start != t_end")])
def test_window_refuses_ends_outside_the_range(t_start, t_end, match):
    process = VP()
    with pytest.raises(ValueError, match=match), process.window(t_start, t_end):
        pass
    assert (process.t_min, process.t_max) == (1e-3, 1.0)


# --- inpainting / imputation ------------------------------------------------------------------------------------
def conditional_x2(x1: float) -> GaussianMixtureDistribution:
    """p(x2 | x1) of the diagonal mixture: Σ_k w_k N(x1; μ_k1, s_k1²) N(x2; μ_k2, s_k2²) / p(x1), i.e. the mixture of
    the second coordinates' components with weights w_k' ∝ w_k N(x1; μ_k1, s_k1²)."""
    means, stds, weights = MIXTURE.means, MIXTURE.stds, MIXTURE.weights
    log_w = weights.log() - 0.5 * ((x1 - means[:, 0]) / stds[:, 0]) ** 2 - stds[:, 0].log()
    return GaussianMixtureDistribution(means[:, 1:], stds[:, 1:], torch.softmax(log_w, 0))


def impute(x1: float, n: int, resample: int = 1, jump_length: int = 1):
    """x2 given x1 by inpainting with ``Ancestral(100, spacing="logsnr")`` on VP: (x2 (n, 1), NFE)."""
    process, sampler = VP(), Ancestral(100, spacing="logsnr")
    y = torch.tensor([[x1, 0.0]]).expand(n, 2).clone()
    x, nfe, _ = inpaint(MIXTURE.noised(process), process, sampler, y, torch.tensor([1.0, 0.0]), resample, jump_length,
                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[:, 0], y[:, 0])
    return x[:, 1:], nfe


def upper_fraction(x2: torch.Tensor) -> float:
    """The share of samples at the upper mode (x2 = 1.5 rather than −1)."""
    return float((x2 > 0.25).float().mean())


@pytest.fixture(scope="module")
def bimodal():
    """x1 = 0.6, between the right and the top component: p(x2 | x1) puts 39.9 % at −1 and 60.1 % at 1.5."""
    target = conditional_x2(0.6)
    return target, floor_of(target.sample), float(target.weights[2])


def test_replacement_imputation_is_biased(bimodal):
    """score_sde's replacement: the unknown coordinate never conditions on y through the score, only on its noisy
    value, so it keeps about the marginal's mode weights. Measured: 46 % at the upper mode instead of 60 %, 49-80x the
    floor (the NFE is the sampler's own, 100)."""
    target, floor, upper = bimodal
    x2, nfe = impute(0.6, N * SETS)
    assert nfe == 100
    assert median_distance(x2, target.sample) > 20 * floor
    assert upper_fraction(x2) < upper - 0.1


def test_repaint_reaches_the_bimodal_conditional(bimodal):
    """RePaint (r = 20, j = 10) on the same grid: within 2x the floor. Measured 0.58, 1.46, 1.94, 1.18x over generator
    seeds 1-4 (r = 10: 2.6x, 55 % upper). The upper mode's share rises with r but does not settle at the exact 60.1 %:
    46 % (r = 1), 52 % (5), 56 % (10), 59.8 % (20), 63.7 % (40; 20 000 points) — r = 20 is where it crosses it here,
    not a limit (see the next test). NFE: 100 + (r − 1)·j·9, the 9 jump levels 0, 10, …, 80 below K − j = 90."""
    target, floor, upper = bimodal
    x2, nfe = impute(0.6, N * SETS, resample=20, jump_length=10)
    assert nfe == 100 + 19 * 10 * 9
    assert median_distance(x2, target.sample) <= 2 * floor
    assert abs(upper_fraction(x2) - upper) < 0.03


def test_repaint_is_not_exact_where_the_known_value_excludes_a_mode():
    """x1 = 0: the top component alone explains it (p(x2 | x1 = 0) has 99.96 % at 1.5), but the noisy known value is
    informative only below t ≈ 0.15 on VP while x2 can still change modes (2.5 apart) only above t ≈ 0.25. Replacement
    leaves about half the mass at −1; RePaint's jumps of 10 levels bridge that gap slowly: the upper share is 52 % (r =
    1), 73 % (10), 82 % (20), 90 % (40), 92 % (r = 80, 7210 NFE), i.e. 2700, 890, 350 and 110x the floor. Pinned as
    measured (1000 points)."""
    assert conditional_x2(0.0).weights[2] > 0.999
    assert upper_fraction(impute(0.0, N)[0]) < 0.6
    assert 0.75 < upper_fraction(impute(0.0, N, resample=20, jump_length=10)[0]) < 0.9


@pytest.mark.parametrize("make", [
    lambda: Ancestral(12), lambda: DDIM(12, eta=0.5), lambda: DPMSolver(12), lambda: EDMHeun(8, S_churn=5.0),
    lambda: PredictorCorrector(ReverseDiffusion(12), LangevinCorrector()), lambda: EulerMaruyama(12)])
def test_known_part_is_exact_for_vectors_and_images(make):
    generator = torch.Generator().manual_seed(0)
    # 2-D, x2 known
    process = VE()
    y = MIXTURE.sample(64, generator)
    x = inpaint(MIXTURE.noised(process), process, make(), y, torch.tensor([0, 1]), resample=2, jump_length=3,
                generator=generator).samples
    assert x.shape == y.shape and torch.equal(x[:, 1], y[:, 1]) and torch.isfinite(x).all()
    # images (B, C, H, W): a 16-dimensional mixture seen as 1x4x4, the left half known, one mask for the batch
    images = GaussianMixtureDistribution.random(3, 16, generator)
    process = VP()
    y = images.sample(32, generator).reshape(32, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    sampler = make()
    x, nfe, _ = inpaint(images.noised(process), process, sampler, y, mask, generator=generator)
    assert x.shape == y.shape and torch.isfinite(x).all() and nfe > 0
    assert torch.equal(x[..., :2], y[..., :2]) and not torch.equal(x[..., 2:], y[..., 2:])


@pytest.mark.parametrize("make", [lambda: DDIM(20), lambda: Heun(10), lambda: DPMSolver(10, order=1, denoise=True),
                                  lambda: EDMHeun(10), lambda: Euler(15, spacing="karras")])
def test_interval_by_interval_run_is_the_full_run(make):
    """With nothing known a deterministic sampler run one interval at a time (the inpainter's loop) is the sampler."""
    process = VP()
    score = MIXTURE.noised(process)
    y = torch.zeros(64, 2, dtype=torch.float64)
    x = inpaint(score, process, make(), y, torch.zeros(2), generator=torch.Generator().manual_seed(0)).samples
    prior = process.prior_sample(y.shape, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(x, make()(score, prior, process), rtol=1e-9, atol=1e-9)


def test_repaint_schedule():
    levels = repaint_schedule(10, jump_length=3, resample=3)
    assert levels[0] == 10 and levels[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(levels, levels[1:]))
    downs = sum(b < a for a, b in zip(levels, levels[1:]))
    assert downs == 10 + 2 * 3 * 3  # jumps at levels 0, 3, 6: each of their blocks walked 3 times
    assert repaint_schedule(5) == [5, 4, 3, 2, 1, 0]


def test_inpaint_refusals():
    process, y = VP(), torch.zeros(4, 2)
    score = MIXTURE.noised(process)
    with pytest.raises(ValueError, match="does not step along a fixed grid") as info:
        inpaint(score, process, AdaptiveSDE(), y, torch.tensor([1, 0]))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="broadcast"):
        inpaint(score, process, Ancestral(10), y, torch.ones(3))
    with pytest.raises(ValueError, match="only 0"):
        inpaint(score, process, Ancestral(10), y, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="jump_length"):
        inpaint(score, process, Ancestral(10), y, torch.tensor([1, 0]), resample=2, jump_length=9)


# --- SDEdit -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_process", [VP, VE, DiscreteVP, EDM])
@pytest.mark.parametrize("make", [lambda: Ancestral(20), lambda: DPMSolver(10), lambda: AdaptiveSDE(rtol=0.05)])
def test_sdedit_strength_one_is_sampling_from_the_same_noise(make_process, make):
    process = make_process()
    score, guide = MIXTURE.noised(process), MIXTURE.sample(256, torch.Generator().manual_seed(0))
    edited = sdedit(score, process, make(), guide, 1.0, torch.Generator().manual_seed(1)).samples
    generator = torch.Generator().manual_seed(1)
    sampled = make()(score, process.prior_sample(guide.shape, generator), process, generator=generator)
    assert torch.equal(edited, sampled)


@pytest.mark.parametrize("make_process", [VP, VE, DiscreteVP, EDM])
def test_sdedit_strength_zero_returns_the_guide(make_process):
    """Exactly at strength 0. At a small strength s the output is a posterior sample given x_{t₀}: it differs from
    the guide by about √2 times the posterior std per coordinate, at most √2·σ(t₀)/α(t₀) for Gaussian components; the
    bound asserted, 2·σ(t₀)/α(t₀), leaves room for the sampler's discretisation (measured 1.0-1.4)."""
    process = make_process()
    score, guide = MIXTURE.noised(process), MIXTURE.sample(500, torch.Generator().manual_seed(0))
    sampler = Ancestral(20)
    unchanged = sdedit(score, process, sampler, guide, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(unchanged.samples, guide)
    assert unchanged.nfe == 0
    for strength in (1e-3, 1e-2):
        t0 = torch.tensor([sdedit_time(process, strength)])
        x = sdedit(score, process, sampler, guide, strength, torch.Generator().manual_seed(1)).samples
        rms = float((x - guide).pow(2).mean().sqrt())
        assert rms <= 2 * float(process.sigma(t0) / process.alpha(t0)), (strength, rms)


def test_sdedit_of_data_is_data():
    """A guide drawn from the data makes x_{t₀} an exact draw of p_{t₀}: the output is distributed as the data at
    every strength (here 0.5, Euler–Maruyama over [t_min, t₀])."""
    process = VP()
    guide = MIXTURE.sample(N * SETS, torch.Generator().manual_seed(0))
    sampler = EulerMaruyama(100)
    x, nfe, _ = sdedit(MIXTURE.noised(process), process, sampler, guide, 0.5, torch.Generator().manual_seed(1))
    assert nfe == 100
    assert median_distance(x, MIXTURE.sample) <= 2 * floor_of(MIXTURE.sample)


# --- encoding ---------------------------------------------------------------------------------------------------
def test_encode_decode_round_trip_within_the_tolerance():
    """AdaptiveODE at rtol = atol = 1e-6 in float64, encoding then decoding: two solves, each with a local error per
    step below the tolerance; the round trip stays within 1e-4 (measured 4e-6 max over 256 points)."""
    process = VP()
    score = MIXTURE.noised(process)
    x0 = score.sample(256, process.t_min, torch.Generator().manual_seed(0)).double()
    sampler = AdaptiveODE(rtol=1e-6, atol=1e-6)
    z, nfe, _ = encode(score, process, sampler, x0)
    assert nfe > 0 and (process.t_min, process.t_max) == (1e-3, 1.0)
    assert float((decode(score, process, sampler, z).samples - x0).abs().max()) < 1e-4


ROUND_TRIP_ORDERS = {  # solver of order p: the round trip's order is p for odd p, p + 1 for even p (see below)
    "ddim": (lambda n: DDIM(n), 1),
    "heun": (lambda n: Heun(n), 3),
    "edm_heun": (lambda n: EDMHeun(n), 3),
    "dpm_solver++_2m": (lambda n: DPMSolver(n, order=2), 3),
    "dpm_solver++_3m_corrected": (lambda n: DPMSolver(n, order=3, corrected_3m=True), 3),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_ORDERS))
def test_fixed_grid_round_trip_converges(name):
    """decode(encode(x)) − x on one grid read both ways. A step of order p has local error C·h^{p+1}; the step back
    over the same interval has C·(−h)^{p+1} + O(h^{p+2}), so each pair cancels to O(h^{p+2}) when p + 1 is odd: the
    round trip converges at order p for odd p and p + 1 for even p. Measured on the median over points at n = 20 … 160
    (VP and VE): 0.93–1.03 for DDIM, 2.87–3.17 for Heun, EDM Heun, DPM-Solver++ 2M and corrected 3M. The estimate
    p̂ = log₂(e(40)/e(80)) must be nearer the expected order than any other."""
    make, order = ROUND_TRIP_ORDERS[name]
    process = VP()
    score = MIXTURE.noised(process)
    x0 = score.sample(128, process.t_min, torch.Generator().manual_seed(0)).double()

    def error(n: int) -> float:
        sampler = make(n)
        z = encode(score, process, sampler, x0).samples
        return float((decode(score, process, sampler, z).samples - x0).norm(dim=1).median())

    errors = [error(n) for n in (40, 80)]
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.5, errors


def test_encoded_data_is_distributed_as_the_prior():
    """Exact draws of p_{t_min} encoded by the probability-flow ODE are draws of p_{t_max} ≈ N(0, I) (VP: the mean
    α(1)·μ ≈ 0.01 and the variance 1 − O(α²) are below what 5000 points resolve): energy distance to fresh prior draws
    within 2x the prior-vs-prior floor, and per-coordinate Kolmogorov–Smirnov p-values above 0.01."""
    process = VP()
    score = MIXTURE.noised(process)
    x0 = score.sample(N * SETS, process.t_min, torch.Generator().manual_seed(0))
    z = encode(score, process, DPMSolver(20), x0).samples

    def prior(n, generator):
        return process.prior_sample((n, 2), generator)

    assert median_distance(z, prior) <= 2 * floor_of(prior)
    for coordinate in z.T:
        assert stats.kstest(coordinate.numpy(), "norm").pvalue > 0.01


@pytest.mark.parametrize("make", [lambda: Ancestral(10), lambda: DDIM(10, eta=0.5), lambda: DDIM(10, clip_denoised=1.0),
                                  lambda: EDMHeun(10, S_churn=1.0), lambda: EulerMaruyama(10), lambda: AdaptiveSDE()])
def test_encode_refuses_a_non_reversible_sampler_in_one_line(make):
    process = VP()
    with pytest.raises(ValueError, match="not a reversible probability-flow ODE solver.*DDIM\\(eta=0\\)") as info:
        encode(MIXTURE.noised(process), process, make(), torch.zeros(4, 2))
    assert "\n" not in str(info.value)


def test_reversible_capability():
    reversible = [DDIM(10), DPMSolver(10), DPMSolver(10, multistep=False), EDMHeun(10), Euler(10), Heun(10),
                  AdaptiveODE()]
    assert all(s.reversible for s in reversible)
    assert not any(s.reversible for s in [Ancestral(10), DDIM(10, eta=1.0), EDMHeun(10, S_churn=1.0),
                                          EulerMaruyama(10), ReverseDiffusion(10), AdaptiveSDE(),
                                          PredictorCorrector(Euler(10), LangevinCorrector(n_steps=0))])


def test_slerp_and_interpolation_paths():
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 3, 4, generator=generator), torch.randn(8, 3, 4, generator=generator)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    u0, u1 = (z / z.flatten(1).norm(dim=1).reshape(-1, 1, 1) for z in (z0, z1))  # on the unit sphere:
    theta = torch.nn.functional.cosine_similarity(u0.flatten(1), u1.flatten(1)).arccos()
    for alpha in (0.25, 0.5, 0.9):  # the arc keeps the norm and moves at a constant angle α·θ from u0
        u = slerp(u0, u1, alpha).flatten(1)
        torch.testing.assert_close(u.norm(dim=1), torch.ones(8))
        torch.testing.assert_close((u * u0.flatten(1)).sum(1).clamp(-1, 1).arccos(), alpha * theta)
    torch.testing.assert_close(slerp(z0, 2 * z0, 0.5), 1.5 * z0)  # parallel: the straight line

    process = VP()
    score = MIXTURE.noised(process)
    x_a, x_b = score.sample(4, process.t_min, generator).double(), score.sample(4, process.t_min, generator).double()
    sampler = AdaptiveODE(rtol=1e-6, atol=1e-6)
    paths, nfe, _ = interpolate(score, process, sampler, x_a, x_b, num=5)
    assert paths.shape == (5, 4, 2) and nfe > 0
    torch.testing.assert_close(paths[0], x_a, rtol=0, atol=1e-4)
    torch.testing.assert_close(paths[-1], x_b, rtol=0, atol=1e-4)
