"""Distillation components that need lit-score's models: a teacher built from a checkpoint (DESIGN.md §3d), and
reflow's pair stage (:func:`draw_pairs`, Liu et al. 2022) that draws the couplings :class:`~lit_score.losses.Reflow`
trains on.

The objectives themselves (:class:`~lit_score.losses.ConsistencyDistillation`) and the in-memory
:class:`~lit_score.losses.Teacher` sit with the losses, below the models; this package is on the components floor.
"""

from lit_score.distillation.reflow import PairsResult, draw_pairs
from lit_score.distillation.teacher import CheckpointTeacher
from lit_score.losses.teacher import Teacher

__all__ = ["CheckpointTeacher", "Teacher"]
__all__ += ["PairsResult", "draw_pairs"]
