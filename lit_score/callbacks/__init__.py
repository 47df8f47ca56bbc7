"""Callbacks: sample grids, sample quality, likelihood, EBM diagnostics (they call pl_module.sample(), never redo
it), an EMA of the weights with a warm-up, and what makes a long run resumable and safe to stop (added to every
`lit-score fit` run)."""

from lit_score.callbacks.ebm import ChainDiagnostics, EnergyHistogram
from lit_score.callbacks.ema import EMA, ema_decay
from lit_score.callbacks.likelihood import LikelihoodCallback
from lit_score.callbacks.performance import Performance
from lit_score.callbacks.quality import SampleQuality
from lit_score.callbacks.ranks import RanksDisagreeError, RankSync
from lit_score.callbacks.resume import FinalCheckpoint, GracefulStop, NonFiniteGuard, ResumeState
from lit_score.callbacks.samples import SampleGrid, generate_across_ranks, run_dir
from lit_score.models.rollback import DivergenceRollback  # the EBM builds its own (lit_score.models.rollback)

__all__ = [
    "EMA", "ChainDiagnostics", "DivergenceRollback", "EnergyHistogram", "FinalCheckpoint", "GracefulStop",
    "LikelihoodCallback", "NonFiniteGuard", "Performance", "RankSync", "RanksDisagreeError", "ResumeState",
    "SampleGrid", "SampleQuality", "ema_decay", "generate_across_ranks", "run_dir",
]
