"""DDPM (Ho et al. 2020): ε-prediction on the discrete β chain, L_simple, ancestral sampling."""

from __future__ import annotations

from torch import Tensor

from lit_score.metrics.likelihood import ddpm_vlb
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

    def likelihood_estimators(self, dequantize: str = "none") -> tuple[str, ...]:
        """DDPM's own number on 8-bit data is the variational bound (on a discrete grid); the PF-ODE always applies."""
        if dequantize == "uniform8bit" and self.process.num_timesteps is not None:
            return ("vlb", "pf_ode")
        return ("pf_ode",)

    def estimate_likelihood(self, estimator: str, x: Tensor, dequantize: str, generator, options: dict):
        """``vlb``: :func:`~lit_score.metrics.ddpm_vlb` on the 8-bit data itself (options: variance, clip_denoised)."""
        if estimator != "vlb":
            return super().estimate_likelihood(estimator, x, dequantize, generator, options)
        options = dict(options)
        variance = options.pop("variance", "learned" if self.score_model.learned_variance else "beta_tilde")
        x = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1  # the bound's bins are the 8-bit grid: data on it
        result = ddpm_vlb(self.score_model, self.process, x, variance=variance, generator=generator, **options)
        return result.estimate(x[0].numel(), variance)
