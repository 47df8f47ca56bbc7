"""Shortcut models (Frans et al. 2025; issue 26) on the two-time model: lit_score.losses.Shortcut."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from loss_training import training_steps
from test_distillation import Mixture, assert_resumed_exactly, trainer  # the resume test's data and trainer
from torch import nn

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.loading import check_hyperparameters
from lit_score.losses import Shortcut
from lit_score.losses.shortcut import ReferenceClock, average_velocity, bootstrap_levels
from lit_score.losses.target_network import ema_update
from lit_score.metrics.distances import energy_distance
from lit_score.models import GenerativeModule, ScoreSDE
from lit_score.networks import MLP
from lit_score.processes import EDM, VP, Interpolant
from lit_score.samplers import FlowMapSampler
from lit_score.scores import FlowMapScore, GaussianFlowMap
from lit_score.utils import randn_like

MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)
PROCESSES = [Interpolant(), VP(), EDM()]
IDS = ["interpolant", "vp", "edm"]


class ScaledExactMap(nn.Module):
    """The exact Gaussian flow map with one parameter a scaling its two-time denoiser D̂(x, t, s) (a = 1: exact); it
    records the (t, s) of every evaluation in ``calls``."""

    two_time = True
    labels = None

    def __init__(self, process, scale: float = 1.0) -> None:
        super().__init__()
        self.exact, self.process, self.calls = GaussianFlowMap(process, MEAN, STD), process, []
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float64))

    def denoise(self, x, t, s=None):
        self.calls.append((t.detach().clone(), (t if s is None else s).detach().clone()))
        return self.scale * self.exact.denoise(x, t, s)


def gaussian_data(n: int, seed: int = 1) -> torch.Tensor:
    return MEAN + STD * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the exact map is a fixed point -----------------------------------------------------------------------------------
@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_the_bootstrap_target_of_the_exact_map_is_the_exact_2d_map(process):
    """Two exact d-jumps compose to the exact 2d-jump (the flow map's semigroup property), so (ŝ₁ + ŝ₂)/2 = ŝ(x, τ, 2d)
    to rounding for every step 2d = 1, …, 1/32 on every process. At the finest step 2d = 2/M the half step d = 1/M is
    the velocity at d = 0 (an Euler step): ŝ₁ is the velocity at τ instead of the average over [τ, τ + d], an O(d)
    error, so doubling M halves it. Measured at τ = 0, 1/8, …, 7/8: max error 0.113 / 0.056 / 0.028 (interpolant),
    0.068 / 0.034 / 0.017 (VP), 0.0023 / 0.0011 / 0.0005 (EDM) at M = 128 / 256 / 512, ratios 2.00–2.15."""
    exact, clock = ScaledExactMap(process), ReferenceClock(process)
    x = MEAN + torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(loss: Shortcut, step: float, tau: torch.Tensor) -> float:
        steps = torch.full((64,), step, dtype=torch.float64)
        with torch.no_grad():
            target = loss.bootstrap_target(exact, clock, x, tau, steps)
            return float((target - loss.shortcut(exact, clock, x, tau, steps)).abs().max())

    loss = Shortcut(128, clip=None)
    for j in range(6):
        assert error(loss, 2.0**-j, torch.arange(64, dtype=torch.float64) % 2**j * 2.0**-j) < 1e-12, j
    tau = (torch.arange(64) % 8).double() / 8
    finest = [error(Shortcut(m, clip=None), 2 / m, tau) for m in (128, 256)]
    assert 1e-4 < finest[0] < 0.2 and 1.8 < finest[0] / finest[1] < 2.3, finest


def gradient_at(process, scale: float, rows: slice, n: int = 40_000) -> float:
    """d/da of the mean per-sample loss over ``rows`` (bootstrap rows first, then flow matching) at scale a; the
    same data and draws for every a."""
    model = ScaledExactMap(process, scale)
    Shortcut(clip=None)(model, gaussian_data(n), torch.Generator().manual_seed(0))[rows].mean().backward()
    return float(model.scale.grad)


@pytest.mark.parametrize("process", PROCESSES[:2], ids=IDS[:2])
def test_at_the_exact_map_the_gradient_vanishes_and_restores_around_it(process):
    """The flow-matching target −L·(α'x₀ + σ'ε) has the exact velocity as its expectation given x_t, so its gradient at
    the exact model (a = 1) is zero in expectation; the bootstrap target of the exact map is the exact 2d-map (but for
    the finest step's O(d) Euler error), so its residual nearly vanishes. Measured with 40 000 draws (30 000
    flow-matching rows), as d/da at a = 0.9 / 1 / 1.1: interpolant −41.2 / 0.035 / 41.1 for the whole loss (flow
    matching −55.9 / 0.046 / 56.0, bootstrap 3.03 / 0.0044 / −3.69), VP −25.8 / 0.009 / 25.7. The bootstrap rows alone
    do not restore a (self-consistency holds for other maps too: the flow-matching rows pin the map); the whole loss
    does (opposite signs around a = 1: the stop-gradient fixed point is stable). On EDM the uniform τ-grid puts almost
    every row at σ ≫ 1 and the estimate is 7 % noise at this n: not tested there."""
    rows = 40_000 // 4
    for part in (slice(rows, None), slice(None)):
        low, exact, high = (gradient_at(process, a, part) for a in (0.9, 1.0, 1.1))
        assert low < 0 < high, (part, low, high)
        assert abs(exact) < 0.01 * min(-low, high), (part, low, exact, high)
        restoring = min(-low, high)
    assert abs(gradient_at(process, 1.0, slice(None, rows))) < 0.002 * restoring


# --- the batch is the paper's -----------------------------------------------------------------------------------------
def test_the_bootstrap_share_and_the_step_and_time_grids_are_the_papers():
    """Batch 256 with the paper's bootstrap share 1/4 (Frans et al. 2025: a quarter of each batch are self-consistency
    targets; the reference code's default ``bootstrap_every`` 8 is 1/8): 64 bootstrap rows; M = 128 gives log₂128 = 7
    steps 2d = 1/64 … 1, ⌊64/7⌋ = 9 rows each, the 64 − 63 = 1 left over at 2d = 1 (the reference code's layout).
    Bootstrap τ are multiples of 2d in [0, 1 − 2d] (every one of them drawn); the 192 flow-matching rows have d = 0
    and τ uniform on {0, 1/128, …, 127/128}."""
    j = bootstrap_levels(256, 4, 128)
    assert len(j) == 64 == 256 // 4
    assert torch.bincount(j).tolist() == [10, 9, 9, 9, 9, 9, 9] and j[:9].eq(6).all() and j[-2:].eq(0).all()
    assert len(bootstrap_levels(256, 8, 128)) == 32 and bootstrap_levels(20, 4, 128).eq(0).all()  # too few: all 2d = 1
    loss, generator = Shortcut(128), torch.Generator().manual_seed(0)
    seen_bootstrap, seen_flow = set(), torch.zeros(128)
    for _ in range(100):
        tau, step = loss.times(256, generator, torch.device("cpu"))
        boot, flow = slice(None, 64), slice(64, None)
        assert torch.equal(step[boot], 2.0 ** -j.double()) and step[flow].eq(0).all()
        index = tau[boot] / step[boot]
        assert torch.equal(index, index.round()) and (tau[boot] + step[boot]).le(1).all()
        seen_bootstrap |= {(float(s), float(t)) for s, t in zip(step[boot], tau[boot])}
        seen_flow += torch.bincount((tau[flow] * 128).long(), minlength=128)
        assert torch.equal(tau[flow] * 128, (tau[flow] * 128).round())
    assert seen_bootstrap == {(2.0**-k, i * 2.0**-k) for k in range(7) for i in range(2**k)}
    assert seen_flow.min() > 0 and abs(float(seen_flow.mean()) - 150) < 1e-9  # 19 200 draws on 128 values
    assert float(seen_flow.std() / seen_flow.mean()) < 0.25  # binomial: √(1/150) = 0.08


def test_the_model_is_queried_at_t_max_minus_tau_L_and_d_maps_to_the_second_time():
    """The one conversion: t = t_max − τ·L, L = t_max − t_min; the student's pass (the last evaluation) sees
    (t(τ), t(τ + 2d)) on bootstrap rows and s = t on flow-matching rows; the target's two passes see the half steps,
    the finest one (d = 1/M) at s = t."""
    process = Interpolant()
    model, loss = ScaledExactMap(process), Shortcut(8, clip=None)
    tau, step = loss.times(32, torch.Generator().manual_seed(4), torch.device("cpu"))
    loss(model, gaussian_data(32), torch.Generator().manual_seed(4))
    first, second, student = model.calls
    span = process.t_max - process.t_min
    t = process.t_max - tau * span
    assert torch.allclose(student[0], t, atol=1e-15)
    assert torch.allclose(student[1], torch.where(step > 0, process.t_max - (tau + step) * span, t), atol=1e-15)
    half, boot = step[:8] / 2, slice(None, 8)
    assert torch.allclose(first[0], t[boot], atol=1e-15)
    assert torch.allclose(first[1], torch.where(half * 8 <= 1, t[boot], t[boot] - half * span), atol=1e-15)
    assert torch.allclose(second[0], t[boot] - half * span, atol=1e-15)


def test_at_d_zero_the_two_time_model_is_the_ordinary_velocity_and_any_step_count_samples():
    """u(x, t, t) of a two-time network (target velocity, the interpolant) is its probability-flow velocity and
    X_{t→s} = x − (t − s)·u(x, t, s); FlowMapSampler with k = 1, 2, 4, 8 jumps makes k evaluations, each at a (t, s)
    the loss trains (τ = i/k a multiple of 2d = 1/k), and the exact map's k jumps land where its one jump does."""
    process = Interpolant()
    torch.manual_seed(0)
    model = FlowMapScore(MLP(2, hidden=16, depth=1, time_embed_dim=8, two_time=True), process, target="velocity")
    x, t = torch.randn(5, 2), torch.full((5,), 0.7)
    s = t - 0.25
    with torch.no_grad():
        assert torch.allclose(average_velocity(model, x, t, t), model.velocity(x, t), atol=1e-6)
        assert torch.allclose(model.flow_map(x, t, s), x - 0.25 * average_velocity(model, x, t, s), atol=1e-6)
    trained = {(2.0**-k, i * 2.0**-k) for k in range(7)
               for i in range(2**k)}  # (2d, τ) of the bootstrap rows, M = 128
    z = process.prior_sample((64, 2), generator=torch.Generator().manual_seed(1)).double()
    one = FlowMapSampler(1)(GaussianFlowMap(process, MEAN, STD), z, process)
    span = process.t_max - process.t_min
    for k in (1, 2, 4, 8):
        exact = ScaledExactMap(process)
        with torch.no_grad():
            draw = FlowMapSampler(k).draw(exact, z, process)
        assert draw.nfe == k and len(exact.calls) == k
        for t_i, s_i in exact.calls:
            tau, step = (process.t_max - t_i[0]) / span, (t_i[0] - s_i[0]) / span
            assert (round(float(step), 12), round(float(tau), 12)) in trained, (k, tau, step)
        assert torch.allclose(draw.samples, one, atol=1e-10)


# --- the target model θ⁻ ----------------------------------------------------------------------------------------------
def mlp_map(process=None) -> FlowMapScore:
    """A float64 two-time MLP 16×1 (seed 0) on ``process`` (default the interpolant), target velocity."""
    torch.manual_seed(0)
    network = MLP(2, hidden=16, depth=1, time_embed_dim=8, two_time=True)
    return FlowMapScore(network, process or Interpolant(), target="velocity").double()


def draws(seed: int = 2) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


X0 = 2 * torch.randn(16, 2, generator=draws(1), dtype=torch.float64)
#: Shortcut(8, bootstrap_every=2, clip=1.0) of ``mlp_map(VP())`` at X0 with draws(2), measured at commit 4330f9d
#: (before the target network existed): the 8 bootstrap rows and the sum over the 16 rows
BEFORE = [2.6791862546286964, 0.489071467935945, 1.3327177731013518, 3.482309041749708, 23.615147104728308,
          21.116246660679423, 25.788147590140674, 2.2469731704725726]
BEFORE_SUM = 229.00687765667408


def test_with_ema_rate_0_the_loss_is_todays_and_carries_no_state():
    """The default μ = 0 gives the values measured before the target network existed (float64, to 1e-12; the
    clip at 1 is active), passes the online model itself to the bootstrap and keeps no θ⁻ through the hooks."""
    model, loss = mlp_map(VP()), Shortcut(8, bootstrap_every=2, clip=1.0)
    assert loss.ema_rate == 0 and loss.target_network.model(model, training=False) is model
    loss.fit_started(model, resumed=False)
    loss.before_step(model, 1)
    value = loss(model, X0, draws())
    assert torch.allclose(value[:8], torch.tensor(BEFORE, dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(value.sum()) == pytest.approx(BEFORE_SUM, rel=1e-12)
    assert loss.target_network.module is None and loss.state_dict() == {}
    assert repr(loss) == "Shortcut(denoise_timesteps=8, bootstrap_every=2, clip=1.0)"


def test_with_ema_rate_the_bootstrap_target_is_two_d_steps_of_the_target_network_in_eval_mode():
    """μ > 0: θ⁻ is a frozen copy made at fit start (θ⁻ = θ: the loss equals μ = 0's, the MLP has no dropout); after
    θ⁻ is moved (the online model unchanged) only the bootstrap rows change, to (ŝ_θ − target)² with the target
    computed by hand from θ⁻; θ⁻ runs in eval mode (the reference's ``train=False``) while the student trains, and
    the gradient reaches θ only."""
    model, loss = mlp_map(), Shortcut(8, bootstrap_every=2, clip=None, ema_rate=0.9)
    loss.fit_started(model, resumed=False)
    target = loss.target_network.module
    assert target is not model and not any(p.requires_grad for p in target.parameters())
    same = loss(model, X0, draws())
    assert torch.equal(same, Shortcut(8, bootstrap_every=2, clip=None)(model, X0, draws()))
    online = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=draws(3), dtype=p.dtype))
    modes = []
    target.network.register_forward_hook(lambda module, args, output: modes.append(module.training))
    moved = loss(model, X0, draws())
    assert modes == [False, False] and model.training  # the two d-steps, in eval mode
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), online))
    assert torch.equal(moved[8:], same[8:]) and (moved[:8] - same[:8]).abs().min() > 0

    generator, clock = draws(), ReferenceClock(model.process)  # the loss's draws, in its order
    tau, step = loss.times(16, generator, X0.device)
    x_t = model.process.perturb(X0, clock.time(tau), randn_like(X0, generator))
    by_hand = loss.bootstrap_target(target, clock, x_t[:8], tau[:8], step[:8])
    student = loss.shortcut(model, clock, x_t[:8], tau[:8], step[:8])
    assert torch.allclose(moved[:8], ((student - by_hand) ** 2).mean(dim=1), rtol=1e-12, atol=0)
    moved.sum().backward()
    assert all(p.grad is None for p in target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert repr(loss) == "Shortcut(denoise_timesteps=8, bootstrap_every=2, clip=None, ema_rate=0.9)"


def test_the_target_network_follows_the_online_model_by_ema_once_per_optimizer_step():
    """θ⁻ ← 0.9·θ⁻ + 0.1·θ when the global step passes the one θ⁻ followed (step 0: no optimizer step yet; a second
    micro-batch of step 1, gradient accumulation: no second update); the checkpoint state holds θ⁻ and its step."""
    model, loss = mlp_map(), Shortcut(8, ema_rate=0.9)
    loss.fit_started(model, resumed=False)
    target = loss.target_network.module
    start = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=draws(4), dtype=p.dtype))
    loss.before_step(model, 0)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), start))
    loss.before_step(model, 1)
    for old, new, theta in zip(start, target.parameters(), model.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * theta, rtol=1e-14, atol=1e-15)
        assert not torch.allclose(new, theta)
    once = [p.clone() for p in target.parameters()]
    loss.before_step(model, 1)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), once))
    loss.before_step(model, 2)
    for old, new, theta in zip(once, target.parameters(), model.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * theta, rtol=1e-14, atol=1e-15)
    state = loss.state_dict()
    assert state["target_step"] == 2 and all(torch.equal(v, target.state_dict()[k]) for k, v in state["target"].items())


# --- resume and bad input ---------------------------------------------------------------------------------------------
def shortcut_model(ema_rate: float = 0.0) -> ScoreSDE:
    return ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8, two_time=True), Interpolant(), target="velocity",
                    loss=Shortcut(denoise_timesteps=8, clip=None, ema_rate=ema_rate),
                    optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))


@pytest.mark.parametrize("ema_rate", [0.0, 0.5])
def test_resume_is_bit_exact_mid_training(tmp_path, ema_rate):
    """2 epochs × 3 steps against 1 epoch resumed from its checkpoint: identical weights. With μ = 0 the loss carries
    no state (its target is the online model, gradient stopped), so its checkpoint entry is empty; with μ = 0.5 it
    holds θ⁻ one update behind step 3 (target_step 2), and both runs end with the same θ⁻ at target_step 5."""
    pl.seed_everything(0)
    full = shortcut_model(ema_rate)
    trainer(tmp_path / "full", 2).fit(full, datamodule=Mixture())
    pl.seed_everything(0)
    trainer(tmp_path / "first", 1).fit(shortcut_model(ema_rate), datamodule=Mixture())
    ckpt = next((tmp_path / "first").glob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=True).get("lit_score_loss")
    assert saved["target_step"] == 2 if ema_rate else not saved
    pl.seed_everything(123)
    resumed = shortcut_model(ema_rate)
    trainer(tmp_path / "resumed", 2).fit(resumed, datamodule=Mixture(), ckpt_path=ckpt)
    assert_resumed_exactly(full, resumed, ema_rate)


def test_the_config_tree_passes_the_loading_checks():
    """What a checkpoint of configs/fewstep/shortcut_toy.yaml holds passes the trust checks of lit_score.loading."""
    tree = {"_class_path": "lit_score.models.ScoreSDE", "network": {"class_path": "lit_score.networks.MLP"},
            "loss": {"class_path": "lit_score.losses.Shortcut", "init_args": {"denoise_timesteps": 128, "clip": None}}}
    assert check_hyperparameters(tree, GenerativeModule, "test") is ScoreSDE


def test_bad_input_is_refused_in_one_line():
    cases = [
        (lambda: Shortcut(denoise_timesteps=100), "power of two .* use 128"),
        (lambda: Shortcut(denoise_timesteps=1), "denoise_timesteps"),
        (lambda: Shortcut(bootstrap_every=1), "bootstrap_every"),
        (lambda: Shortcut(clip=0.0), "clip"),
        (lambda: Shortcut(ema_rate=1.0), "ema_rate"),
        (lambda: ScoreSDE(MLP(2, hidden=8), Interpolant(), target="velocity", loss=Shortcut()), "two_time true"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            build()
        assert "\n" not in str(error.value)


# --- a toy model trained with it --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_toy_model_samples_the_mixture_in_one_and_two_steps():
    """2-D ring mixture (4 components, radius 2, std 0.2), the interpolant, a two-time MLP 64×3 (target velocity) from
    scratch, Adam 3e-3, batch 256, 2000 steps (tests/loss_training.py), evaluated with an EMA (rate 0.995) of the
    weights; energy distance of 2000 samples from 2000 prior draws to 2000 data points, floor (two data draws) 0.0011.
    Measured (one thread): FlowMapSampler 1 / 2 / 4 / 8 steps 0.0070 / 0.0057 / 0.0037 / 0.0028 (6.4× / 5.2× the
    floor; 0.0066 / 0.0039 after 1500 steps), while one Euler step of the same model's d = 0 velocity gives 1.39: the
    shortcut, not the flow, makes the one-step samples. About 25 s of CPU (23 min wall on the shared machine).
    Tolerance: 10× the floor at 1 and 2 steps,
    and 1 step 100× better than the d = 0 Euler step."""
    process = Interpolant()
    mixture = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2)
    torch.manual_seed(0)
    model = FlowMapScore(MLP(2, hidden=64, depth=3, embedding="fourier", two_time=True), process, target="velocity")
    average = copy.deepcopy(model).requires_grad_(False)
    data = mixture.sample(2000, torch.Generator().manual_seed(7))
    floor = float(energy_distance(mixture.sample(2000, torch.Generator().manual_seed(8)), data))
    z = process.prior_sample((2000, 2), generator=torch.Generator().manual_seed(5))
    for _ in training_steps(Shortcut(clip=None), model, mixture.sample, 2000, lr=3e-3):
        ema_update(average, model, 0.995)
    with torch.no_grad():
        one, two = (float(energy_distance(FlowMapSampler(k)(average, z, process), data)) for k in (1, 2))
        t_max = torch.full((2000,), process.t_max)
        euler = z - (process.t_max - process.t_min) * average.velocity(z, t_max)
        flow = float(energy_distance(euler, data))
    assert one < 10 * floor and two < 10 * floor and one < flow / 100, (floor, one, two, flow)
