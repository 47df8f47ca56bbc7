"""Noise processes: the forward corruption every family shares (no Lightning here)."""

from lit_score.processes.base import SPACINGS, NoiseProcess, Spacing, check_spacing
from lit_score.processes.edm import EDM
from lit_score.processes.grid_file import StoredGrid, load_grid, save_grid
from lit_score.processes.interpolant import Interpolant
from lit_score.processes.learned import LearnedVP
from lit_score.processes.ve import VE, DiscreteVE
from lit_score.processes.vp import VP, DiscreteVP, SubVP, ddpm_betas

__all__ = [
    "NoiseProcess",
    "Spacing",
    "VP",
    "SubVP",
    "DiscreteVP",
    "VE",
    "DiscreteVE",
    "EDM",
    "Interpolant",
    "LearnedVP",
    "ddpm_betas",
    "SPACINGS",
    "check_spacing",
    "StoredGrid",
    "load_grid",
    "save_grid",
]
