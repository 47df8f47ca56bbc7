"""Distillation components that need lit-score's models: a teacher built from a checkpoint (DESIGN.md §3d).

The objectives themselves (:class:`~lit_score.losses.ConsistencyDistillation`) and the in-memory
:class:`~lit_score.losses.Teacher` sit with the losses, below the models; this package is on the components floor.
"""

from lit_score.distillation.teacher import CheckpointTeacher
from lit_score.losses.teacher import Teacher

__all__ = ["CheckpointTeacher", "Teacher"]
