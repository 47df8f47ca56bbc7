"""Samplers written once against ScoreFn + NoiseProcess."""

from lit_score.samplers.adaptive_sde import AdaptiveSDE
from lit_score.samplers.ancestral import DDIM, Ancestral
from lit_score.samplers.base import (
    CountingScore,
    Draw,
    Sampler,
    ScoreFn,
    predict_x0_eps,
    probability_flow_velocity,
)
from lit_score.samplers.deis import DEIS, IPNDM
from lit_score.samplers.dpm_solver import DPMSolver
from lit_score.samplers.dpm_solver_sde import DPMSolverSDE
from lit_score.samplers.edm import EDMHeun
from lit_score.samplers.flow_map import FlowMapSampler
from lit_score.samplers.langevin import AnnealedLangevin, Langevin, langevin_step
from lit_score.samplers.mcmc import HMC, MALA, ULA, AnnealedMCMC, DualAveraging, MCMCSampler, hmc_step, mala_step
from lit_score.samplers.ode import AdaptiveODE, Euler, Heun, solve_ode, solve_ode_fixed
from lit_score.samplers.pc import LangevinCorrector, MALACorrector, PredictorCorrector
from lit_score.samplers.recovery import RecoverySampler
from lit_score.samplers.restart import Restart
from lit_score.samplers.sa_solver import SASolver
from lit_score.samplers.sde import EulerMaruyama, ReverseDiffusion
from lit_score.samplers.thresholding import DynamicThreshold, StaticThreshold, Thresholding
from lit_score.samplers.unipc import UniPC

__all__ = [
    "DDIM",
    "AdaptiveODE",
    "AdaptiveSDE",
    "Ancestral",
    "AnnealedLangevin",
    "AnnealedMCMC",
    "CountingScore",
    "DEIS",
    "IPNDM",
    "DynamicThreshold",
    "StaticThreshold",
    "Thresholding",
    "DPMSolver",
    "DPMSolverSDE",
    "Draw",
    "EDMHeun",
    "Euler",
    "FlowMapSampler",
    "EulerMaruyama",
    "HMC",
    "Heun",
    "Langevin",
    "LangevinCorrector",
    "MALA",
    "MALACorrector",
    "MCMCSampler",
    "PredictorCorrector",
    "RecoverySampler",
    "ReverseDiffusion",
    "Restart",
    "SASolver",
    "ULA",
    "UniPC",
    "DualAveraging",
    "Sampler",
    "ScoreFn",
    "hmc_step",
    "langevin_step",
    "mala_step",
    "predict_x0_eps",
    "probability_flow_velocity",
    "solve_ode",
    "solve_ode_fixed",
]
