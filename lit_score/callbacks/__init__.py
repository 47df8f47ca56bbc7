"""Callbacks: sample grids, likelihood, EBM diagnostics. They call pl_module.sample(); they never re-implement it."""

from lit_score.callbacks.ebm import EnergyHistogram
from lit_score.callbacks.likelihood import LikelihoodCallback
from lit_score.callbacks.samples import SampleGrid, generate_across_ranks, run_dir

__all__ = ["EnergyHistogram", "LikelihoodCallback", "SampleGrid", "generate_across_ranks", "run_dir"]
