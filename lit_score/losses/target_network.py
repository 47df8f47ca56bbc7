r"""The target network θ⁻ of a loss whose target is the student's own prediction (consistency distillation, the
shortcut models' bootstrap): a frozen copy of the student's score model that follows its weights by an exponential
moving average, held by the loss (a component the loss takes, as it takes a curriculum).

| symbol | meaning |
|---|---|
| θ | the student's (online) weights, trained by the optimizer |
| θ⁻ | the target network's weights: θ⁻ ← μ·θ⁻ + (1 − μ)·θ once per optimizer step (buffers copied) |
| μ | ``ema_rate`` ∈ [0, 1); μ = 0: no copy, θ⁻ is θ itself and the caller stops the gradient |
| k | the optimizer step (the trainer's global step) θ⁻ has followed: ``step`` |

**Where θ⁻ lives.** A frozen deep copy of the student's score model (``requires_grad`` False), held by the loss and
not a submodule: outside the optimizer, the trainer's :class:`~lit_score.callbacks.EMA` and the module's
``state_dict``. It is made by :meth:`TargetNetwork.started` at the start of fit (the loss's ``fit_started``), after the
loss may have changed the student's weights (``restart``: a distillation's ``init_from_teacher``), or at its first use,
from the student's current weights or from a checkpoint's θ⁻. It is saved as the loss's state
``{"target": weights, "target_step": k}`` in the family's checkpoint, so a resumed run continues the same θ⁻ bit for
bit; with μ = 0 the state is empty.

**When it moves.** :meth:`before_step`, called by the loss's ``before_step`` (the family calls it at the start of each
training batch with the global step), not at the end of a step: a checkpoint written at the end of step k holds θ_k
with θ⁻ one update behind, and the resumed run makes that update first, exactly as the uninterrupted one does; with
gradient accumulation it happens once per optimizer step (the global step has to pass ``step``).

**Its mode.** The caller chooses (:meth:`model`): consistency distillation runs θ⁻ in the student's mode with the
student's dropout mask, the shortcut bootstrap in eval mode (its reference's ``train=False``). θ⁻ is conditioned on
the student view's class labels.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lit_score.checks import check_number
from lit_score.losses.teacher import freeze


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """θ⁻ ← μ·θ⁻ + (1 − μ)·θ over the parameters of two modules of one architecture; buffers are copied."""
    targets, sources = list(target.parameters()), list(source.parameters())
    torch._foreach_lerp_(targets, sources, 1.0 - rate)
    for mine, theirs in zip(target.buffers(), source.buffers(), strict=True):
        mine.copy_(theirs)


class TargetNetwork:
    """θ⁻ for a loss (module docstring): the student itself when ``ema_rate`` is 0, else a frozen EMA copy.

    Args:
        ema_rate: μ (0 ≤ μ < 1; 0: no copy, the student with its gradient stopped by the caller).
    """

    def __init__(self, ema_rate: float) -> None:
        check_number("ema_rate", ema_rate, ge=0.0, lt=1.0)
        self.ema_rate = float(ema_rate)
        self.module: nn.Module | None = None  # θ⁻: a frozen copy of the student's score model (μ > 0)
        self.step = 0  # the optimizer step θ⁻ has followed
        self._pending: dict | None = None  # a checkpoint's θ⁻ until the student's score model is at hand

    @property
    def restoring(self) -> bool:
        """A checkpoint's θ⁻ is loaded and waits for the student's score model to be copied into."""
        return self._pending is not None

    def copy_of(self, score_model) -> nn.Module:
        """θ⁻ (a frozen copy of ``score_model``), made at the first call from the student's current weights, or from
        a checkpoint's θ⁻ when one was loaded."""
        if self.module is None:
            self.module = freeze(copy.deepcopy(score_model))
            for parameter in self.module.parameters():
                parameter.grad = None
            if self._pending is not None:
                self.module.load_state_dict(self._pending["target"])
                self.step, self._pending = int(self._pending["target_step"]), None
        return self.module

    def model(self, score_model, training: bool | None = None):
        """The model the target is computed with: ``score_model`` itself when μ = 0 (the caller stops the gradient),
        else θ⁻ in mode ``training`` (None: the student's mode) conditioned on the student view's labels."""
        if self.ema_rate == 0:
            return score_model
        target = self.copy_of(score_model)
        target.train(score_model.training if training is None else training)
        return target.with_condition(score_model.labels)

    def started(self, score_model, restart: bool = False) -> None:
        """At the start of fit: make θ⁻ (a copy of the student, or the checkpoint's); ``restart`` drops a copy made
        before the caller changed the student's weights. A new θ⁻ follows from step 0: the next optimizer step
        updates it once."""
        if restart:
            self.module = None
        if self.ema_rate > 0:
            fresh = self.module is None and self._pending is None
            self.copy_of(score_model)
            if fresh:
                self.step = 0

    @torch.no_grad()
    def before_step(self, score_model, step: int) -> None:
        """θ⁻ ← μ·θ⁻ + (1 − μ)·θ once per optimizer step taken since the last update (module docstring)."""
        if self.ema_rate == 0:
            return
        target = self.copy_of(score_model)
        if step <= self.step:
            return
        ema_update(target, score_model, self.ema_rate)
        self.step = step

    def state_dict(self) -> dict:
        """θ⁻'s weights and the step it follows (empty when μ = 0: there is no θ⁻)."""
        if self.ema_rate == 0:
            return {}
        if self.module is None:
            return dict(self._pending) if self._pending is not None else {}
        return {"target": self.module.state_dict(), "target_step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if self.ema_rate == 0 or not state:
            if state:
                warnings.warn("the checkpoint's target network is not used with ema_rate 0", stacklevel=3)
            return
        self._pending = {"target": state["target"], "target_step": int(state["target_step"])}
        if self.module is not None:  # already made: load now
            self.module.load_state_dict(self._pending["target"])
            self.step, self._pending = self._pending["target_step"], None

    def __repr__(self) -> str:
        return f"TargetNetwork(ema_rate={self.ema_rate:g})"


class FollowsTargetNetwork:
    """The loss hooks of a loss holding a :class:`TargetNetwork` as ``self.target_network``: θ⁻ follows the student
    before each step and is the loss's checkpoint state (listed before the loss's base class, whose hooks it
    replaces)."""

    target_network: TargetNetwork

    def before_step(self, score_model, step: int) -> None:
        """θ⁻ ← μ·θ⁻ + (1 − μ)·θ once per optimizer step taken since the last update."""
        self.target_network.before_step(score_model, step)

    def state_dict(self) -> dict:
        """θ⁻'s weights and the step it follows, ``{"target", "target_step"}`` (empty when μ = 0: there is no θ⁻)."""
        return self.target_network.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.target_network.load_state_dict(state)


__all__ = ["FollowsTargetNetwork", "TargetNetwork", "ema_update"]
