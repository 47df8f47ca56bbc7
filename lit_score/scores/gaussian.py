r"""The exact two-time model of Gaussian data: every process's probability-flow map in closed form.

For data x₀ ~ N(μ, diag(s²)) (the one-component case of :class:`~lit_score.data.mixture.GaussianMixtureDistribution`)
and any process x_t = α_t x₀ + σ_t ε, the marginal stays Gaussian and the probability-flow map is affine in x:

| symbol | meaning |
|---|---|
| μ, s | the data's mean and standard deviation (scalars or shaped like one sample; diagonal covariance) |
| v_t² = α_t² s² + σ_t² | the marginal variance: p_t = N(α_t μ, diag(v_t²)) |
| ∇ log p_t(x) = −(x − α_t μ)/v_t² | the exact score |
| D(x, t) = μ + (α_t s²/v_t²)(x − α_t μ) | Tweedie's E[x₀ given x_t = x] |
| dx/dt = α'_t μ + ((α_t α'_t s² + σ_t σ'_t)/v_t²)(x − α_t μ) | the probability-flow velocity |
| X_{t→s}(x) = α_s μ + (v_s/v_t)(x − α_t μ) | the flow map |

**Derivation of the map.** The probability-flow ODE is dx/dt = f x − ½ g² ∇ log p_t with f = α'/α and
g² = (σ²)' − 2 f σ² (Song et al. 2021, eq. 13; :class:`~lit_score.processes.NoiseProcess`). With y = x − α_t μ and
α' = f α, dy/dt = (f + ½ g²/v²)·y; and (v²)' = 2 f α² s² + (σ²)' = 2 f v² + g², so d log v/dt = f + ½ g²/v² too.
Hence y_t/v_t is constant along a path, which is the map above; it holds per coordinate for a diagonal covariance,
for every process whose α, σ are differentiable (VP, sub-VP, VE, EDM, the interpolant, VDM's learned schedule) and
for DDPM's discrete chain as lit-score defines it (log α interpolated linearly between steps, so α, σ are continuous
and piecewise differentiable). It is monotone and maps N(α_t μ, v_t²) onto N(α_s μ, v_s²), as the flow must.

:class:`GaussianFlowMap` offers the two-time interface of :class:`~lit_score.scores.flow_map.FlowMapScore`
(``two_time``, ``denoise(x, t, s)``, ``flow_map(x, t, s)``) and the ordinary one (``score``, ``predict``,
``velocity``, ``denoise(x, t)``), so the flow-map sampler, every ODE sampler and later few-step methods can take it
as the exact model or teacher. Its D̂(x, t, s) is the flow map written in the DDIM form of that module,
D̂ = (X_{t→s}(x) − (σ_s/σ_t)·x)/(α_s − α_t σ_s/σ_t), and D(x, t) where s = t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess
from lit_score.scores.function import ScoreFunction
from lit_score.utils import append_dims


class GaussianFlowMap(ScoreFunction):
    """The exact score, denoiser, velocity and flow map of N(μ, diag(s²)) data under ``process`` (module docstring).

    Args:
        process: the noise process.
        mean: μ, a number or a tensor shaped like one sample.
        std: s > 0, a number or a tensor shaped like one sample.
    """

    #: the capability a flow-map sampler asks for (as :class:`~lit_score.scores.flow_map.FlowMapScore`)
    two_time: bool = True
    #: unconditional: no class labels (what a distillation loss passes on to its teacher and target)
    labels = None

    def __init__(self, process: NoiseProcess, mean: Tensor | float = 0.0, std: Tensor | float = 1.0) -> None:
        self.process = process
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if not bool((self.std > 0).all()):
            raise ValueError("the Gaussian's std must be positive")

    def _terms(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(α_t, σ_t widened to x, x − α_t μ, v_t²) at (x, t)."""
        alpha, sigma = append_dims(self.process.alpha(t), x), append_dims(self.process.sigma(t), x)
        mean, std = self.mean.to(x), self.std.to(x)
        return alpha, sigma, x - alpha * mean, alpha**2 * std**2 + sigma**2

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """∇ₓ log p_t(x) = −(x − α_t μ)/v_t²."""
        _, _, centred, var = self._terms(x, t)
        return -centred / var

    __call__ = score

    def predict(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) = (D(x, t), (x − α_t D)/σ_t)."""
        alpha, sigma, centred, var = self._terms(x, t)
        x0 = self.mean.to(x) + alpha * self.std.to(x) ** 2 / var * centred
        return x0, (x - alpha * x0) / sigma

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """dx/dt = α'_t μ + ((α_t α'_t s² + σ_t σ'_t)/v_t²)(x − α_t μ)."""
        alpha, sigma, centred, var = self._terms(x, t)
        alpha_dot, sigma_dot = append_dims(self.process.alpha_dot(t), x), append_dims(self.process.sigma_dot(t), x)
        rate = (alpha * alpha_dot * self.std.to(x) ** 2 + sigma * sigma_dot) / var
        return alpha_dot * self.mean.to(x) + rate * centred

    def flow_map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """X_{t→s}(x) = α_s μ + (v_s/v_t)(x − α_t μ), for t, s (B,) in either order; written as
        x + (v_s/v_t − 1)(x − α_t μ) + (α_s − α_t)μ, so that X_{t→t}(x) = x exactly."""
        alpha_t, _, centred, var_t = self._terms(x, t)
        alpha_s, _, _, var_s = self._terms(x, s)
        return x + ((var_s / var_t).sqrt() - 1) * centred + (alpha_s - alpha_t) * self.mean.to(x)

    def denoise(self, x: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """D̂(x, t, s) of the DDIM form (module docstring); D(x, t) where s = t or s is None."""
        tweedie = self.predict(x, t)[0]
        if s is None:
            return tweedie
        ratio = self.process.sigma(s) / self.process.sigma(t)
        coef = self.process.alpha(s) - self.process.alpha(t) * ratio
        same = s == t
        jump = (self.flow_map(x, t, s) - append_dims(ratio, x) * x) / append_dims(torch.where(same, 1.0, coef), x)
        return torch.where(append_dims(same, x), tweedie, jump)

    def sample(self, n: int, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws of p_t = N(α_t μ, v_t²) in float64, shaped (n, *the shape of μ and s) ((n, 1) for
        scalars)."""
        sample_shape = torch.broadcast_shapes(self.mean.shape, self.std.shape) or (1,)
        z = torch.randn((n, *sample_shape), generator=generator, dtype=torch.float64)
        t = torch.full((n,), float(t), dtype=torch.float64)
        alpha, _, _, var = self._terms(z, t)
        return alpha * self.mean + var.sqrt() * z


__all__ = ["GaussianFlowMap"]
