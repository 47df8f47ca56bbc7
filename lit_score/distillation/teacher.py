r"""A teacher from any lit-score checkpoint with a noise process (DDPM, NCSN, score SDE, EDM, VDM, flow matching).

    loss:
      class_path: lit_score.losses.ConsistencyDistillation
      init_args:
        teacher:
          class_path: lit_score.distillation.CheckpointTeacher
          init_args: {checkpoint: runs/edm_toy/version_0/checkpoints/last.ckpt}   # weights: auto (EMA if kept)

The checkpoint is read by :func:`lit_score.loading.load_module` (every class it names checked before anything is
built; never a plain ``torch.load`` of a model) as a :class:`~lit_score.models.DiffusionModule`: a family without a
noise process (an EBM) is refused in one line. It is loaded at its first use, onto the device of the batch, so a
distilled student's own checkpoint can be loaded (to sample it) where the teacher's file is absent.

Weights (as ``lit-score evaluate --weights``): ``auto`` the EMA average when the run kept one
(:class:`~lit_score.callbacks.EMA` writes it as the checkpoint's ``state_dict`` and the training weights as
``current_model_state``), else the training weights; ``ema`` the average, refused where there is none; ``raw`` the
training weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from lit_score.loading import load_module, read_checkpoint
from lit_score.losses.teacher import Teacher, TeacherSolver, check_solver, freeze
from lit_score.models.diffusion import DiffusionModule
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import ScoreFn

Weights = Literal["auto", "ema", "raw"]


def load_teacher_module(path: str | Path, weights: Weights, device: torch.device) -> DiffusionModule:
    """The checkpoint's diffusion module with the chosen ``weights`` (module docstring), frozen, on ``device``."""
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
    ckpt = read_checkpoint(path)
    has_ema = "current_model_state" in ckpt
    if weights == "ema" and not has_ema:
        raise ValueError(f"teacher checkpoint {path} holds no EMA weights (its run used no lit_score.callbacks.EMA):"
                         " set the teacher's weights to auto or raw")
    module = load_module(path, DiffusionModule, map_location=device)
    if weights == "raw" and has_ema:
        module.load_state_dict(ckpt["current_model_state"])
    return freeze(module)


class CheckpointTeacher(Teacher):
    """The teacher of a lit-score checkpoint (module docstring).

    Args:
        checkpoint: the ``.ckpt`` of a diffusion / flow family (``lit-score fit`` writes it).
        weights: ``auto`` (EMA when kept, the default), ``ema`` or ``raw``.
        sampler: the step (see :class:`~lit_score.losses.Teacher`): Heun (default), Euler, DDIM η = 0, EDMHeun or
            singlestep DPMSolver.
    """

    def __init__(self, checkpoint: str, weights: Weights = "auto", sampler: TeacherSolver | None = None) -> None:
        if weights not in ("auto", "ema", "raw"):
            raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
        self.checkpoint, self.weights, self.sampler = str(checkpoint), weights, check_solver(sampler)
        self.module: DiffusionModule | None = None
        self.score_model = self.process = self.network = None

    def model(self, device: torch.device | None = None) -> tuple[ScoreFn, NoiseProcess]:
        """(score model, process), the checkpoint loaded at the first call (onto ``device``, the CPU when None) and
        moved to ``device`` after."""
        if self.module is None:
            module = load_teacher_module(self.checkpoint, self.weights, device or torch.device("cpu"))
            self.module, self.score_model, self.process, self.network = (module, module.score_model, module.process,
                                                                         module.network)
        return super().model(device)

    def __repr__(self) -> str:
        return f"CheckpointTeacher(checkpoint={self.checkpoint!r}, weights={self.weights!r}, sampler={self.sampler!r})"


__all__ = ["CheckpointTeacher", "Weights", "load_teacher_module"]
