"""DDPM (Ho et al. 2020): ε-prediction on the discrete β chain, L_simple, ancestral sampling."""

from __future__ import annotations

from lit_score.metrics.estimators import LikelihoodEstimator, VariationalBound
from lit_score.models.diffusion import DiffusionModule
from lit_score.processes import DiscreteVP, NoiseProcess
from lit_score.samplers import Ancestral, Sampler


class DDPM(DiffusionModule):
    """Denoising diffusion probabilistic model.

    Defaults: ``DiscreteVP()`` (linear β 1e-4 → 0.02, N = 1000), target ``eps``, L_simple
    (unweighted mean squared ε error), ancestral sampling over all N steps with the posterior variance β̃.
    Any sampler runs on it (DDIM for fewer steps).
    """

    default_target = "eps"

    def default_process(self) -> NoiseProcess:
        return DiscreteVP()

    def default_sampler(self, process: NoiseProcess) -> Sampler:
        return Ancestral(num_steps=process.num_timesteps or 1000)

    def likelihood_methods(self, dequantize: str = "none") -> tuple[LikelihoodEstimator, ...]:
        """DDPM's own number on 8-bit data is the variational bound (on a discrete grid); the PF-ODE always applies."""
        pf_ode = super().likelihood_methods(dequantize)
        if dequantize == "uniform8bit" and self.process.num_timesteps is not None:
            return (VariationalBound(self.score_model, self.process), *pf_ode)
        return pf_ode
