r"""Reflow (Liu, Gong & Liu 2022, "Flow straight and fast", Sec. 2.2 and 2.3): the (k+1)-rectified flow, and a
k-step student, trained on the coupling a k-rectified flow induces.

==================  ===============================================================================================
symbol              meaning (lit-score's time runs from data at t_min to noise at t_max; the paper's from Z₀ = noise
                    at 0 to Z₁ = data at 1, so its t is our 1 − t and its velocity Z₁ − Z₀ is our −(ε − x))
==================  ===============================================================================================
(ε, x)              a pair of the teacher's probability-flow ODE: started at σ(t_max)·ε, ended at x (the paper's
                    (Z₀, Z₁); :class:`~lit_score.data.ReflowPairs`)
x_t                 α(t)·x + σ(t)·ε: the process's own interpolant between the pair's ends; on flow matching's
                    (α = 1 − t, σ = t) the straight line of the paper's eq. (1)
v_θ(x_t, t)         the student's velocity; its target on the interpolant is dx_t/dt = α̇ x + σ̇ ε (ε − x here)
==================  ===============================================================================================

**(k+1)-rectified flow** (``num_steps`` None, the paper's eq. (1) on the coupling (Z₀, Z₁) = (ε, x)):
ℓ = ‖v_θ(x_t, t) − (ε − x)‖² with t ~ the process's training distribution (uniform), i.e. flow matching with the
pair's ε in place of an independent draw. Its minimiser is v(z, t) = E[ε − x | x_t = z]; on a coupling whose lines
do not cross (a deterministic ODE's pairs, once straightened) it is the pairs' own constant velocity.

**k-step distillation** (``num_steps`` = k): the same regression at the k start times t_0 > … > t_{k−1} of the
process's grid ``time_grid(k)`` only (uniform over them), which are where :class:`~lit_score.samplers.Euler` with
``num_steps`` k and ``denoise`` false evaluates the student. Where the loss is zero, Euler's step from x_{t_j} on the
pair's line lands on x_{t_{j+1}} of the same line, so k steps carry σ(t_max)·ε to the pair's x (up to the
α(t_max)·x = 1e-3·x that the prior leaves out). For k = 1 this is the paper's distillation (Sec. 2.3, "distilled"
models): min E‖(Z₁ − Z₀) − v(Z₀, 0)‖², which is its L2 on the one-step output Z₀ + v(Z₀, 0) against Z₁ (the paper uses
LPIPS for images; L2 here). The paper distils the 2-rectified flow's own pairs (draw them from the 2-RF checkpoint);
the 1-RF's pairs distil the teacher directly.

The student starts from the teacher's weights (``teacher``, a fresh fit only; the paper fine-tunes the 1-rectified
flow into the 2-rectified flow); the teacher is read at the start of fit and never called in training: the pairs
hold everything the loss needs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.flow import FlowMatchingLoss
from lit_score.losses.teacher import Teacher
from lit_score.scores import NetworkScore
from lit_score.utils import batch_mean, batch_sum, rand


class Reflow(FlowMatchingLoss):
    """Flow matching on reflow pairs: the (k+1)-rectified flow, or a k-step student (module docstring).

    Args:
        teacher: the flow the pairs were drawn from (:class:`~lit_score.distillation.CheckpointTeacher`); at the start
            of a fresh fit the student's network takes its weights (same architecture; refused in one line otherwise).
            None: the student starts from its own initialisation.
        num_steps: None: the rectified flow (t from the process's training distribution); k >= 1: the k-step student
            (t on the k start times of ``process.time_grid(k)``; sample it with ``Euler(num_steps=k, denoise=False)``).
        reduce: ``mean`` or ``sum`` of the squared error over data dimensions.
    """

    #: the pairs are the objective: plain data batches are refused by the family
    requires_coupling: bool = True

    def __init__(self, teacher: Teacher | None = None, num_steps: int | None = None,
                 reduce: Literal["mean", "sum"] = "mean") -> None:
        super().__init__(ot_coupling=False, weighting="none", reduce=reduce)
        check_number("num_steps", num_steps, ge=1, integer=True, allow_none=True)
        self.teacher, self.num_steps = teacher, None if num_steps is None else int(num_steps)

    def __call__(self, score_model: NetworkScore, x0: Tensor, generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> Tensor:
        if noise is None:
            raise ValueError("Reflow trains on a coupling: pass the pairs' noise (data: lit_score.data.ReflowPairs)")
        if self.num_steps is None:
            return super().__call__(score_model, x0, generator, noise=noise)
        process, k = score_model.process, self.num_steps
        starts = process.time_grid(k, device=x0.device)[:k].to(x0.dtype)  # t_0 = t_max > … > t_{k−1}
        t = starts[(rand((x0.shape[0],), generator, device=x0.device) * k).long().clamp(max=k - 1)]
        x_t = process.perturb(x0, t, noise)
        err = (score_model.raw(x_t, t) - score_model.training_target(x0, noise, t)) ** 2
        return batch_mean(err) if self.reduce == "mean" else batch_sum(err)

    def fit_started(self, score_model, resumed: bool) -> None:
        """On a fresh fit, the student's network takes the teacher's weights (never on a resumed one)."""
        if resumed or self.teacher is None:
            return
        network = score_model.network
        fix = "build the student with the teacher's network arguments, or set teacher null"
        try:
            result = network.load_state_dict(self.teacher.one_time_weights(), strict=False)
        except RuntimeError as err:  # torch's error for tensors of other shapes
            raise ValueError(f"the teacher's weights do not fit the student's {type(network).__name__}"
                             f" ({str(err).splitlines()[-1].strip()}): {fix}") from err
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"the teacher's weights do not fit the student's {type(network).__name__}: missing"
                             f" {list(result.missing_keys)}, unexpected {list(result.unexpected_keys)} ({fix})")

    def __repr__(self) -> str:
        return f"Reflow(teacher={self.teacher!r}, num_steps={self.num_steps}, reduce={self.reduce!r})"


__all__ = ["Reflow"]
