r"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", Algorithm 2) on a two-time
model (DESIGN.md §3d).

The consistency function is the student's flow map to the data end, f_θ(x, t) = X_{t→t_min}(x)
(:meth:`~lit_score.scores.FlowMapScore.flow_map`), so the boundary condition f_θ(x, t_min) = x holds by construction.

| symbol | meaning |
|---|---|
| t_0 = t_max > … > t_{N−1} = t_min | the process's Karras grid ``process.time_grid(N − 1, "karras", ρ)``: σ̃ = σ/α |
| | ρ-spaced (Karras et al. 2022, eq. 5; on the EDM process exactly consistency models' grid; fewer points where a |
| | discrete process merges steps). Consistency models index it the other way up: their t_{n+1}, t_n are our t_n, |
| | t_{n+1} |
| n ~ U{0, …, N − 2} | the interval drawn per sample |
| x_{t_n} = α x₀ + σ ε | a draw of the process's marginal at the noisier end |
| x̂_{t_{n+1}} = Φ(x_{t_n}, t_n, t_{n+1}) | the teacher's one ODE step (:class:`~lit_score.losses.teacher.Teacher`) |
| θ⁻ | the target network: θ⁻ ← μ·θ⁻ + (1 − μ)·θ after every optimizer step (μ = 0: θ itself, gradient stopped) |
| ℓ = λ·d(f_θ(x_{t_n}, t_n), f_{θ⁻}(x̂_{t_{n+1}}, t_{n+1})) | the loss, λ = 1 (consistency models' "uniform") |

Distances d(a, b) per sample:

- ``l2``: the mean over the sample's d coordinates of (a − b)² (consistency models' ``mean_flat`` of the squared
  error: the paper's ‖a − b‖² divided by d);
- ``pseudo_huber``: √(‖a − b‖² + c²) − c with the Euclidean norm of the *whole sample* and c = 0.00054·√d (improved
  consistency training, Song & Dhariwal 2023, Sec. 3.3). Per element (√((a_i − b_i)² + c²) − c summed over i) it would
  be another loss: robust per coordinate instead of per sample.
- LPIPS, the paper's best distance on images, needs downloaded VGG weights and is not offered.

Defaults: N = 18, Heun, ρ = 7 as consistency models' CIFAR-10 CD, and μ = 0.95, their ImageNet 64 / LSUN CD
setting. On CIFAR-10 their code trains CD with μ = 0 (stop-gradient θ⁻ = θ: openai/consistency_models_cifar10,
``jcm/train.py``, where the ``consistency`` loss has no target EMA), RAdam at lr 4e-4, batch 512, 800k steps and
LPIPS; ``configs/distill/cd_cifar10.yaml`` states those settings with l2 in place of LPIPS.

**Where θ⁻ lives** (:class:`~lit_score.losses.target_network.TargetNetwork`, which the shortcut loss shares). A
frozen deep copy of the student's score model, held by this loss, created at the start of fit (after the student may
have been started from the teacher's weights: ``init_from_teacher``) and saved as the loss's state (``state_dict``:
its weights and the optimizer step it has followed) in the family's checkpoint, so a resumed run continues the same θ⁻
bit for bit. The update happens at the start of the next training batch (:meth:`before_step`, called by the family
with the trainer's global step), not at the end of the last one: a checkpoint written at the end of step k then holds
θ_k with θ⁻ one update behind, and the resumed run makes that update first, exactly as the uninterrupted one does;
with gradient accumulation it happens once per optimizer step.

**Dropout.** As consistency models' code (``consistency_losses`` of openai/consistency_models: the target model in
train mode, the dropout RNG state saved before the student's pass and restored before the target's), θ⁻ runs in the
student's mode with the student's dropout mask (:func:`student_and_target`), with μ > 0 and with μ = 0 alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.target_network import FollowsTargetNetwork, TargetNetwork, ema_update
from lit_score.losses.teacher import Teacher
from lit_score.networks.two_time import load_one_time_weights
from lit_score.processes import NoiseProcess
from lit_score.utils import batch_mean, batch_sum, rand, randn_like

Distance = Literal["l2", "pseudo_huber"]


def pseudo_huber_constant(dim: int) -> float:
    """c = 0.00054·√d, improved consistency training's constant for d data dimensions."""
    return 0.00054 * math.sqrt(dim)


def consistency_distance(a: Tensor, b: Tensor, distance: Distance, c: float | None = None) -> Tensor:
    """d(a, b) per sample (B,) (module docstring); ``c`` for ``pseudo_huber`` (default 0.00054·√d)."""
    if distance == "l2":
        return batch_mean((a - b) ** 2)
    c = pseudo_huber_constant(a[0].numel()) if c is None else c
    return (batch_sum((a - b) ** 2) + c**2).sqrt() - c


def interval_times(process: NoiseProcess, num_scales: int, rho: float, batch: int, generator, like: Tensor):
    """(t_n, t_{n+1}) (B,) each: n ~ U{0, …, K − 1} over the K intervals of the process's Karras grid of
    ``num_scales`` points, in ``like``'s dtype and device."""
    grid = process.time_grid(num_scales - 1, "karras", rho=rho, device=like.device).to(like.dtype)
    intervals = len(grid) - 1
    n = (rand((batch,), generator, device=like.device) * intervals).long().clamp_max(intervals - 1)
    return grid[n], grid[n + 1]


def student_and_target(student: Callable[[], Tensor], target: Callable[[], Tensor], device: torch.device):
    """(student(), target()) with target() under ``no_grad`` and the random state student() started from (the same
    dropout mask: module docstring); the global random state afterwards is the one student() left."""
    on_cuda = device.type == "cuda"
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if on_cuda else None
    out = student()
    with torch.random.fork_rng(devices=[device] if on_cuda else []), torch.no_grad():
        torch.set_rng_state(cpu_state)
        if on_cuda:
            torch.cuda.set_rng_state(cuda_state, device)
        return out, target()


class ConsistencyDistillation(FollowsTargetNetwork, DiffusionLoss):
    """Consistency distillation of a two-time student from a teacher (module docstring): a per-sample loss (B,).

    Args:
        teacher: the :class:`~lit_score.losses.teacher.Teacher` (in YAML a
            :class:`lit_score.distillation.CheckpointTeacher`); it must share the student's process.
        num_scales: N, the points of the Karras grid (consistency models: 18 on CIFAR-10, 40 on ImageNet 64).
        ema_rate: μ of the target network θ⁻ (0: θ itself, gradient stopped, consistency models' CIFAR-10 CD;
            0.95 their ImageNet 64 CD).
        distance: ``l2`` or ``pseudo_huber`` (per sample).
        huber_c: c of ``pseudo_huber`` (default 0.00054·√d).
        rho: ρ of the Karras grid.
        init_from_teacher: at the start of a fresh fit, load the teacher network's weights into the two-time student
            (:func:`~lit_score.networks.load_one_time_weights`: the same architecture with ``two_time`` true);
            refused in one line where they do not fit.
    """

    #: the capability it asks of the score model: ``flow_map(x, t, s)`` (a FlowMapScore: a two-time network)
    requires_two_time: bool = True

    def __init__(
        self,
        teacher: Teacher,
        num_scales: int = 18,
        ema_rate: float = 0.95,
        distance: Distance = "l2",
        huber_c: float | None = None,
        rho: float = 7.0,
        init_from_teacher: bool = True,
    ) -> None:
        check_number("num_scales", num_scales, ge=2, integer=True)
        check_number("huber_c", huber_c, gt=0.0, allow_none=True)
        check_number("rho", rho, gt=0.0)
        if distance not in ("l2", "pseudo_huber"):
            raise ValueError(f"unknown distance {distance!r}: use l2 or pseudo_huber (LPIPS needs downloaded weights)")
        self.teacher, self.num_scales, self.ema_rate = teacher, int(num_scales), float(ema_rate)
        self.distance, self.huber_c, self.rho = distance, huber_c, float(rho)
        self.init_from_teacher = bool(init_from_teacher)
        self.target_network = TargetNetwork(ema_rate)  # θ⁻ (module docstring)
        self._process_checked = False

    # --- the loss ---------------------------------------------------------------------------------------------------
    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        self.check_process(process)
        t, s = interval_times(process, self.num_scales, self.rho, x0.shape[0], generator, x0)
        x_t = process.perturb(x0, t, randn_like(x0, generator))
        labels = score_model.labels
        x_s = self.teacher.step(x_t, t, s, labels)
        t_min = torch.full_like(t, process.t_min)
        target_model = self.target_model(score_model)
        student, target = student_and_target(lambda: score_model.flow_map(x_t, t, t_min),
                                             lambda: target_model.flow_map(x_s, s, t_min), x0.device)
        return consistency_distance(student, target, self.distance, self.huber_c)

    def target_model(self, score_model):
        """f_{θ⁻}'s model: the student itself when μ = 0 (the caller stops the gradient), else θ⁻ in the student's
        mode (its dropout mask: module docstring) conditioned on the student view's labels."""
        return self.target_network.model(score_model)

    def check_process(self, process: NoiseProcess) -> None:
        """Refuse, once and in one line, a teacher whose process differs from the student's (the times of the step
        would not mean the same noise level)."""
        if self._process_checked:
            return
        self.teacher.check_process(process, process.time_grid(self.num_scales - 1, "karras", rho=self.rho))
        self._process_checked = True

    # --- the target network θ⁻ -------------------------------------------------------------------------------------
    @property
    def target(self):
        """θ⁻ (a frozen copy of the student's score model) once made, else None."""
        return self.target_network.module

    def fit_started(self, score_model, resumed: bool) -> None:
        """At the start of fit: on a fresh run start the student from the teacher's weights (``init_from_teacher``;
        never on a resumed one, whose restored student it would overwrite — with μ = 0 there is no saved θ⁻ to tell),
        then make θ⁻ (a copy of the student, or the checkpoint's)."""
        restart = not resumed and not self.target_network.restoring and self.init_from_teacher
        if restart:
            load_one_time_weights(score_model.network, self.teacher.one_time_weights())
        self.target_network.started(score_model, restart=restart)  # θ⁻ starts from the initialised student

    def __repr__(self) -> str:
        huber = f", huber_c={self.huber_c:g}" if self.huber_c is not None else ""
        return (f"ConsistencyDistillation(teacher={self.teacher!r}, num_scales={self.num_scales},"
                f" ema_rate={self.ema_rate:g}, distance={self.distance!r}{huber})")


__all__ = ["ConsistencyDistillation", "Distance", "consistency_distance", "ema_update", "interval_times",
           "pseudo_huber_constant", "student_and_target"]
