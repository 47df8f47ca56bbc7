"""Metrics: two-sample distances for toy data (more exports are added by the metrics package's owners)."""

from lit_score.metrics.distances import (
    data_floor,
    energy_distance,
    median_bandwidth,
    median_distance,
    mmd,
    sliced_wasserstein,
)
from lit_score.metrics.likelihood import LikelihoodResult, VLBResult, ddpm_vlb, log_likelihood

__all__ = ["data_floor", "energy_distance", "median_bandwidth", "median_distance", "mmd", "sliced_wasserstein"]
__all__ += ["LikelihoodResult", "VLBResult", "ddpm_vlb", "log_likelihood"]
