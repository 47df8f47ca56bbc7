"""Callbacks: sample grids, sample quality, likelihood, EBM diagnostics. They call pl_module.sample(), never redo it."""

from lit_score.callbacks.ebm import EnergyHistogram
from lit_score.callbacks.likelihood import LikelihoodCallback
from lit_score.callbacks.quality import SampleQuality
from lit_score.callbacks.samples import SampleGrid, generate_across_ranks, run_dir

__all__ = ["EnergyHistogram", "LikelihoodCallback", "SampleGrid", "SampleQuality", "generate_across_ranks", "run_dir"]
