"""Metrics: two-sample distances for toy data, likelihoods, and the image-metric proof (disturbances, floors at the
same n, standard errors, k-NN realism)."""

from lit_score.metrics.distances import (
    data_floor,
    energy_distance,
    median_bandwidth,
    median_distance,
    mmd,
    sliced_wasserstein,
)
from lit_score.metrics.disturbances import DISTURBANCES, disturb
from lit_score.metrics.image_quality import ImageQuality, floor_plan, image_quality, is_tie
from lit_score.metrics.likelihood import LikelihoodResult, VLBResult, ddpm_vlb, log_likelihood
from lit_score.metrics.realism import RealismResult, broken_share, realism
from lit_score.metrics.straightness import Straightness, straightness

__all__ = ["data_floor", "energy_distance", "median_bandwidth", "median_distance", "mmd", "sliced_wasserstein"]
__all__ += ["LikelihoodResult", "VLBResult", "ddpm_vlb", "log_likelihood"]
__all__ += ["DISTURBANCES", "disturb", "ImageQuality", "floor_plan", "image_quality", "is_tie"]
__all__ += ["RealismResult", "broken_share", "realism"]
__all__ += ["Straightness", "straightness"]
