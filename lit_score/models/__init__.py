"""LightningModules: thin compositions of process, score, loss and sampler."""

from lit_score.models.base import GenerativeModule, NonFiniteLossError
from lit_score.models.ddpm import DDPM
from lit_score.models.diffusion import DiffusionModule

__all__ = ["DDPM", "DiffusionModule", "GenerativeModule", "NonFiniteLossError"]
