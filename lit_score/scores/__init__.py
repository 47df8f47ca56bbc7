"""Scores: the boundary between networks and ∇ₓ log p_t."""

from lit_score.scores.energy import ComposedEnergy, EnergyScore, as_energy, energy_gradient
from lit_score.scores.flow_map import FlowMapScore, flow_map_jump
from lit_score.scores.function import ScoreFunction, UserScore, as_score_function
from lit_score.scores.gaussian import GaussianFlowMap
from lit_score.scores.network import NetworkScore, Target

__all__ = ["ComposedEnergy", "EnergyScore", "NetworkScore", "Target", "as_energy", "energy_gradient"]
__all__ += ["FlowMapScore", "GaussianFlowMap", "flow_map_jump"]
__all__ += ["ScoreFunction", "UserScore", "as_score_function"]
