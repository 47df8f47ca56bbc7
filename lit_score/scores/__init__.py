"""Scores: the boundary between networks and ∇ₓ log p_t."""

from lit_score.scores.energy import EnergyScore, energy_gradient
from lit_score.scores.network import NetworkScore, Target

__all__ = ["NetworkScore", "EnergyScore", "energy_gradient", "Target"]
