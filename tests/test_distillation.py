"""Consistency distillation (DESIGN.md §3d, issue 25): the loss at the exact Gaussian flow map, its convergence with
the teacher's grid, the per-sample pseudo-Huber distance, the target network's EMA, a toy student trained on the exact
mixture score, and a bit-exact resume of a Lightning run (the target network included)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from loss_training import train
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lit_score.callbacks.resume import ResumeState
from lit_score.cli import load_model
from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.distillation import CheckpointTeacher
from lit_score.loading import CheckpointError, check_hyperparameters
from lit_score.losses import ConsistencyDistillation, DenoisingLoss, Teacher
from lit_score.losses.consistency import consistency_distance, interval_times, pseudo_huber_constant
from lit_score.models import GenerativeModule, ScoreSDE
from lit_score.networks import MLP
from lit_score.processes import EDM, VP, DiscreteVP, Interpolant
from lit_score.samplers import DDIM, DPMSolver, EDMHeun, FlowMapSampler, Heun
from lit_score.scores import FlowMapScore, GaussianFlowMap
from lit_score.utils import randn_like

MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)


def cd(teacher, **kw) -> ConsistencyDistillation:
    return ConsistencyDistillation(teacher, **{"ema_rate": 0.0, "init_from_teacher": False, **kw})


def carried_step_error(exact, process, x0: Tensor) -> Tensor:
    """(slope · step error)² per sample: the teacher's Heun step error on ``cd(num_scales=12)``'s draws (seed 1, in
    the loss's order) carried to t_min by the exact map's affine slope v_min/v_s — the l2 loss at the exact map."""
    generator = torch.Generator().manual_seed(1)
    t, s = interval_times(process, 12, 7.0, x0.shape[0], generator, x0)
    x_t = process.perturb(x0, t, randn_like(x0, generator))
    step_error = exact.flow_map(x_t, t, s) - Heun(2, denoise=False).step(exact, process, x_t, t, s)[0]
    t_min = torch.full_like(t, process.t_min)
    slope = exact.flow_map(torch.ones_like(x_t), s, t_min) - exact.flow_map(torch.zeros_like(x_t), s, t_min)
    return ((slope * step_error) ** 2).mean(dim=1)


# --- the loss at the exact map ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", [EDM(), VP(), Interpolant(), DiscreteVP(num_timesteps=50)],
                         ids=["edm", "vp", "interpolant", "discrete-vp"])
def test_at_the_exact_map_the_loss_is_the_teachers_step_error(process):
    """Student = the exact map: f(x_t, t) − f(Φ, s) = (v_min/v_s)(X_{t→s}(x_t) − Φ), so the l2 loss is exactly the
    teacher's step error carried to t_min (X_{s→t_min} is affine with slope v_min/v_s)."""
    exact = GaussianFlowMap(process, MEAN, STD)
    x0 = exact.sample(512, process.t_min, torch.Generator().manual_seed(0))
    loss = cd(Teacher(exact), num_scales=12)(exact, x0, torch.Generator().manual_seed(1))

    assert torch.allclose(loss, carried_step_error(exact, process, x0), rtol=1e-9, atol=1e-15)
    assert float(loss.mean()) < 1e-3


@pytest.mark.parametrize("process", [EDM(), VP()], ids=["edm", "vp"])
def test_the_loss_at_the_exact_map_vanishes_as_the_sixth_power_of_the_step(process):
    """Heun is 2nd order: its local error is O(h³), the l2 loss its square, O(h⁶); on the Karras grid every interval
    shrinks as 1/N, so doubling N divides the loss by ≈ 2⁶ = 64 (measured 72 for 40 → 80 on EDM and VP)."""
    exact = GaussianFlowMap(process, MEAN, STD)
    x0 = exact.sample(2000, process.t_min, torch.Generator().manual_seed(0))
    losses = [float(cd(Teacher(exact), num_scales=n)(exact, x0, torch.Generator().manual_seed(1)).mean())
              for n in (20, 40, 80)]
    assert losses[2] < 1e-8
    for coarse, fine in zip(losses, losses[1:]):
        assert 50 < coarse / fine < 110


@pytest.mark.parametrize("process", [EDM(), VP()], ids=["edm", "vp"])
@pytest.mark.parametrize(("solver", "order"), [
    (Heun(2, denoise=False), 2), (EDMHeun(2, denoise=False), 2), (DDIM(2, denoise=False), 1),
    (DPMSolver(1, order=1, multistep=False), 1), (DPMSolver(2, order=2, multistep=False), 2),
    (DPMSolver(3, order=3, multistep=False), 3)], ids=["heun", "edm-heun", "ddim", "dpm1", "dpm2", "dpm3"])
def test_every_teacher_solver_takes_one_step_of_its_order(process, solver, order):
    """A teacher's step Φ(x, t, s) against the exact Gaussian map: local error O(h^{p+1}), so halving the step (in λ)
    divides it by 2^{p+1} (the window allows ±40 %); on EDM, EDMHeun's step is Heun's (σ̃ = σ = t, x̃ = x)."""
    exact = GaussianFlowMap(process, MEAN, STD)
    teacher = Teacher(exact, sampler=solver)
    x0 = exact.sample(64, process.t_min, torch.Generator().manual_seed(0))
    lam_t = torch.full((64,), -1.0, dtype=torch.float64)  # σ̃ = e
    t = process.t_from_log_snr(lam_t)
    x_t = process.perturb(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype))
    errors = []
    for h in (0.4, 0.2, 0.1):
        s = process.t_from_log_snr(lam_t + h)
        errors.append(float((teacher.step(x_t, t, s) - exact.flow_map(x_t, t, s)).abs().max()))
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.6 * 2 ** (order + 1) < coarse / fine < 1.4 * 2 ** (order + 1), errors
    if isinstance(solver, EDMHeun) and isinstance(process, EDM):
        s = process.t_from_log_snr(lam_t + 0.3)
        assert torch.allclose(teacher.step(x_t, t, s), Teacher(exact).step(x_t, t, s), rtol=1e-12, atol=1e-14)


class ClassGaussians:
    """Class-conditional exact teacher: class c is N(μ_c, diag(s²)) (μ_c = MEANS[c]); ``with_condition(labels)`` is
    the exact flow map of each sample's own class (GaussianFlowMap with a per-sample mean), carrying its labels."""

    two_time, labels = True, None
    MEANS = torch.stack([MEAN, -MEAN, torch.tensor([0.0, 2.0], dtype=torch.float64)])

    def __init__(self, process) -> None:
        self.process = process

    def with_condition(self, labels: Tensor) -> GaussianFlowMap:
        conditioned = GaussianFlowMap(self.process, self.MEANS[labels], STD)
        conditioned.labels = labels
        return conditioned


@pytest.mark.parametrize("process", [EDM(), VP()], ids=["edm", "vp"])
def test_a_class_conditional_teacher_steps_with_the_students_labels(process):
    """Conditional CD: the teacher's step and the target are conditioned on the student's labels. A student that is
    the exact map of each sample's class has only the teacher's step error (derived as in the unconditional test:
    slope × step error of the class's own map), while the same student fed other classes' labels pays the distance
    between the classes' maps (orders of magnitude more)."""
    teacher = ClassGaussians(process)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (512,), generator=generator)
    x0 = ClassGaussians.MEANS[labels] + STD * torch.randn(512, 2, generator=generator, dtype=torch.float64)
    student = teacher.with_condition(labels)
    loss = cd(Teacher(teacher), num_scales=12)(student, x0, torch.Generator().manual_seed(1))

    assert torch.allclose(loss, carried_step_error(student, process, x0), rtol=1e-9, atol=1e-15)
    assert float(loss.mean()) < 1e-3

    wrong = teacher.with_condition((labels + 1) % 3)
    wrong.labels = labels  # the teacher is told the data's classes, the student jumps to other classes' maps
    assert float(cd(Teacher(teacher), num_scales=12)(wrong, x0, torch.Generator().manual_seed(1)).mean()) > 100 * float(
        loss.mean())


def test_a_teacher_refuses_a_step_that_is_not_one_deterministic_ode_step():
    exact = GaussianFlowMap(EDM(), MEAN, STD)
    for solver in (DPMSolver(4, multistep=True), EDMHeun(4, S_churn=1.0), DDIM(4, eta=0.5)):
        with pytest.raises(ValueError, match="one deterministic probability-flow step"):
            Teacher(exact, sampler=solver)


def test_a_student_away_from_the_exact_map_gets_a_gradient():
    process = EDM()
    exact = GaussianFlowMap(process, MEAN, STD)
    shift = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    student = GaussianFlowMap(process, MEAN + 0.3 + shift, STD)
    x0 = exact.sample(256, process.t_min, torch.Generator().manual_seed(0))
    loss = cd(Teacher(exact), num_scales=40)(student, x0, torch.Generator().manual_seed(1)).mean()
    loss.backward()
    exact_loss = cd(Teacher(exact), num_scales=40)(exact, x0, torch.Generator().manual_seed(1)).mean()
    assert float(exact_loss) < 0.01 * float(loss.detach())  # the shift, not the teacher's step error, makes this loss
    assert float(shift.grad.min()) > 1e-4  # descent moves the mean back towards μ


# --- the distance -----------------------------------------------------------------------------------------------------
def test_pseudo_huber_is_per_sample():
    a, b = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(2, 2)
    d = consistency_distance(a, b, "pseudo_huber", c=1.0)
    assert torch.allclose(d, torch.tensor([math.sqrt(26) - 1, 0.0]))  # √(‖a − b‖² + c²) − c of the whole sample
    per_element = (math.sqrt(9 + 1) - 1) + (math.sqrt(16 + 1) - 1)
    assert abs(float(d[0]) - per_element) > 0.5
    assert pseudo_huber_constant(3 * 32 * 32) == pytest.approx(0.03, rel=0.01)  # iCT's c on CIFAR-10
    big = torch.tensor([[30.0, 40.0]])
    assert float(consistency_distance(big, torch.zeros(1, 2), "pseudo_huber")) == pytest.approx(
        50 - pseudo_huber_constant(2), rel=1e-6)  # linear in ‖a − b‖ far out (robust)
    assert torch.allclose(consistency_distance(a, b, "l2"), torch.tensor([12.5, 0.0]))  # mean of squares


# --- the target network ----------------------------------------------------------------------------------------------
def two_time_student(seed: int = 0, process=None) -> FlowMapScore:
    torch.manual_seed(seed)
    net = MLP(2, hidden=32, depth=2, time_embed_dim=16, embedding="fourier", two_time=True)
    return FlowMapScore(net, process or EDM(), target="edm", sigma_data=1.0)


def test_the_target_network_follows_the_student_by_ema_once_per_optimizer_step():
    student = two_time_student()
    loss = cd(Teacher(GaussianFlowMap(student.process, MEAN, STD)), ema_rate=0.9)
    loss.fit_started(student, resumed=False)
    target = loss.target
    assert target is not None and all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    loss.before_step(student, 0)  # no optimizer step yet
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), before))
    loss.before_step(student, 1)
    for old, new, theta in zip(before, target.parameters(), student.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * theta, atol=1e-7)
    after = [p.clone() for p in target.parameters()]
    loss.before_step(student, 1)  # another micro-batch of the same optimizer step (gradient accumulation)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), after))
    assert loss.state_dict()["target_step"] == 1


@pytest.mark.parametrize("ema_rate", [0.0, 0.9])
def test_the_target_runs_in_the_students_mode_with_its_dropout_mask(ema_rate):
    """consistency models' ``consistency_losses``: the target model in train mode, the RNG state of the student's
    dropout restored before the target's pass. A forward hook drops half of the network's output (copied into θ⁻)."""
    student = two_time_student().train()
    masks = []

    def dropout(module, args, output):
        kept = torch.nn.functional.dropout(torch.ones_like(output), 0.5, training=module.training)
        masks.append(kept)
        return output * kept

    student.network.register_forward_hook(dropout)
    loss = cd(Teacher(GaussianFlowMap(student.process, MEAN, STD)), ema_rate=ema_rate)
    loss(student, torch.randn(64, 2))
    assert len(masks) == 2 and (masks[0] == 0).any() and torch.equal(masks[0], masks[1])
    assert ema_rate == 0 or loss.target is not student


def test_one_time_networks_and_foreign_processes_are_refused():
    teacher = Teacher(GaussianFlowMap(EDM(), MEAN, STD))
    with pytest.raises(ValueError, match="two_time true"):
        ScoreSDE(MLP(2, hidden=8), EDM(), target="edm", loss=cd(teacher))
    with pytest.raises(ValueError, match="not the student's"):
        cd(teacher)(two_time_student(process=VP()), torch.randn(4, 2))
    with pytest.raises(ValueError, match="one deterministic probability-flow step"):
        Teacher(GaussianFlowMap(EDM(), MEAN, STD), sampler=DDIM(eta=1.0))
    with pytest.raises(ValueError, match="has no network"):
        ConsistencyDistillation(teacher).fit_started(two_time_student(), resumed=False)
    with pytest.raises(Exception, match="does not exist"):
        CheckpointTeacher("no/such.ckpt").step(torch.randn(2, 2), torch.ones(2), torch.ones(2) / 2)
    assert ScoreSDE(two_time_student().network, EDM(), target="edm").score_model.two_time


# --- a toy student on the exact mixture score -------------------------------------------------------------------------
def test_a_toy_student_learns_the_teachers_one_jump_map():
    """MLP student, 2-D ring mixture (4 components, radius 2), teacher = the exact mixture score with Heun steps on
    EDM's process (σ ∈ [0.002, 80]). The 1-jump error is the mean squared distance between X̂_{t_max→t_min}(z) and the
    teacher's ODE sample from the same z (Heun, 40 steps; 1.3e-5 from 80 steps), over 512 prior draws. Measured: 3.66
    untrained, 0.122 after 400 steps (Adam 3e-3, batch 256, N = 18, μ = 0.9; 3.5 s on one CPU thread; 0.047 after
    1000). The teacher's own solvers from the same z: DDIM 3.92 at 1 NFE, 1.55 at 2, 0.44 at 4; Heun 55.7 at 2 NFE."""
    process = EDM()
    mixture = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2)
    teacher = Teacher(mixture.noised(process), process)
    student = two_time_student(0, process)
    z = process.prior_sample((512, 2), generator=torch.Generator().manual_seed(5))
    reference = Heun(num_steps=41, denoise=False)(teacher.score_model, z, process)

    def one_jump_error() -> float:
        with torch.no_grad():
            return float(((FlowMapSampler(1)(student, z, process) - reference) ** 2).sum(dim=1).mean())

    untrained = one_jump_error()
    loss = ConsistencyDistillation(teacher, num_scales=18, ema_rate=0.9, init_from_teacher=False)
    loss.fit_started(student, resumed=False)
    train(loss, student, mixture.sample, 400)
    trained = one_jump_error()
    ddim = float(((DDIM(num_steps=4, denoise=False)(teacher.score_model, z, process) - reference) ** 2).sum(1).mean())
    assert untrained > 2 and trained < 0.1 * untrained, (untrained, trained)
    assert trained < 0.5 * ddim, (trained, ddim)  # 1 NFE of the student beats 4 NFE of the teacher's DDIM


# --- resume -----------------------------------------------------------------------------------------------------------
class Mixture(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.x = GaussianMixtureDistribution.ring(k=4, radius=2.0, std=0.2).sample(96, torch.Generator().manual_seed(0))

    def train_dataloader(self):
        # its own generator: a loader without one draws its seed from the global stream when an epoch starts, which a
        # resumed run (its streams restored at on_train_start, after the loader began) would see one draw early
        return DataLoader(TensorDataset(self.x), batch_size=32, shuffle=False, generator=torch.Generator())


def distilled(teacher: ScoreSDE, ema_rate: float = 0.5) -> ScoreSDE:
    student = ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8, two_time=True), EDM(), target="edm",
                       loss=ConsistencyDistillation(Teacher(teacher.score_model, network=teacher.network),
                                                    num_scales=6, ema_rate=ema_rate, distance="pseudo_huber"),
                       optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    return student


def trainer(tmp_path, epochs: int) -> pl.Trainer:
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[checkpoint, ResumeState()], num_sanity_val_steps=0)


@pytest.mark.parametrize("ema_rate", [0.5, 0.0])
def test_resume_is_bit_exact_with_the_target_network(tmp_path, ema_rate):
    """A CD run of 2 epochs × 3 steps against one stopped after epoch 1 and resumed from its checkpoint: the student,
    θ⁻ and the step θ⁻ follows are identical. The student starts from the teacher's weights (a one-time MLP of the same
    arguments) on the fresh run only: with μ = 0 (θ⁻ is θ, nothing of it saved) a resume that re-initialised from the
    teacher would lose the trained student."""
    torch.manual_seed(0)
    teacher = ScoreSDE(MLP(2, hidden=16, depth=1, time_embed_dim=8), EDM(), target="edm")
    pl.seed_everything(0)
    full = distilled(teacher, ema_rate)
    assert full.score_model.two_time
    trainer(tmp_path / "full", 2).fit(full, datamodule=Mixture())
    shared = {k: v for k, v in full.network.state_dict().items() if not k.startswith("target_time_embed")}
    assert not all(torch.equal(v, teacher.network.state_dict()[k]) for k, v in shared.items())  # it trained

    pl.seed_everything(0)
    first = distilled(teacher, ema_rate)
    trainer(tmp_path / "first", 1).fit(first, datamodule=Mixture())
    pl.seed_everything(123)  # the resumed run restores every RNG stream itself
    resumed = distilled(teacher, ema_rate)
    ckpt = next((tmp_path / "first").glob("*.ckpt"))
    if ema_rate:
        assert torch.load(ckpt, weights_only=True)["lit_score_loss"]["target_step"] == 2  # one update behind step 3
    trainer(tmp_path / "resumed", 2).fit(resumed, datamodule=Mixture(), ckpt_path=ckpt)
    assert_resumed_exactly(full, resumed, ema_rate)


def assert_resumed_exactly(full, resumed, ema_rate: float) -> None:
    """The 5-step run ``full`` and the 3 + 2-step ``resumed`` one hold the same weights and, with an EMA target
    network (``ema_rate`` > 0), the same θ⁻ at target step 5, which differs from θ (consistency distillation and the
    shortcut loss share the target network)."""
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    if not ema_rate:
        return
    a, b = full.loss.state_dict(), resumed.loss.state_dict()
    assert a["target_step"] == b["target_step"] == 5
    assert all(torch.equal(v, b["target"][k]) for k, v in a["target"].items())
    assert not all(torch.equal(v, full.score_model.state_dict()[k]) for k, v in a["target"].items())  # θ⁻ ≠ θ


def test_denoising_loss_keeps_the_one_time_model():
    model = ScoreSDE(MLP(2, hidden=8), EDM(), target="edm", loss=DenoisingLoss())
    assert not isinstance(model.score_model, FlowMapScore)


# --- a teacher from a checkpoint --------------------------------------------------------------------------------------
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_redesign"


def test_a_checkpoint_teacher_is_the_frozen_model_of_the_checkpoint_with_its_ema_weights(tmp_path):
    """The EDM toy fixture (ScoreSDE, EDM process, MLP 128×3 Fourier): its Heun step, frozen; EMA weights by default
    where the checkpoint holds them (``auto``), the training weights with ``raw``; an EBM refused in one line."""
    model = load_model(FIXTURES / "edm.ckpt")
    teacher = CheckpointTeacher(str(FIXTURES / "edm.ckpt"))
    x, t = torch.randn(6, 2), torch.full((6,), 3.0)
    s = torch.full((6,), 1.0)
    expected = Heun(2, denoise=False).step(model.score_model, model.process, x, t, s)[0]
    assert torch.equal(teacher.step(x, t, s), expected)
    assert not any(p.requires_grad for p in teacher.network.parameters()) and not teacher.module.training
    assert copy.deepcopy(teacher) is teacher  # frozen: a copied student (the EMA callback's average) shares it

    ckpt = torch.load(FIXTURES / "edm.ckpt", weights_only=True)  # an EMA run: the average in state_dict
    ckpt["current_model_state"] = {k: v + 0.01 for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "ema.ckpt")
    key = "score_model.network.inp.weight"
    for weights, shift in (("auto", 0.0), ("ema", 0.0), ("raw", 0.01)):
        loaded = CheckpointTeacher(str(tmp_path / "ema.ckpt"), weights=weights)
        loaded.step(x, t, s)
        assert torch.allclose(loaded.module.state_dict()[key], ckpt["state_dict"][key] + shift), weights
    with pytest.raises(ValueError, match="no EMA weights"):
        CheckpointTeacher(str(FIXTURES / "edm.ckpt"), weights="ema").step(x, t, s)
    with pytest.raises(CheckpointError, match="is not a DiffusionModule"):
        CheckpointTeacher(str(FIXTURES / "ebm.ckpt")).step(x, t, s)


def test_the_student_starts_from_the_teachers_weights_and_the_config_tree_passes_the_loading_checks():
    teacher = CheckpointTeacher(str(FIXTURES / "edm.ckpt"), sampler=DDIM(eta=0.0))
    network = MLP(2, hidden=128, depth=3, embedding="fourier", two_time=True)
    student = ScoreSDE(network, EDM(), target="edm", sigma_data=1.0, loss=ConsistencyDistillation(teacher))
    student.loss.fit_started(student.score_model, 0)  # what DiffusionModule.on_fit_start does on a fresh run
    x, t = torch.randn(6, 2), torch.full((6,), 3.0)
    with torch.no_grad():  # the zero s-branch: the teacher's denoiser at every s, its DDIM step as the jump
        assert torch.equal(student.score_model.denoise(x, t, t / 3), teacher.score_model.denoise(x, t))
        jump = student.score_model.flow_map(x, t, t / 3)
    assert torch.allclose(jump, teacher.step(x, t, t / 3), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(student.loss.target.parameters(), student.score_model.parameters()))

    tree = {"_class_path": "lit_score.models.ScoreSDE", "network": {"class_path": "lit_score.networks.MLP"},
            "loss": {"class_path": "lit_score.losses.ConsistencyDistillation", "init_args": {
                "teacher": {"class_path": "lit_score.distillation.CheckpointTeacher", "init_args": {
                    "checkpoint": "t.ckpt", "sampler": {"class_path": "lit_score.samplers.Heun"}}}}}}
    assert check_hyperparameters(tree, GenerativeModule, "test") is ScoreSDE
    tree["loss"]["init_args"]["teacher"]["init_args"]["sampler"]["class_path"] = "lit_score.samplers.EulerMaruyama"
    with pytest.raises(CheckpointError, match="is not a Heun or Euler or DDIM"):
        check_hyperparameters(tree, GenerativeModule, "test")
