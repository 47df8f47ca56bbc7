"""LightningModules: thin compositions of process, score, loss and sampler."""

from lit_score.models.base import GenerativeModule, NonFiniteLossError
from lit_score.models.classifier import NoiseConditionalClassifier
from lit_score.models.ddpm import DDPM
from lit_score.models.diffusion import DiffusionModule
from lit_score.models.ebm import EBM, EBMDivergedError
from lit_score.models.flow_matching import FlowMatching
from lit_score.models.ncsn import NCSN, max_pairwise_distance
from lit_score.models.rollback import DivergenceRollback
from lit_score.models.score_sde import ScoreSDE

__all__ = [
    "DDPM",
    "EBM",
    "NCSN",
    "DiffusionModule",
    "DivergenceRollback",
    "EBMDivergedError",
    "FlowMatching",
    "GenerativeModule",
    "NoiseConditionalClassifier",
    "NonFiniteLossError",
    "ScoreSDE",
    "max_pairwise_distance",
]
