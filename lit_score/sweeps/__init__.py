"""Sweeps: W&B sweep files whose parameters are ``lit-score fit`` keys, and ``lit-score sweep`` to run them locally."""

from lit_score.sweeps.history import MetricHistory

__all__ = ["MetricHistory"]
