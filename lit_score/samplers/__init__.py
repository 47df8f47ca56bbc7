"""Samplers written once against ScoreFn + NoiseProcess."""

from lit_score.samplers.ancestral import DDIM, Ancestral
from lit_score.samplers.base import (
    CountingScore,
    Sampler,
    ScoreFn,
    predict_x0_eps,
    probability_flow_velocity,
)

__all__ = ["Sampler", "ScoreFn", "CountingScore", "predict_x0_eps", "probability_flow_velocity", "Ancestral", "DDIM"]
