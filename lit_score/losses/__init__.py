"""Per-sample training objectives (B,); the modules reduce and log."""

from lit_score.losses.denoising import DenoisingLoss
from lit_score.losses.score_matching import ExactScoreMatching, SlicedScoreMatching

__all__ = ["DenoisingLoss"]
__all__ += ["ExactScoreMatching", "SlicedScoreMatching"]
