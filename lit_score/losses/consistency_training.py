r"""Improved consistency training (iCT: Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models")
on a two-time model (DESIGN.md §3d): a consistency model from data alone, without a teacher.

The consistency function is the flow map to the data end, f_θ(x, t) = X_{t→t_min}(x)
(:meth:`~lit_score.scores.FlowMapScore.flow_map`, as in :mod:`lit_score.losses.consistency`), so f_θ(x, t_min) = x
holds by construction (iCT's own c_skip / c_out differ and give the same boundary condition).

| symbol | meaning |
|---|---|
| k, K | the optimizer step and the run's total steps (``total_steps``) |
| N(k) = min(s₀·2^⌊k/K'⌋, s₁) + 1 | points of the grid at step k, K' = ⌊K/(log₂⌊s₁/s₀⌋ + 1)⌋ (iCT Sec. 3.4, eq. 8: the |
| | exponential curriculum, s₀ = 10, s₁ = 1280: N doubles from 11 to 1281) |
| t_0 = t_max > … > t_{N−1} = t_min | ``process.time_grid(N − 1, "karras", ρ)``, ρ = 7 (on EDM(0.002, 80) iCT's |
| | grid; other processes: the process's own grid in σ̃ = σ/α, as :func:`~lit_score.losses.consistency.interval_times`) |
| σ̃_n = σ(t_n)/α(t_n) = e^{−λ(t_n)} | the noise level of grid point n (σ on EDM / VE, where α = 1) |
| p(n) ∝ erf((log σ̃_n − P_mean)/(√2 P_std)) − erf((log σ̃_{n+1} − P_mean)/(√2 P_std)) | the interval's probability: |
| | the log-normal N(P_mean, P_std²) of log σ̃ discretised on the grid (iCT Sec. 3.5, P_mean = −1.1, P_std = 2) |
| x_{t_n} = α x₀ + σ ε, x_{t_{n+1}} likewise | the process's marginal at both ends of the interval with the *same* ε |
| θ⁻ = stopgrad(θ) | the target: the student itself, no EMA (iCT Sec. 3.2) |
| ℓ = λ_n·d(f_θ(x_{t_n}, t_n), f_{θ⁻}(x_{t_{n+1}}, t_{n+1})) | the loss, λ_n = 1/(σ̃_n − σ̃_{n+1}) (iCT Sec. 3.1) |

iCT indexes the grid the other way up (σ_1 = σ_min): its σ_{i+1}, σ_i are our σ̃_n, σ̃_{n+1}. The weight and the
index distribution are in σ̃ units on every process (on EDM σ̃ = σ = t, iCT's exactly). d is
:func:`~lit_score.losses.consistency.consistency_distance`: per-sample pseudo-Huber with c = 0.00054·√d (iCT Sec. 3.3,
the default) or ``l2``.

**The target is unbiased to first order only.** x_{t_n} and x_{t_{n+1}} share x₀ and ε but are not on one ODE path;
E[x_{t_{n+1}} | x_{t_n}] = α_{n+1}·D + σ_{n+1}·ε̂ (Tweedie) is the DDIM step of the probability-flow ODE (Euler in σ
on EDM), so the target is the consistency distillation target of an exact-score DDIM teacher up to O(Δσ̃²) (Song et
al. 2023, Theorem 2). At the exact map the
loss is not zero and its gradient is O(Δσ̃) (tests/test_consistency_training.py measures it on Gaussian data).

**Dropout.** The target pass runs the student's network in its own mode under ``torch.no_grad`` with the random
state the student's pass started from (:func:`student_and_target`: the CPU and, on CUDA, the device's generator
state, restored inside ``torch.random.fork_rng``), so dropout draws the same mask in both passes. Consistency models'
code restores the CPU state (``th.get_rng_state``) before its target pass, ECT's the CUDA state; here both.

**The curriculum is an object in the checkpoint.** :class:`ICTCurriculum` is a pure function of the step; the loss
hands it the global step in :meth:`before_step` and saves its settings and the step it last saw; a resume with other
settings, or whose step does not continue the saved one, is refused in one line.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.consistency import Distance, consistency_distance, student_and_target
from lit_score.processes import NoiseProcess
from lit_score.utils import randn_like


class StepCurriculum:
    """A schedule that is a pure function of the optimizer step (``step``, set by :meth:`advance`), with its settings
    and the step it last saw saved in the checkpoint and checked on resume."""

    def __init__(self) -> None:
        self.step = 0
        self._resumed_at: int | None = None  # the saved step, until the first step of the resumed run is checked

    def settings(self) -> dict:
        """The arguments that define the schedule (a resume must use the same)."""
        raise NotImplementedError

    def advance(self, step: int) -> None:
        """Follow the trainer's global step; the first step after a resume must be the saved one or the next."""
        if self._resumed_at is not None and not self._resumed_at <= step <= self._resumed_at + 1:
            raise ValueError(f"{type(self).__name__} was saved at step {self._resumed_at} but training resumes at step"
                             f" {step}: the loss state is not this checkpoint's;"
                             " resume from the checkpoint it came with")
        self._resumed_at = None
        self.step = int(step)

    def state_dict(self) -> dict:
        return {"step": self.step, **self.settings()}

    def load_state_dict(self, state: dict) -> None:
        if "step" not in state:
            raise ValueError(f"the checkpoint holds no {type(self).__name__} state (it was written by another loss):"
                             " start a fresh run instead of resuming this one")
        differ = [f"{k}={state.get(k)!r} (now {v!r})" for k, v in self.settings().items() if state.get(k) != v]
        if differ:
            raise ValueError(f"the checkpoint's {type(self).__name__} has {', '.join(differ)}: resume with the"
                             " settings it was trained with, or start a fresh run")
        self.step = self._resumed_at = int(state["step"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class ICTCurriculum(StepCurriculum):
    """iCT's exponential curriculum N(k) = min(s₀·2^⌊k/K'⌋, s₁) + 1, K' = ⌊K/(log₂⌊s₁/s₀⌋ + 1)⌋ (iCT eq. 8).

    Args:
        s0: s₀, the intervals at the start (iCT: 10).
        s1: s₁, the most intervals (iCT: 1280).
        total_steps: K, the optimizer steps of the run (iCT CIFAR-10: 400 000).
    """

    def __init__(self, s0: int = 10, s1: int = 1280, total_steps: int = 400_000) -> None:
        check_number("s0", s0, ge=1, integer=True)
        check_number("s1", s1, ge=1, integer=True)
        check_number("total_steps", total_steps, ge=1, integer=True)
        if s1 < s0:
            raise ValueError(f"s1 ({s1}) must be at least s0 ({s0}): the number of intervals only grows")
        super().__init__()
        self.s0, self.s1, self.total_steps = int(s0), int(s1), int(total_steps)
        self.stage_length = math.floor(self.total_steps / (math.log2(self.s1 // self.s0) + 1))  # K'
        if self.stage_length < 1:
            raise ValueError(f"total_steps {total_steps} is shorter than the curriculum's stages: use at least"
                             f" {math.ceil(math.log2(self.s1 // self.s0) + 1)}")

    def settings(self) -> dict:
        return {"s0": self.s0, "s1": self.s1, "total_steps": self.total_steps}

    def num_scales(self, step: int | None = None) -> int:
        """N(k), the grid's points at ``step`` (default: the step it last saw)."""
        k = self.step if step is None else int(step)
        return min(self.s0 * 2 ** (k // self.stage_length), self.s1) + 1


def noise_levels(process: NoiseProcess, t: Tensor) -> Tensor:
    """σ̃ = σ/α = e^{−λ(t)}, the noise level of the scaled variable x/α (σ on EDM / VE)."""
    return (-process.log_snr(t)).exp()


def lognormal_interval_probabilities(sigmas: Tensor, p_mean: float, p_std: float) -> Tensor:
    """p(n) of each interval (σ̃_n, σ̃_{n+1}) of a monotone grid of noise levels (N,) -> (N − 1,): the mass the
    log-normal N(P_mean, P_std²) of log σ̃ puts on it (iCT Sec. 3.5), normalised over the grid."""
    cdf = torch.special.erf((sigmas.to(torch.float64).log() - p_mean) / (math.sqrt(2.0) * p_std))
    mass = (cdf[:-1] - cdf[1:]).abs()
    return mass / mass.sum()


class ConsistencyTraining(DiffusionLoss):
    """Improved consistency training of a two-time model (module docstring): a per-sample loss (B,).

    Args:
        curriculum: N(k), an :class:`ICTCurriculum` (default ``ICTCurriculum()``: iCT's CIFAR-10 settings; set its
            ``total_steps`` to the run's steps).
        distance: ``pseudo_huber`` (iCT) or ``l2``.
        huber_c: c of ``pseudo_huber`` (default 0.00054·√d).
        p_mean, p_std: the log-normal index distribution (iCT: −1.1, 2.0).
        rho: ρ of the Karras grid (iCT: 7).
    """

    #: the capability it asks of the score model: ``flow_map(x, t, s)`` (a FlowMapScore: a two-time network)
    requires_two_time: bool = True

    def __init__(self, curriculum: ICTCurriculum | None = None, distance: Distance = "pseudo_huber",
                 huber_c: float | None = None, p_mean: float = -1.1, p_std: float = 2.0, rho: float = 7.0) -> None:
        check_number("huber_c", huber_c, gt=0.0, allow_none=True)
        check_number("p_mean", p_mean)
        check_number("p_std", p_std, gt=0.0)
        check_number("rho", rho, gt=0.0)
        if distance not in ("l2", "pseudo_huber"):
            raise ValueError(f"unknown distance {distance!r}: use pseudo_huber or l2")
        self.curriculum = curriculum if curriculum is not None else ICTCurriculum()
        self.distance, self.huber_c = distance, huber_c
        self.p_mean, self.p_std, self.rho = float(p_mean), float(p_std), float(rho)
        self._grids: dict = {}  # (N, device) -> (t grid, p(n), λ_n): the grid changes only when N(k) doubles

    def grid(self, process: NoiseProcess, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(t_0 > … > t_{N−1} float64, p(n) and λ_n = 1/(σ̃_n − σ̃_{n+1}) per interval) at the curriculum's N(k)."""
        key = (self.curriculum.num_scales(), str(device), id(process))
        if key not in self._grids:
            t = process.time_grid(key[0] - 1, "karras", rho=self.rho, device=device)
            sigmas = noise_levels(process, t)
            probabilities = lognormal_interval_probabilities(sigmas, self.p_mean, self.p_std)
            self._grids = {key: (t, probabilities, 1.0 / (sigmas[:-1] - sigmas[1:]))}
        return self._grids[key]

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        grid, probabilities, weights = self.grid(process, x0.device)
        n = torch.multinomial(probabilities, x0.shape[0], replacement=True, generator=generator)
        t, s = grid[n].to(x0.dtype), grid[n + 1].to(x0.dtype)
        noise = randn_like(x0, generator)
        x_t, x_s = process.perturb(x0, t, noise), process.perturb(x0, s, noise)
        t_min = torch.full_like(t, process.t_min)
        student, target = student_and_target(lambda: score_model.flow_map(x_t, t, t_min),
                                             lambda: score_model.flow_map(x_s, s, t_min), x0.device)
        distance = consistency_distance(student, target, self.distance, self.huber_c)
        return weights[n].to(distance.dtype) * distance

    def before_step(self, score_model, step: int) -> None:
        """The curriculum follows the global step (N(k) for this batch)."""
        self.curriculum.advance(step)

    def state_dict(self) -> dict:
        return {"curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.curriculum.load_state_dict(state.get("curriculum", {}))

    def __repr__(self) -> str:
        huber = f", huber_c={self.huber_c:g}" if self.huber_c is not None else ""
        return f"ConsistencyTraining(curriculum={self.curriculum!r}, distance={self.distance!r}{huber})"


__all__ = ["ConsistencyTraining", "ICTCurriculum", "StepCurriculum", "lognormal_interval_probabilities",
           "noise_levels"]
