r"""The teacher of a distillation: a frozen score model and one step of a probability-flow ODE solver (DESIGN.md §3d).

A few-step method learns to reproduce what a trained model's ODE solver does over an interval; the teacher is that
solver step, Φ(x_t, t, s) ≈ X_{t→s}(x_t), with per-sample times:

| symbol | meaning |
|---|---|
| x_t | a point at time t (B, ...) |
| t, s ≤ t | per-sample start and end times (B,), in the process's own units |
| Φ(x_t, t, s) | one step t → s of the teacher's solver: Heun (2nd order, 2 NFE, the default: consistency |
| | distillation's choice, Song et al. 2023, Sec. 6), Euler (1 NFE), DDIM with η = 0 (1 NFE), EDMHeun without |
| | churn (Heun in σ̃ = σ/α, x̃ = x/α: 2 NFE) or singlestep DPMSolver of order k (k NFE) |

Heun in lit-score steps in the process's time t (:func:`~lit_score.samplers.ode.heun_step`); on the EDM process
(σ = t, α = 1) that is EDM's and consistency models' Heun step in σ exactly. Its local error is O(h³) per step
(h = t − s): the distance between Φ and the exact map shrinks as (t − s)³ on a refined grid.

:class:`Teacher` wraps a score model in memory (an exact mixture or Gaussian score in tests, a trained
:class:`~lit_score.scores.NetworkScore`); :class:`lit_score.distillation.CheckpointTeacher` builds one from any
lit-score checkpoint with a noise process (its EMA weights by default). The score model is frozen: every parameter
has ``requires_grad`` False, a module is put in eval mode, and the step runs under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lit_score.processes import NoiseProcess
from lit_score.samplers import DDIM, DPMSolver, EDMHeun, Euler, Heun
from lit_score.samplers.base import ScoreFn

#: the solvers a teacher steps with: one deterministic step t → s with per-sample times (their ``ode_step``)
TeacherSolver = Heun | Euler | DDIM | EDMHeun | DPMSolver


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with ``requires_grad`` False on every parameter."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class Teacher:
    """A frozen score model and one ODE solver step Φ(x, t, s) (module docstring).

    Args:
        score_model: the teacher's score function (``score_fn(x, t)``; ``predict`` / ``velocity`` are used when it
            offers them, as every sampler does). An ``nn.Module`` is frozen.
        process: the noise process it was trained on (default: ``score_model.process``).
        sampler: the step: :class:`~lit_score.samplers.Heun` (default), :class:`~lit_score.samplers.Euler`,
            :class:`~lit_score.samplers.DDIM` with η = 0, :class:`~lit_score.samplers.EDMHeun` without churn or
            :class:`~lit_score.samplers.DPMSolver` with ``multistep`` False (their ``ode_step``: one deterministic
            probability-flow step).
        network: the trained network behind ``score_model``, whose weights a two-time student can start from
            (:meth:`one_time_weights`); None when there is none (an exact score).
    """

    def __init__(self, score_model: ScoreFn, process: NoiseProcess | None = None,
                 sampler: TeacherSolver | None = None, network: nn.Module | None = None) -> None:
        self.sampler = check_solver(sampler)
        self.score_model, self.network = score_model, network
        self.process = process if process is not None else score_model.process
        # torch's type: a trained model to freeze and move with the batch (an exact score has no weights)
        self.module = freeze(score_model) if isinstance(score_model, nn.Module) else None

    def model(self, device: torch.device | None = None) -> tuple[ScoreFn, NoiseProcess]:
        """(score model, process), moved to ``device`` when it is a module (None: where it is)."""
        if device is not None and self.module is not None:
            self.module.to(device)
        return self.score_model, self.process

    @torch.no_grad()
    def step(self, x: Tensor, t: Tensor, s: Tensor, labels: Tensor | None = None) -> Tensor:
        """Φ(x, t, s): one solver step from t to s ≤ t (t, s (B,)), conditioned on class ``labels`` when given."""
        score_model, process = self.model(x.device)
        if labels is not None:
            score_model = score_model.with_condition(labels)
        return self.sampler.flow_step(score_model, process, x, t.to(x.dtype), s.to(x.dtype))

    def check_process(self, process: NoiseProcess, times: Tensor) -> None:
        """Refuse, in one line, a student ``process`` whose α, σ differ from the teacher's at ``times`` (a student's
        grid): the times of a teacher step would not mean the same noise level."""
        teacher_process = self.model(process.device)[1]
        ours = torch.stack([process.alpha(times), process.sigma(times)])
        theirs = torch.stack([teacher_process.alpha(times), teacher_process.sigma(times)]).to(ours)
        if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7):
            raise ValueError(f"the teacher's process ({teacher_process!r}) is not the student's ({process!r}): build"
                             " the student with the teacher's process")

    def one_time_weights(self) -> Mapping[str, Tensor]:
        """The teacher network's weights (what :func:`~lit_score.networks.load_one_time_weights` starts a two-time
        student from); refused in one line for a teacher without a network."""
        self.model()
        if self.network is None:
            raise ValueError("this teacher has no network (an exact score): a student cannot start from its weights;"
                             " set init_from_teacher false")
        return self.network.state_dict()

    def __deepcopy__(self, memo: dict) -> Teacher:
        """The teacher itself: it is frozen, so a copy of its student (the EMA callback's ``AveragedModel`` copies the
        whole module, loss included) shares it instead of holding a second teacher."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sampler={self.sampler!r})"


def check_solver(sampler: TeacherSolver | None) -> TeacherSolver:
    """The teacher's solver (Heun when None), refused in one line unless it is a deterministic PF-ODE step."""
    sampler = sampler if sampler is not None else Heun(num_steps=1, denoise=False)
    if not sampler.ode_step:
        raise ValueError(f"the teacher's step must be one deterministic probability-flow step: {sampler!r} adds noise,"
                         " thresholds or keeps a multistep history (use Heun, Euler, DDIM with eta 0, EDMHeun with"
                         " S_churn 0 or DPMSolver with multistep false, without clip_denoised or thresholding)")
    return sampler


__all__ = ["Teacher", "TeacherSolver", "check_solver", "freeze"]
