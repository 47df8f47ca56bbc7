"""lit-score: train, sample, evaluate and compare score-based, diffusion, flow and energy-based generative models.

The names users write in YAML and Python live in the subpackages, imported on first use::

    lit_score.processes   VP, DiscreteVP, SubVP, VE, DiscreteVE, EDM, Interpolant, LearnedVP
    lit_score.models      EBM, NCSN, DDPM, ScoreSDE, FlowMatching, NoiseConditionalClassifier
    lit_score.samplers    Ancestral, DDIM, EulerMaruyama, PredictorCorrector, Heun, DPMSolver, EDMHeun, Langevin,
                          FlowMapSampler (two-time models), …
    lit_score.scores      NetworkScore, FlowMapScore (the flow map X_{t→s} of a two-time network), EnergyScore, …
    lit_score.losses      DenoisingLoss, HybridLoss, VDMLoss, ConsistencyDistillation, Reflow, …
    lit_score.distillation  CheckpointTeacher (a frozen teacher from any lit-score checkpoint), draw_pairs (reflow)
    lit_score.data        Toy2D, GaussianMixture, Digits, ImageData, ReflowPairs
    lit_score.metrics     log_likelihood, the torch-fidelity adapter, toy distances, straightness
    lit_score.callbacks   EMA, SampleQuality, …
    lit_score.loading     load_module, load_model, read_checkpoint (checkpoints are data: nothing they name is called
                          unchecked)
    lit_score.training    LitScoreCLI (the LightningCLI application), fit(argv)

``python -m lit_score`` is the ``lit-score`` command.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lit-score")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

SUBPACKAGES = ("processes", "scores", "networks", "losses", "samplers", "metrics", "control", "models", "data",
               "callbacks", "evaluation", "sweeps", "loading", "generation", "distillation", "training", "validation",
               "cli")
__all__ = ["__version__", *SUBPACKAGES]


def __getattr__(name: str):
    """``lit_score.models`` and the other subpackages, imported when first named (``import lit_score`` stays cheap)."""
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
