"""Consistency training without a teacher (issue 26): improved consistency training (iCT, Song & Dhariwal 2023) and
easy consistency tuning (ECT, Geng et al. 2024) on the two-time model."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from loss_training import cosine_decay, train, training_steps
from test_distillation import FIXTURES, Mixture, trainer  # the EDM toy fixture, the resume test's data and trainer
from torch import nn

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.distillation import CheckpointTeacher
from lit_score.loading import CheckpointError, check_hyperparameters
from lit_score.losses import ConsistencyTraining, EasyConsistencyTuning, ECTSchedule, ICTCurriculum, Teacher
from lit_score.losses.consistency import student_and_target
from lit_score.losses.target_network import ema_update
from lit_score.metrics import energy_distance
from lit_score.models import GenerativeModule, ScoreSDE
from lit_score.networks import MLP
from lit_score.processes import EDM, VP, Interpolant
from lit_score.samplers import FlowMapSampler
from lit_score.scores import FlowMapScore, GaussianFlowMap
from lit_score.scores.flow_map import flow_map_jump

MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)


class ScaledExactMap(nn.Module):
    """The exact Gaussian flow map with one parameter a scaling its two-time denoiser: X = (σ_s/σ_t)·x + (α_s −
    α_t σ_s/σ_t)·a·D̂(x, t, s); a = 1 is the exact map."""

    two_time = True
    labels = None

    def __init__(self, process, scale: float) -> None:
        super().__init__()
        self.exact, self.process = GaussianFlowMap(process, MEAN, STD), process
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float64))

    def flow_map(self, x, t, s):
        return flow_map_jump(self.process, x, t, s, self.scale * self.exact.denoise(x, t, s))


def gradient_at(loss, process, scale: float, n: int = 40_000) -> float:
    """d/da of the batch mean of ``loss`` at scale a, the same data and noise draws for every a."""
    model = ScaledExactMap(process, scale)
    x0 = MEAN + STD * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss(model, x0, torch.Generator().manual_seed(0)).mean().backward()
    return float(model.scale.grad)


def ict(n: int, **kw) -> ConsistencyTraining:
    """iCT at a fixed N = n + 1 points."""
    return ConsistencyTraining(ICTCurriculum(n, n, total_steps=1), **kw)


def ect(stage: int, **kw) -> EasyConsistencyTuning:
    schedule = ECTSchedule(double_every=1)
    schedule.advance(stage - 1)
    return EasyConsistencyTuning(schedule=schedule, **kw)


# --- the exact map is a fixed point -----------------------------------------------------------------------------------
@pytest.mark.parametrize("process", [EDM(), VP(), Interpolant()], ids=["edm", "vp", "interpolant"])
def test_at_the_exact_map_the_gradient_vanishes_with_the_step_and_restores_around_it(process):
    """The target x_{t_{n+1}} = x₀ + σ̃_{n+1}·ε shares ε with x_{t_n} but is not on its ODE path: E[x_{t_{n+1}} |
    x_{t_n}] is the exact-score DDIM step, so at the exact map (a = 1) the weighted gradient is O(Δσ̃), not 0 (Song
    et al. 2023, Theorem 2). Measured (40 000 draws): it falls with the grid (l2: from 15 % of the restoring
    gradient at a = 0.9 with N = 11 to 0.2 % with N = 1281; ECT likewise with the stage), while a = 0.9 / 1.1 get
    gradients of opposite signs that push a back to 1 (the stop-gradient fixed point is stable). A target drawn with
    fresh noise would not vanish."""
    for loss in (ict(1280, distance="l2"), ict(1280), ect(8, distance="l2"), ect(8)):
        low, exact, high = (gradient_at(loss, process, a) for a in (0.9, 1.0, 1.1))
        assert low < 0 < high, (loss, low, high)
        share = 0.02 if loss.distance == "l2" else 0.05  # measured ≤ 0.01 (l2), ≤ 0.036 (pseudo-Huber, noisier)
        assert abs(exact) < share * min(-low, high), (loss, low, exact, high)
    coarse, fine = (abs(gradient_at(ict(n, distance="l2"), process, 1.0, 200_000)) for n in (10, 80))
    assert fine < coarse / 4, (coarse, fine)  # O(Δσ̃): 8× more intervals, at least 4× smaller
    with torch.no_grad():  # and the loss itself vanishes with the step (l2, weight 1/Δσ̃: O(Δσ̃))
        x0 = MEAN + STD * torch.randn(4000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        values = [float(ict(n, distance="l2")(ScaledExactMap(process, 1.0), x0, torch.Generator().manual_seed(0))
                        .mean()) for n in (10, 80)]
    assert values[1] < values[0] / 4, values


# --- the curriculum and the schedule are the papers' ------------------------------------------------------------------
def test_the_ict_curriculum_doubles_as_equation_8_states():
    """K = 400 000, s₀ = 10, s₁ = 1280: K' = ⌊400 000/(log₂ 128 + 1)⌋ = 50 000, and N(k) = 11, 21, …, 1281 doubling at
    every multiple of K' (iCT Sec. 3.4); s₁/s₀ not a power of 2 floors as eq. 8 does."""
    curriculum = ICTCurriculum(10, 1280, total_steps=400_000)
    assert curriculum.stage_length == 50_000
    expected = [11, 21, 41, 81, 161, 321, 641, 1281]
    assert [curriculum.num_scales(50_000 * i) for i in range(8)] == expected
    assert [curriculum.num_scales(50_000 * i - 1) for i in range(1, 8)] == expected[:-1]
    assert curriculum.num_scales(399_999) == curriculum.num_scales(10**7) == 1281
    odd = ICTCurriculum(10, 1000, total_steps=1000)  # log₂⌊100⌋ = 6.64: K' = ⌊1000/7.64⌋ = 130
    assert odd.stage_length == 130 and odd.num_scales(130 * 7) == 1001


def test_the_index_distribution_is_the_discretised_lognormal_on_the_karras_grid():
    """p(n) ∝ erf((log σ_{n+1} − P_mean)/(√2 P_std)) − erf((log σ_n − P_mean)/(√2 P_std)) on iCT's grid σ_i =
    (σ_min^{1/ρ} + i/(N − 1)(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ (ascending here, as in iCT), weight 1/(σ_{n+1} − σ_n); the
    drawn indices follow it."""
    loss = ict(10)
    grid, probabilities, weights = loss.grid(EDM(0.002, 80.0), torch.device("cpu"))
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    sigma = [(lo + i / 10 * (hi - lo)) ** 7 for i in range(11)]
    mass = [math.erf((math.log(b) + 1.1) / (math.sqrt(2) * 2.0)) - math.erf((math.log(a) + 1.1) / (math.sqrt(2) * 2.0))
            for a, b in zip(sigma, sigma[1:])]
    expected = torch.tensor([m / sum(mass) for m in mass], dtype=torch.float64).flip(0)  # ours run from σ_max down
    assert torch.allclose(grid, torch.tensor(sigma, dtype=torch.float64).flip(0), rtol=1e-12)
    assert torch.allclose(probabilities, expected, rtol=1e-10)
    gaps = torch.tensor([b - a for a, b in zip(sigma, sigma[1:])], dtype=torch.float64).flip(0)
    assert torch.allclose(weights, 1 / gaps, rtol=1e-9)
    n = torch.multinomial(probabilities, 100_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(torch.bincount(n, minlength=10) / 1e5, expected.float(), atol=0.005)


def test_the_ect_schedule_maps_t_to_r_as_the_paper_states():
    """r/t = 1 − n(t)/q^a, n(t) = 1 + k·sigmoid(−b·t), a = ⌈iters/d⌉ (iters from 1: a = ⌊k/d⌋ + 1 for the 0-based step),
    q = 2, k = 8, b = 1; r clamped at σ_min; t log-normal (P_mean −1.1, P_std 2) in [σ_min, σ_max]; weight 1/(t − r)."""
    schedule = ECTSchedule(q=2.0, k=8.0, b=1.0, double_every=100)
    process, batch = EDM(0.002, 80.0), 4096
    for step in (0, 99, 100, 250, 799):
        schedule.advance(step)
        a = math.ceil((step + 1) / 100)
        t, r, gap = EasyConsistencyTuning(schedule=schedule).times(
            process, batch, torch.Generator().manual_seed(3), torch.zeros((), dtype=torch.float64))
        z = torch.randn(batch, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        expected_t = (-1.1 + 2.0 * z).exp().clamp(0.002, 80.0)
        expected_r = (expected_t * (1 - (1 + 8 * torch.sigmoid(-expected_t)) / 2**a)).clamp_min(0.002)
        assert torch.allclose(t, expected_t, rtol=1e-12) and torch.allclose(r, expected_r, rtol=1e-12), step
        assert torch.allclose(gap, expected_t - expected_r, rtol=1e-12)
    assert schedule.stage(0) == 1 and schedule.stage(99) == 1 and schedule.stage(100) == 2
    assert float(schedule.ratio(torch.tensor(1e6), step=0)) == 0.5  # n → 1 for large t: r = t/2 in the first stage


def test_the_target_pass_shares_the_students_dropout_mask():
    """student_and_target restores the random state the student's pass started from (ECT's code restores the CUDA RNG
    state the same way); the global stream afterwards is where the student's pass left it."""
    dropout, x = nn.Dropout(0.5), torch.ones(1000)
    torch.manual_seed(0)
    student, target = student_and_target(lambda: dropout(x), lambda: dropout(x), x.device)
    after = torch.rand(3)
    torch.manual_seed(0)
    alone = dropout(x)
    assert torch.equal(student, target) and torch.equal(student, alone) and torch.equal(after, torch.rand(3))


# --- resume -----------------------------------------------------------------------------------------------------------
def few_step(loss) -> ScoreSDE:
    return ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8, two_time=True), EDM(), target="edm", loss=loss,
                    optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))


def ict_loss():  # N = 3, 5, 9 over 6 steps: K' = ⌊6/(log₂ 4 + 1)⌋ = 2
    return ConsistencyTraining(ICTCurriculum(2, 8, total_steps=6))


def ect_loss(teacher):  # the stage changes every 2 steps; starts from the teacher's weights on a fresh fit
    return EasyConsistencyTuning(Teacher(teacher.score_model, network=teacher.network), ECTSchedule(double_every=2))


@pytest.mark.parametrize("method", ["ict", "ect"])
def test_resume_is_bit_exact_with_the_curriculum_mid_way(tmp_path, method):
    """2 epochs × 3 steps against 1 epoch resumed from its checkpoint: weights and curriculum state identical; the
    checkpoint holds the curriculum at step 2 (N = 5 / stage 2 of 3); ECT's resumed student is not re-initialised."""
    torch.manual_seed(0)
    teacher = ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8), EDM(), target="edm")

    def build():
        return few_step(ict_loss() if method == "ict" else ect_loss(teacher))

    pl.seed_everything(0)
    full = build()
    trainer(tmp_path / "full", 2).fit(full, datamodule=Mixture())
    pl.seed_everything(0)
    trainer(tmp_path / "first", 1).fit(build(), datamodule=Mixture())
    ckpt = next((tmp_path / "first").glob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)["lit_score_loss"]
    assert saved[{"ict": "curriculum", "ect": "schedule"}[method]]["step"] == 2
    pl.seed_everything(123)
    resumed = build()
    trainer(tmp_path / "resumed", 2).fit(resumed, datamodule=Mixture(), ckpt_path=ckpt)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert full.loss.state_dict() == resumed.loss.state_dict()
    if method == "ict":
        assert resumed.loss.curriculum.num_scales() == 9

    other, message = ((ConsistencyTraining(ICTCurriculum(2, 8, total_steps=7)), "total_steps=6 \\(now 7\\)")
                      if method == "ict" else (EasyConsistencyTuning(schedule=ECTSchedule(double_every=3)),
                                               "double_every=2 \\(now 3\\)"))
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(saved)
    moved = ict_loss() if method == "ict" else ect_loss(teacher)
    moved.load_state_dict(saved)
    with pytest.raises(ValueError, match="saved at step 2 but training resumes at step 5"):
        moved.before_step(None, 5)
    with pytest.raises(ValueError, match="written by another loss"):
        moved.load_state_dict({})


def test_ect_starts_from_the_checkpoints_weights_and_the_config_trees_pass_the_loading_checks():
    """On a fresh fit the two-time student holds the EDM toy fixture's weights (its s-branch at zero: the same
    denoiser); the YAML trees of both losses (a curriculum / schedule object, a CheckpointTeacher) pass the checks."""
    teacher = CheckpointTeacher(str(FIXTURES / "edm.ckpt"))
    network = MLP(2, hidden=128, depth=3, embedding="fourier", two_time=True)
    student = ScoreSDE(network, EDM(), target="edm", sigma_data=1.0, loss=EasyConsistencyTuning(teacher))
    student.loss.fit_started(student.score_model, resumed=False)
    x, t = torch.randn(6, 2), torch.full((6,), 3.0)
    with torch.no_grad():
        assert torch.equal(student.score_model.denoise(x, t, t / 3), teacher.score_model.denoise(x, t))
    loss_trees = [
        {"class_path": "lit_score.losses.ConsistencyTraining", "init_args": {"curriculum": {
            "class_path": "lit_score.losses.ICTCurriculum", "init_args": {"total_steps": 4000}}}},
        {"class_path": "lit_score.losses.EasyConsistencyTuning", "init_args": {
            "init_from": {"class_path": "lit_score.distillation.CheckpointTeacher", "init_args": {"checkpoint": "t"}},
            "schedule": {"class_path": "lit_score.losses.ECTSchedule", "init_args": {"double_every": 100}}}},
    ]
    for loss in loss_trees:
        tree = {"_class_path": "lit_score.models.ScoreSDE", "network": {"class_path": "lit_score.networks.MLP"},
                "loss": loss}
        assert check_hyperparameters(tree, GenerativeModule, "test") is ScoreSDE
    loss_trees[0]["init_args"]["curriculum"]["class_path"] = "lit_score.losses.ECTSchedule"
    with pytest.raises(CheckpointError, match="is not a ICTCurriculum"):
        check_hyperparameters({**tree, "loss": loss_trees[0]}, GenerativeModule, "test")


# --- bad input --------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_in_one_line():
    cases = [
        (lambda: ICTCurriculum(20, 10), "s1 \\(10\\) must be at least s0"),
        (lambda: ICTCurriculum(10, 1280, total_steps=4), "total_steps 4 is shorter"),
        (lambda: ICTCurriculum(0, 10), "s0"),
        (lambda: ECTSchedule(q=1.0), "q"),
        (lambda: ECTSchedule(double_every=0), "double_every"),
        (lambda: ConsistencyTraining(distance="lpips"), "unknown distance"),
        (lambda: EasyConsistencyTuning(huber_c=-1.0), "huber_c"),
        (lambda: ScoreSDE(MLP(2, hidden=8), EDM(), target="edm", loss=ConsistencyTraining()), "two_time true"),
        (lambda: EasyConsistencyTuning(Teacher(GaussianFlowMap(EDM(), MEAN, STD))).fit_started(
            few_step(None).score_model, resumed=False), "has no network"),
        (lambda: EasyConsistencyTuning(Teacher(GaussianFlowMap(VP(), MEAN, STD))).fit_started(
            few_step(None).score_model, resumed=False), "not the student's"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            build()
        assert "\n" not in str(error.value)


# --- a toy model trained with each ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ict", "ect"])
def test_a_toy_model_learns_the_exact_one_jump_map(method):
    """2-D Gaussian data (μ = (1.5, −0.5), s = (0.25, 0.75)), EDM(0.002, 80), MLP 32×2 two-time from scratch (ECT
    too: there is no diffusion model to start from here), Adam 3e-3, batch 256, 1500 steps (iCT: N from 11 to 81;
    ECT: a stage every 300 steps). The 1-jump error is the mean squared distance of X̂_{80→0.002}(z) to the exact
    map's over 1024 prior draws. Measured: 3.48 untrained, 0.225 (6.5 %) after iCT, 0.434 (12.5 %) after ECT, 13 s
    each on one thread (consistency distillation's student reaches 3 % in 400 steps with a teacher): without one,
    consistency reaches σ_max slowly (the log-normal puts 2 % of draws above σ = 20). Tolerance: 20 %."""
    process = EDM()
    torch.manual_seed(0)
    student = FlowMapScore(MLP(2, hidden=32, depth=2, time_embed_dim=16, embedding="fourier", two_time=True),
                           process, target="edm", sigma_data=1.0)
    exact = GaussianFlowMap(process, MEAN, STD)
    data = GaussianMixtureDistribution(MEAN.float()[None], STD.float()[None], torch.ones(1))
    z = process.prior_sample((1024, 2), generator=torch.Generator().manual_seed(5))
    reference = FlowMapSampler(1)(exact, z.double(), process).float()

    def one_jump_error() -> float:
        with torch.no_grad():
            return float(((FlowMapSampler(1)(student, z, process) - reference) ** 2).sum(dim=1).mean())

    loss = (ConsistencyTraining(ICTCurriculum(10, 80, total_steps=1500)) if method == "ict"
            else EasyConsistencyTuning(schedule=ECTSchedule(double_every=300)))
    untrained = one_jump_error()
    train(loss, student, data.sample, 1500)
    trained = one_jump_error()
    assert trained < 0.2 * untrained, (untrained, trained)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ict", "ect"])
def test_a_toy_model_samples_the_mixture_in_one_and_two_jumps(method):
    """The ring of tests/test_shortcut.py (4 Gaussians, radius 2, std 0.2), a two-time MLP 128×3 from scratch on
    EDM(0.002, 80) (target edm, σ_data 1; ECT too: no diffusion model here), Adam 1e-3 decayed on a half cosine over
    8,000 steps (iCT: N from 11 to 1281; ECT: a stage every 1,000 steps), batch 256 (tests/loss_training.py), evaluated
    with an EMA (0.999) of the weights; 1 jump from σ_max and 2 jumps re-noised between them (γ = 1, consistency
    models' multistep sampler). Energy distance of 2,000 samples from 2,000 prior draws to 2,000 data points ÷ the
    floor (0.0011); the run is ``python benchmarks/fewstep_toy_recipes.py ict|ect --lr 1e-3 --cosine --steps 8000``:
    iCT 1 / 2 jumps 5.19 / 6.83× (3.12 / 2.42× at step 6,000), ECT 4.23 / 3.34× (2.90 / 2.63× at step 7,000), about
    90 s of one thread each: the quality moves by 1.5–2× between checkpoints 1,000 steps apart even as the rate
    decays. Not the issue's 2× at one jump. Tolerance: 8× and 10× (step 1,000: iCT 114×, ECT 209× at 1 jump)."""
    process = EDM()
    mixture = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2)
    torch.manual_seed(0)
    model = FlowMapScore(MLP(2, hidden=128, depth=3, two_time=True), process, target="edm", sigma_data=1.0)
    average = copy.deepcopy(model).requires_grad_(False)
    data = mixture.sample(2000, torch.Generator().manual_seed(7))
    floor = float(energy_distance(mixture.sample(2000, torch.Generator().manual_seed(8)), data))
    z = process.prior_sample((2000, 2), generator=torch.Generator().manual_seed(5))
    loss = (ConsistencyTraining(ICTCurriculum(10, 1280, total_steps=8000)) if method == "ict"
            else EasyConsistencyTuning(schedule=ECTSchedule(double_every=1000)))
    for _ in training_steps(loss, model, mixture.sample, 8000, lr=1e-3, lr_factor=cosine_decay(8000)):
        ema_update(average, model, 0.999)
    torch.manual_seed(123)  # the re-noising draw of the second jump
    with torch.no_grad():
        one, two = (float(energy_distance(FlowMapSampler(k, gamma=1.0 if k > 1 else 0.0)(average, z, process), data))
                    / floor for k in (1, 2))
    assert one < 8 and two < 10, (floor, one, two)
