"""Per-sample training objectives (B,); the modules reduce and log."""

from lit_score.losses.base import DiffusionLoss
from lit_score.losses.consistency import ConsistencyDistillation
from lit_score.losses.consistency_training import ConsistencyTraining, ICTCurriculum
from lit_score.losses.consistency_tuning import EasyConsistencyTuning, ECTSchedule
from lit_score.losses.contrastive import ContrastiveDivergence
from lit_score.losses.denoising import DenoisingLoss
from lit_score.losses.flow import FlowMatchingLoss, ot_permutation
from lit_score.losses.hybrid import HybridLoss
from lit_score.losses.meanflow import MeanFlow
from lit_score.losses.progressive import HalvingRounds, ProgressiveDistillation
from lit_score.losses.recovery import RecoveryLikelihood
from lit_score.losses.reflow import Reflow
from lit_score.losses.score_matching import ExactScoreMatching, SlicedScoreMatching
from lit_score.losses.shortcut import Shortcut
from lit_score.losses.teacher import Teacher
from lit_score.losses.vdm import VDMLoss

__all__ = [
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "ECTSchedule",
    "EasyConsistencyTuning",
    "ICTCurriculum",
    "ContrastiveDivergence",
    "DenoisingLoss",
    "DiffusionLoss",
    "ExactScoreMatching",
    "FlowMatchingLoss",
    "HalvingRounds",
    "HybridLoss",
    "MeanFlow",
    "ProgressiveDistillation",
    "RecoveryLikelihood",
    "Reflow",
    "Shortcut",
    "SlicedScoreMatching",
    "Teacher",
    "VDMLoss",
    "ot_permutation",
]
