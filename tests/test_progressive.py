"""Progressive distillation (Salimans & Ho 2022, Algorithm 2; issue 25): the target at the exact Gaussian teacher
against the two-step DDIM map solved in closed form here, the rounds curriculum, the round teacher (a copy of the
student), bad input, and a bit-exact resume of a Lightning run mid-round and across a round boundary."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from loss_training import training_steps
from torch.utils.data import DataLoader, TensorDataset

from lit_score.callbacks.resume import ResumeState
from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.losses import ProgressiveDistillation, Teacher
from lit_score.losses.progressive import HalvingRounds, teacher_grid
from lit_score.models import ScoreSDE
from lit_score.networks import MLP
from lit_score.processes import EDM, VP, DiscreteVP, Interpolant
from lit_score.samplers import DDIM, Heun
from lit_score.scores import GaussianFlowMap
from lit_score.scores.function import ScoreFunction
from lit_score.utils import rand

MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)
PROCESSES = [EDM(), VP(), Interpolant(), DiscreteVP(num_timesteps=64)]
IDS = ["edm", "vp", "interpolant", "discrete-vp"]


def exact_teacher(process) -> Teacher:
    return Teacher(GaussianFlowMap(process, MEAN, STD), sampler=DDIM(eta=0.0))


def pd(teacher, **kw) -> ProgressiveDistillation:
    return ProgressiveDistillation(teacher, **{"num_steps": 4, "rounds": 1, "steps_per_round": 10,
                                               "init_from_teacher": False, **kw})


# --- the target at the exact teacher, in closed form ----------------------------------------------------------------
def column(process, t):
    return process.alpha(t)[:, None], process.sigma(t)[:, None]


def exact_ddim(process, x, a, b):
    """One DDIM step a → b (η = 0) with the exact Gaussian x̂₀ = μ + (α_a s²/v_a²)(x − α_a μ), written out here."""
    alpha_a, sigma_a = column(process, a)
    alpha_b, sigma_b = column(process, b)
    x0 = MEAN + alpha_a * STD**2 / (alpha_a**2 * STD**2 + sigma_a**2) * (x - alpha_a * MEAN)
    return alpha_b * x0 + sigma_b * (x - alpha_a * x0) / sigma_a


def two_step_x0(process, x, t, t_mid, t_end):
    """Algorithm 2's x̃ = (z_{t″} − (σ_{t″}/σ_t) z_t)/(α_{t″} − (σ_{t″}/σ_t) α_t) of the exact two-step map."""
    z_end = exact_ddim(process, exact_ddim(process, x, t, t_mid), t_mid, t_end)
    (alpha_t, sigma_t), (alpha_s, sigma_s) = column(process, t), column(process, t_end)
    return (z_end - sigma_s / sigma_t * x) / (alpha_s - sigma_s / sigma_t * alpha_t)


class TargetStudent(ScoreFunction):
    """A student whose x̂₀ at a time t of the student's grid is the closed-form x̃ of the step that starts there."""

    labels = None

    def __init__(self, process, num_steps: int, shift: float = 0.0) -> None:
        self.process, self.num_steps, self.shift = process, num_steps, shift

    def predict(self, x, t):
        grid = teacher_grid(self.process, self.num_steps, None, x)
        j = (grid[::2][None, :] - t[:, None]).abs().argmin(dim=1)
        x0 = two_step_x0(self.process, x, grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]) + self.shift
        alpha, sigma = column(self.process, t)
        return x0, (x - alpha * x0) / sigma

    def __call__(self, x, t):
        return -self.predict(x, t)[1] / column(self.process, t)[1]


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_the_target_at_the_exact_teacher_is_the_two_step_ddim_map_solved_for_one_step(process):
    """The loss's x̃ at every grid step equals the closed form above; one DDIM step of a student with that x̂₀ lands on
    the teacher's two steps to float64 precision; and x̃ is not the teacher's own one-step x̂₀ (it carries the
    teacher's second step)."""
    loss, exact = pd(exact_teacher(process), num_steps=4), GaussianFlowMap(process, MEAN, STD)
    grid = teacher_grid(process, 4, None, torch.zeros(0, dtype=torch.float64))
    x = exact.sample(64, process.t_max, torch.Generator().manual_seed(0))
    for j in range(4):
        t, t_mid, t_end = (torch.full((64,), float(grid[i]), dtype=torch.float64) for i in range(2 * j, 2 * j + 3))
        target = loss.target(exact, x, t, t_mid, t_end)
        assert torch.allclose(target, two_step_x0(process, x, t, t_mid, t_end), rtol=1e-10, atol=1e-10), j
        student_step = DDIM(1, denoise=False).step(TargetStudent(process, 4), process, x, t, t_end)[0]
        teacher_steps = exact_ddim(process, exact_ddim(process, x, t, t_mid), t_mid, t_end)
        assert torch.allclose(student_step, teacher_steps, rtol=1e-10, atol=1e-10), j
        assert (target - exact.predict(x, t)[0]).abs().max() > 1e-4, j


@pytest.mark.parametrize("process", [EDM(), VP()], ids=["edm", "vp"])
def test_the_loss_is_the_truncated_snr_weighted_x0_error(process):
    """Per sample: 0 for the student whose x̂₀ is x̃ (the loss draws t on the student's grid, as the paper's t = i/N);
    w(λ_t)·δ² for one shifted by δ, with w = max(SNR_t, 1) (truncated) or SNR_t + 1, t redrawn here as the loss does."""
    x0 = GaussianFlowMap(process, MEAN, STD).sample(256, process.t_min, torch.Generator().manual_seed(0))
    exact = pd(exact_teacher(process), num_steps=8)
    assert float(exact(TargetStudent(process, 8), x0, torch.Generator().manual_seed(1)).abs().max()) < 1e-9
    generator = torch.Generator().manual_seed(1)
    j = (rand((256,), generator) * 8).long()
    t = teacher_grid(process, 8, None, x0)[2 * j]
    snr = process.alpha(t) ** 2 / process.sigma(t) ** 2
    assert snr.min() < 0.5 and snr.max() > 2  # both branches of the truncation
    for weighting, weight in (("truncated_snr", torch.maximum(snr, torch.ones_like(snr))), ("snr_plus_one", snr + 1)):
        loss = pd(exact_teacher(process), num_steps=8, weighting=weighting)
        value = loss(TargetStudent(process, 8, shift=0.1), x0, torch.Generator().manual_seed(1))
        assert torch.allclose(value, weight * 0.01, rtol=1e-8), weighting


# --- the rounds -------------------------------------------------------------------------------------------------------
def test_each_round_halves_the_students_steps():
    """Algorithm 2: N ← N/2 after each round; round k = ⌊step / steps_per_round⌋ here, the last round kept."""
    rounds = HalvingRounds(num_steps=16, rounds=4, steps_per_round=3)
    expected, n = [], 16
    for round_index in range(4):
        expected += [n] * (3 if round_index < 3 else 8)
        n //= 2
    assert [rounds.num_steps_at(step) for step in range(17)] == expected
    assert rounds.final_steps == 2 and [rounds.steps_of(k) for k in range(4)] == [16, 8, 4, 2]


def small_student(seed: int = 0, process=None) -> ScoreSDE:
    torch.manual_seed(seed)
    return ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8), process or EDM(), target="edm")


def test_from_round_one_the_teacher_is_the_student_frozen_at_the_end_of_the_previous_round():
    student = small_student().score_model
    loss = pd(exact_teacher(student.process), num_steps=8, rounds=3, steps_per_round=2)
    loss.fit_started(student, resumed=False)
    for step in (0, 1):
        loss.before_step(student, step)
        assert loss.round == 0 and loss.teacher_of_round(student) is loss.teacher
    at_boundary = {k: v.clone() for k, v in student.state_dict().items()}
    loss.before_step(student, 2)
    copy_teacher = loss.teacher_of_round(student)
    assert loss.round == 1 and copy_teacher is not loss.teacher
    assert all(not p.requires_grad for p in copy_teacher.module.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # training moves the student, not the round's teacher
    loss.before_step(student, 3)
    assert all(torch.equal(v, at_boundary[k]) for k, v in copy_teacher.module.state_dict().items())
    x, t = torch.randn(5, 2), torch.full((5,), 3.0)
    s = torch.full((5,), 1.0)
    ddim = DDIM(1, denoise=False)
    frozen = small_student().score_model  # the same initial weights as the student at the boundary
    assert torch.allclose(copy_teacher.step(x, t, s), ddim.step(frozen, frozen.process, x, t, s)[0], atol=1e-6)
    assert loss.num_steps_at(3) == 4 and loss.sampler(1).num_steps == 4 and loss.sampler().num_steps == 2
    assert not loss.sampler().denoise  # the student's last step ends at t_min, as trained
    assert torch.allclose(loss.sampler(0).grid(student.process, torch.device("cpu")),
                          teacher_grid(student.process, 8, None, torch.zeros(0, dtype=torch.float64))[::2])


# --- bad input --------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_in_one_line():
    teacher = exact_teacher(EDM())
    for kwargs, message in (({"num_steps": 12, "rounds": 4}, "does not halve 3 times: use a multiple of 8"),
                            ({"num_steps": 8, "rounds": 5}, "below one step: use at most 4 rounds"),
                            ({"weighting": "snr"}, "unknown weighting"), ({"steps_per_round": 0}, "steps_per_round")):
        with pytest.raises(ValueError, match=message):
            pd(teacher, **kwargs)
    with pytest.raises(ValueError, match="not the student's"):
        pd(teacher)(small_student(process=VP()).score_model, torch.randn(4, 2))
    with pytest.raises(ValueError, match="does not nest"):  # a DDPM chain of 8 steps cannot take a teacher of 16
        pd(exact_teacher(DiscreteVP(num_timesteps=8)), num_steps=8)(GaussianFlowMap(DiscreteVP(num_timesteps=8)),
                                                                     torch.randn(4, 2))
    eps_student = ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8), EDM(), target="eps").score_model
    with pytest.warns(UserWarning, match="'eps'-predicting student"):  # allowed (a DDPM teacher's), with the caveat
        pd(teacher).fit_started(eps_student, resumed=False)
    wide = ScoreSDE(MLP(2, hidden=32, depth=1, time_embed_dim=8), EDM(), target="edm")
    with pytest.raises(ValueError, match="do not fit the student's MLP"):
        ProgressiveDistillation(Teacher(wide.score_model, network=wide.network, sampler=DDIM()),
                                ).fit_started(small_student().score_model, resumed=False)


# --- resume -----------------------------------------------------------------------------------------------------------
class Mixture(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.x = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2).sample(96, torch.Generator().manual_seed(0))

    def train_dataloader(self):  # its own generator (see tests/test_distillation.py)
        return DataLoader(TensorDataset(self.x), batch_size=32, shuffle=False, generator=torch.Generator())


def distilled(teacher: ScoreSDE, steps_per_round: int) -> ScoreSDE:
    loss = ProgressiveDistillation(Teacher(teacher.score_model, network=teacher.network, sampler=DDIM()),
                                   num_steps=4, rounds=3, steps_per_round=steps_per_round)
    return ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8), EDM(), target="edm", loss=loss,
                    optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))


def trainer(tmp_path, epochs: int) -> pl.Trainer:
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[checkpoint, ResumeState()], num_sanity_val_steps=0)


@pytest.mark.parametrize("steps_per_round", [2, 3], ids=["mid-round", "at-a-boundary"])
def test_resume_is_bit_exact_mid_round_and_across_a_round_boundary(tmp_path, steps_per_round):
    """2 epochs × 3 steps against 1 epoch resumed for the second. With 2 steps per round the checkpoint (step 3) is in
    round 1, holding its teacher, and the resumed run crosses into round 2 at step 4; with 3 it is written at the end
    of round 0, and the resumed run makes round 1's teacher from the restored student at step 3."""
    teacher = small_student(0)
    pl.seed_everything(0)
    full = distilled(teacher, steps_per_round)
    trainer(tmp_path / "full", 2).fit(full, datamodule=Mixture())
    assert not all(torch.equal(v, teacher.network.state_dict()[k]) for k, v in full.network.state_dict().items())

    pl.seed_everything(0)
    first = distilled(teacher, steps_per_round)
    trainer(tmp_path / "first", 1).fit(first, datamodule=Mixture())
    ckpt = next((tmp_path / "first").glob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)["lit_score_loss"]
    assert saved["round"] == {2: 1, 3: 0}[steps_per_round] and ("teacher" in saved) == (saved["round"] > 0)
    pl.seed_everything(123)  # the resumed run restores every RNG stream itself
    resumed = distilled(teacher, steps_per_round)
    trainer(tmp_path / "resumed", 2).fit(resumed, datamodule=Mixture(), ckpt_path=ckpt)

    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = full.loss.state_dict(), resumed.loss.state_dict()
    assert a["round"] == b["round"] == 5 // steps_per_round
    assert all(torch.equal(v, b["teacher"][k]) for k, v in a["teacher"].items())
    assert not all(torch.equal(v, full.score_model.state_dict()[k]) for k, v in a["teacher"].items())


# --- a toy student on the exact mixture score -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_toy_student_distils_the_exact_mixture_teacher_to_one_and_two_steps():
    """MLP student trained from scratch (the exact score has no weights to start from) on the 2-D ring mixture (4
    components, radius 2), EDM process, rounds 4 → 2 → 1 student steps (the exact teacher takes 8 DDIM steps in round
    0), 600 steps a round (Adam 3e-3, batch 256; 24 s on one busy CPU thread). The error of N-step sampling is the
    mean squared distance to the teacher's ODE sample from the same prior draw (Heun, 40 steps), over 512 draws.
    Measured after rounds 0 / 1 / 2: the student's DDIM at 4 / 2 / 1 NFE 0.137 / 0.139 / 0.140, the teacher's own DDIM
    at the same NFE 0.44 / 1.55 / 3.92: halving the steps costs the student almost nothing, while the teacher's error
    grows ~3× per halving. Asserted: each round's student beats the teacher's DDIM at its NFE by 2× (1 NFE: 10×), and
    the 1-step student is within 1.5× of the round-0 (4-step) one."""
    torch.manual_seed(0)
    process = EDM()
    mixture = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2)
    teacher = Teacher(mixture.noised(process), process, sampler=DDIM())
    student = ScoreSDE(MLP(2, hidden=64, depth=2, embedding="fourier"), process, target="edm", sigma_data=1.0)
    student = student.score_model
    z = process.prior_sample((512, 2), generator=torch.Generator().manual_seed(5))
    reference = Heun(num_steps=41, denoise=False)(teacher.score_model, z, process)

    def error(score_model, sampler) -> float:
        with torch.no_grad():
            return float(((sampler(score_model, z, process) - reference) ** 2).sum(dim=1).mean())

    loss = ProgressiveDistillation(teacher, num_steps=4, rounds=3, steps_per_round=600, init_from_teacher=False)
    loss.fit_started(student, resumed=False)
    errors = {}
    for done in training_steps(loss, student, mixture.sample, 1800):
        if done % 600 == 0:
            sampler = loss.sampler(loss.round)
            errors[sampler.num_steps] = (error(student, sampler), error(teacher.score_model, sampler))
    for n, (distilled, ddim) in errors.items():
        assert distilled < 0.5 * ddim, (n, errors)
    assert errors[1][0] < 0.1 * errors[1][1] and errors[1][0] < 1.5 * errors[4][0], errors
