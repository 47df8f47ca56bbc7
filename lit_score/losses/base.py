"""The loss slot of the diffusion families: any per-sample objective of (score model, x₀)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


class DiffusionLoss:
    """Base of the objectives a diffusion family takes: ``loss(score_model, x0, generator=None) -> (B,)``.

    ``requires_energy``: the objective needs E(x, t) itself (``score_model.has_energy``: a ``NoiseConditionalEnergy``
    network under target ``score`` or ``eps``), not only the score; the family refuses the pair otherwise.
    ``trains_variance`` / ``trains_schedule``: the objective trains a learned reverse variance (``HybridLoss``) or a
    learned noise schedule (``VDMLoss``); a model with either is refused with any other loss, which would leave the
    variance untrained (yet used by the samplers) or move the schedule by a gradient that is not the VLB's.
    ``requires_two_time``: the objective trains a flow map (``flow_map(x, t, s)``: a two-time network, which the family
    wraps in a ``FlowMapScore``); the family refuses a one-time network with it.
    ``takes_coupling``: the objective accepts a given coupling, ``loss(score_model, x0, generator, noise=ε)`` with ε
    (B, *shape) the noise paired with each x₀ (a reflow pair, :class:`~lit_score.data.ReflowPairs`) in place of an
    independent draw; ``requires_coupling``: it is meaningless without one (the family refuses plain batches).
    ``fit_started`` / ``before_step``: hooks the family calls at the start of fit and before each training batch (a
    distillation's target network is made and follows the weights there).
    ``state_dict`` / ``load_state_dict``: what the objective carries between steps (empty unless it samples t by its
    own loss history), written into and restored from the family's checkpoints.
    """

    requires_energy: bool = False
    trains_variance: bool = False
    trains_schedule: bool = False
    requires_two_time: bool = False
    takes_coupling: bool = False
    requires_coupling: bool = False
    #: a ``LossAwareSteps`` where the objective draws its steps by its own loss history, else None
    steps = None

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def fit_started(self, score_model, resumed: bool) -> None:
        """Called by the family at the start of fit, after a resumed run's weights are restored (``resumed``: the fit
        continues a checkpoint; the trainer's global step is not restored yet at this point, so it cannot tell); an
        objective that builds its own state from the model (a distillation's target network) does it here."""

    def before_step(self, score_model, step: int) -> None:
        """Called by the family before each training batch with the global step (the optimizer steps taken): an
        objective that follows the weights (a target network's EMA) updates here."""

    def state_dict(self) -> dict:
        """State the objective carries across steps (a loss-aware step history), saved in the module's checkpoint."""
        return self.steps.state_dict() if self.steps is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.steps is not None:
            self.steps.load_state_dict(state)
        elif state:
            warnings.warn(f"the checkpoint's loss state ({', '.join(state)}) is not used by {type(self).__name__}:"
                          " it starts afresh", stacklevel=2)
