"""Per-sample training objectives (B,); the modules reduce and log."""

from lit_score.losses.denoising import DenoisingLoss

__all__ = ["DenoisingLoss"]
