"""The loss slot of the diffusion families: any per-sample objective of (score model, x₀)."""

from __future__ import annotations

import torch
from torch import Tensor


class DiffusionLoss:
    """Base of the objectives a diffusion family takes: ``loss(score_model, x0, generator=None) -> (B,)``.

    ``requires_energy``: the objective needs E(x, t) itself (``score_model.has_energy``: a ``NoiseConditionalEnergy``
    network under target ``score`` or ``eps``), not only the score; the family refuses the pair otherwise.
    ``trains_variance`` / ``trains_schedule``: the objective trains a learned reverse variance (``HybridLoss``) or a
    learned noise schedule (``VDMLoss``); a model with either is refused with any other loss, which would leave the
    variance untrained (yet used by the samplers) or move the schedule by a gradient that is not the VLB's.
    """

    requires_energy: bool = False
    trains_variance: bool = False
    trains_schedule: bool = False

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError
