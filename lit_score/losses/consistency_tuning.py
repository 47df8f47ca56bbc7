r"""Easy consistency tuning (ECT: Geng, Pokle, Luo, Lin & Kolter 2024, "Consistency Models Made Easy") on a two-time
model (DESIGN.md §3d): continuous-time consistency training started from a trained diffusion model's weights, with
the gap t − r shrinking on a schedule until the consistency condition holds at all scales.

The consistency function is the flow map to the data end, f_θ(x, t) = X_{t→t_min}(x) (as in
:mod:`lit_score.losses.consistency_training`); ECT's network is EDM's denoiser D(x, σ) itself with the boundary at
σ = 0 (its target there is the clean y); here the boundary is t_min and f(x, t_min) = x holds by construction.

| symbol | meaning |
|---|---|
| σ̃ = σ/α = e^{−λ(t)} | the noise level (σ = t on EDM, ECT's units; other processes: the same formulas in σ̃, times |
| | mapped back by ``process.t_from_log_snr(−log σ̃)``) |
| log σ̃_t ~ N(P_mean, P_std²) | the student's noise level (ECT: P_mean = −1.1, P_std = 2.0, iCT's), clamped to the |
| | process's [σ̃(t_min), σ̃(t_max)] |
| k, d | the optimizer step (0-based) and the steps per stage (``double_every``) |
| a = ⌊k/d⌋ + 1 | the stage: ECT's ⌈iters/d⌉ with iterations counted from 1 (their code: ``stage + 1``) |
| n(σ̃) = 1 + k_n·sigmoid(−b·σ̃) | the mapping's adjustment (ECT's "sigmoid" mapping; k_n = 8, b = 1) |
| σ̃_r = σ̃_t·(1 − n(σ̃_t)/q^a), clamped at σ̃(t_min) | the target's noise level: r/t = 1 − n(t)/q^a (q = 2) |
| x_t = α_t x₀ + σ_t ε, x_r likewise | the marginal at both times with the *same* ε |
| ℓ = d(f_θ(x_t, t), f_{θ⁻}(x_r, r))/(σ̃_t − σ̃_r) | the loss; θ⁻ = stopgrad(θ), the student's own pass with its |
| | dropout mask (:func:`~lit_score.losses.consistency.student_and_target`) |

**Distance.** ECT's code uses √(‖Δ‖² + c²) − c over the whole sample with c = 0 by default (their "adaptive weighting"
with p = ½: the gradient of ‖Δ‖ is that of ‖Δ‖² weighted by 1/(2‖Δ‖)), i.e. per-sample pseudo-Huber with c = 0; this
is the default here (``distance="pseudo_huber"``, ``huber_c=0``; ``huber_c=None`` is iCT's 0.00054·√d, ``l2`` the
mean squared error).

**Samples at t_min.** Where log σ̃_t is clamped to σ̃(t_min) (about 0.5 % of draws on EDM(0.002, 80)), r = t = t_min,
the boundary condition holds exactly and the sample carries no loss (it is masked, not divided by a zero gap). ECT's
code draws σ up to e^{−1.1 + 2·z} without an upper clamp; here σ̃ stops at σ̃(t_max) (0.3 % of draws on EDM).

**Schedule.** :class:`ECTSchedule` is a pure function of the step, in the checkpoint like iCT's curriculum (settings
and the step it saw checked on resume). d counts optimizer steps; ECT's code counts ticks of 12.8 kimg (their
CIFAR-10 run: 250 ticks at batch 128 = 25 000 steps per stage, the default here).

**Start.** ``init_from`` is a :class:`~lit_score.losses.Teacher` (in YAML a
:class:`lit_score.distillation.CheckpointTeacher`) whose network's weights start the two-time student on a fresh fit
(:func:`~lit_score.networks.load_one_time_weights`: the same architecture with ``two_time`` true; the s-branch starts
at zero, so the student begins as the diffusion model's DDIM jump); its solver step is not used. None: ECT's loss
from the student's own initialisation (continuous-time consistency training).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.consistency import Distance, consistency_distance, student_and_target
from lit_score.losses.consistency_training import StepCurriculum, noise_levels
from lit_score.losses.teacher import Teacher
from lit_score.networks.two_time import load_one_time_weights
from lit_score.processes import NoiseProcess
from lit_score.utils import randn_like


class ECTSchedule(StepCurriculum):
    """ECT's mapping σ̃_r = σ̃_t·(1 − n(σ̃_t)/q^a), n(σ̃) = 1 + k·sigmoid(−b·σ̃), a = ⌊step/d⌋ + 1 (module docstring).

    Args:
        q: the factor the gap shrinks by per stage (ECT: 2; their 1-hour run: 256 with one stage).
        k: k of n(σ̃) (ECT: 8).
        b: b of n(σ̃) (ECT: 1).
        double_every: d, the optimizer steps per stage.
    """

    def __init__(self, q: float = 2.0, k: float = 8.0, b: float = 1.0, double_every: int = 25_000) -> None:
        check_number("q", q, gt=1.0)
        check_number("k", k, ge=0.0)
        check_number("b", b, ge=0.0)
        check_number("double_every", double_every, ge=1, integer=True)
        super().__init__()
        self.q, self.k, self.b, self.double_every = float(q), float(k), float(b), int(double_every)

    def settings(self) -> dict:
        return {"q": self.q, "k": self.k, "b": self.b, "double_every": self.double_every}

    def stage(self, step: int | None = None) -> int:
        """a = ⌊step/d⌋ + 1 (default: the step it last saw)."""
        return (self.step if step is None else int(step)) // self.double_every + 1

    def ratio(self, sigma: Tensor, step: int | None = None) -> Tensor:
        """r/t = 1 − n(σ̃)/q^a at noise levels ``sigma`` (unclamped: negative where r falls below zero)."""
        adjustment = 1.0 + self.k * torch.sigmoid(-self.b * sigma)
        return 1.0 - adjustment / self.q ** self.stage(step)


class EasyConsistencyTuning(DiffusionLoss):
    """Easy consistency tuning of a two-time model (module docstring): a per-sample loss (B,).

    Args:
        init_from: the diffusion model whose weights start the student (a :class:`~lit_score.losses.Teacher`; in YAML
            a :class:`lit_score.distillation.CheckpointTeacher`); None: the student's own initialisation.
        schedule: the mapping r(t, k), an :class:`ECTSchedule` (default: ECT's CIFAR-10 settings).
        distance: ``pseudo_huber`` (default, with ``huber_c`` 0: ECT's ‖Δ‖) or ``l2``.
        huber_c: c of ``pseudo_huber`` (ECT: 0; None: 0.00054·√d).
        p_mean, p_std: the log-normal of σ̃_t (ECT: −1.1, 2.0).
    """

    #: the capability it asks of the score model: ``flow_map(x, t, s)`` (a FlowMapScore: a two-time network)
    requires_two_time: bool = True

    def __init__(self, init_from: Teacher | None = None, schedule: ECTSchedule | None = None,
                 distance: Distance = "pseudo_huber", huber_c: float | None = 0.0, p_mean: float = -1.1,
                 p_std: float = 2.0) -> None:
        check_number("huber_c", huber_c, ge=0.0, allow_none=True)
        check_number("p_mean", p_mean)
        check_number("p_std", p_std, gt=0.0)
        if distance not in ("l2", "pseudo_huber"):
            raise ValueError(f"unknown distance {distance!r}: use pseudo_huber or l2")
        self.init_from, self.schedule = init_from, schedule if schedule is not None else ECTSchedule()
        self.distance, self.huber_c = distance, huber_c
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def times(self, process: NoiseProcess, batch: int, generator, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, r, σ̃_t − σ̃_r) (B,) each: t, r in ``like``'s dtype, the gap in float64 (0 where t = t_min)."""
        ends = noise_levels(process, torch.tensor([process.t_min, process.t_max], dtype=torch.float64,
                                                  device=like.device))
        z = torch.randn((batch,), generator=generator, device=like.device, dtype=torch.float64)
        sigma_t = (self.p_mean + self.p_std * z).exp().clamp(ends[0], ends[1])
        sigma_r = (sigma_t * self.schedule.ratio(sigma_t)).clamp_min(ends[0])

        def time(sigma: Tensor) -> Tensor:
            return process.t_from_log_snr(-sigma.log()).clamp(process.t_min, process.t_max).to(like.dtype)

        return time(sigma_t), time(sigma_r), sigma_t - sigma_r

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        t, r, gap = self.times(process, x0.shape[0], generator, x0)
        noise = randn_like(x0, generator)
        x_t, x_r = process.perturb(x0, t, noise), process.perturb(x0, r, noise)
        t_min = torch.full_like(t, process.t_min)
        student, target = student_and_target(lambda: score_model.flow_map(x_t, t, t_min),
                                             lambda: score_model.flow_map(x_r, r, t_min), x0.device)
        live = gap > 0  # t = r = t_min: the boundary condition, no loss (module docstring)
        difference = torch.where(live.view(-1, *[1] * (x0.ndim - 1)), student - target, 1.0)  # no √0 in the graph
        distance = consistency_distance(difference, torch.zeros_like(difference), self.distance, self.huber_c)
        weight = torch.where(live, 1.0 / torch.where(live, gap, 1.0), 0.0)
        return weight.to(distance.dtype) * distance

    def fit_started(self, score_model, resumed: bool) -> None:
        """On a fresh fit start the student from ``init_from``'s weights (never on a resume, whose trained student it
        would overwrite), after checking it was trained on the student's process."""
        if resumed or self.init_from is None:
            return
        process = score_model.process
        self.init_from.check_process(process, process.time_grid(16, "karras"))
        load_one_time_weights(score_model.network, self.init_from.one_time_weights())

    def before_step(self, score_model, step: int) -> None:
        """The schedule follows the global step (the stage a for this batch)."""
        self.schedule.advance(step)

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state.get("schedule", {}))

    def __repr__(self) -> str:
        return (f"EasyConsistencyTuning(init_from={self.init_from!r}, schedule={self.schedule!r},"
                f" distance={self.distance!r}, huber_c={self.huber_c!r})")


__all__ = ["ECTSchedule", "EasyConsistencyTuning"]
