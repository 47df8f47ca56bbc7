r"""Algorithm 2 of Karras et al. (2022): Heun's method with stochastic churn, for any process.

EDM's ODE is written for x_t = x₀ + σ ε. A general process x_t = α x₀ + σ ε is that one in the scaled
variable x̃ = x/α with noise level σ̃ = σ/α = e^{−λ} (Karras et al. 2022, eq. 4 with s(t) = α):
dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ with D = x̂₀. The sampler runs in (x̃, σ̃) over the process's grid (Karras ρ-spacing
by default, i.e. eq. 5 in σ̃) and maps σ̃ back to time by the inverse log-SNR. For α = 1 (VE, EDM) it is
EDM's sampler exactly.

| symbol | meaning |
|---|---|
| γ_i = min(S_churn/N, √2 − 1) if S_min ≤ σ̃_i ≤ S_max else 0 | churn of step i, N = ``num_steps`` |
| σ̂ = (1 + γ_i) σ̃_i, x̂ = x̃ + √(σ̂² − σ̃_i²)·S_noise·z | noise raised before the step (lines 4–6) |
| x̃_{i+1} = Heun step σ̂ → σ̃_{i+1} of dx̃/dσ̃ | lines 7–10 |

With ``denoise`` the grid stops at σ̃_{N−1} = σ̃(t_min) and the last step, EDM's Euler step to σ = 0, is
x̂₀ at (x̂, σ̂), i.e. the base's final denoise: num_steps = 18 is EDM's 35 NFE.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.ode import heun_step
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims, randn_like


def churn(x: Tensor, sigma: Tensor, gamma: Tensor | float, s_noise: float, generator: torch.Generator | None):
    """(x̂, σ̂): raise the noise level σ → σ̂ = (1 + γ)σ with fresh noise (Karras et al. 2022, Algorithm 2, l. 4–6)."""
    sigma_hat = sigma * (1 + gamma)
    noise = append_dims((sigma_hat**2 - sigma**2).sqrt() * s_noise, x) * randn_like(x, generator)
    return x + noise, sigma_hat


def edm_denoiser(score_fn: ScoreFn, process: NoiseProcess, sampler: Sampler):
    """(time of σ̃, dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃) for any process, with x = α x̃ and σ̃ = e^{−λ}; D = x̂₀ as
    ``sampler.denoised`` forms it (thresholded when the sampler is)."""

    def time(sigma: Tensor) -> Tensor:
        return process.t_from_log_snr(-sigma.log())

    def derivative(sigma: Tensor, x_tilde: Tensor) -> Tensor:
        t = time(sigma)
        x0 = sampler.denoised(score_fn, process, append_dims(process.alpha(t), x_tilde) * x_tilde, t)[0]
        return (x_tilde - x0) / append_dims(sigma, x_tilde)

    return time, derivative


class EDMHeun(Sampler):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2); S_churn = 0 is Algorithm 1 (deterministic).

    The NFE is 2·(num_steps − 1) + 1 with ``denoise`` (EDM's count), 2·num_steps without. ``thresholding``
    (``StaticThreshold``, ``DynamicThreshold``) applies to D = x̂₀ in every derivative and at the final denoise.
    """

    steps_on_grid = True

    def __init__(
        self,
        num_steps: int = 18,
        S_churn: float = 0.0,
        S_min: float = 0.0,
        S_max: float = math.inf,
        S_noise: float = 1.0,
        spacing: Spacing | None = "karras",
        rho: float = 7.0,
        denoise: bool = True,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        check_number("S_churn", S_churn, ge=0.0)
        check_number("S_noise", S_noise, ge=0.0)
        check_number("S_min", S_min, ge=0.0)
        check_number("S_max", S_max, ge=S_min, allow_inf=True)
        check_number("rho", rho, gt=0.0)
        self.S_churn, self.S_min, self.S_max, self.S_noise, self.rho = S_churn, S_min, S_max, S_noise, rho
        self.thresholding = thresholding

    def grid(self, process: NoiseProcess, device: torch.device) -> Tensor:
        """Decreasing times t_max → t_min (Karras ρ-spacing of σ̃ by default)."""
        return process.time_grid(self.num_steps - int(self.denoise), self.spacing, rho=self.rho, device=device)

    @property
    def reversible(self) -> bool:
        """Without churn (Algorithm 1) and thresholding: Heun in σ̃ steps up as well as down (x̃ = x/α at either
        end)."""
        return self.S_churn == 0 and self.thresholding is None

    @property
    def ode_step(self) -> bool:
        """``reversible``: :meth:`flow_step` is then one deterministic Heun step of the PF-ODE in (x̃, σ̃)."""
        return self.reversible

    def flow_step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """One Heun step t → s (per-sample times (B,), s > 0) of dx̃/dσ̃ in x̃ = x/α, σ̃ = e^{−λ} (Algorithm 1, lines
        4–8 without churn): 2 NFE (a distillation teacher's step, ``ode_step``)."""
        if not self.ode_step:
            raise ValueError("EDMHeun takes a single deterministic step only without churn or thresholding")
        derivative = edm_denoiser(score_fn, process, self)[1]
        sigma_t, sigma_s = (-process.log_snr(t)).exp(), (-process.log_snr(s)).exp()
        x = heun_step(derivative, sigma_t, sigma_s, x / append_dims(process.alpha(t), x))
        return x * append_dims(process.alpha(s), x)

    def interval(self) -> Sampler:
        """One interval, keeping the full run's churn γ = min(S_churn/num_steps, √2 − 1) per step."""
        return super().interval().with_settings(S_churn=self.S_churn / self.num_steps)

    def gammas(self, sigmas: Tensor) -> Tensor:
        """γ_i for each noise level σ̃_i (a tensor: no host synchronisation)."""
        inside = (sigmas >= self.S_min) & (sigmas <= self.S_max)
        return inside * min(self.S_churn / self.num_steps, math.sqrt(2) - 1)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        grid = self.grid(process, x.device)
        sigmas = (-process.log_snr(grid)).exp()
        gammas = self.gammas(sigmas)
        time, derivative = edm_denoiser(score_fn, process, self)
        x = x / append_dims(process.alpha(full_like_t(x, grid[0])), x)
        for i in self.steps(len(grid) - 1, progress, "edm heun"):
            sigma, sigma_hat = full_like_t(x, sigmas[i]), full_like_t(x, sigmas[i])
            if self.S_churn > 0:
                x, sigma_hat = churn(x, sigma, gammas[i], self.S_noise, generator)
            x = heun_step(derivative, sigma_hat, full_like_t(x, sigmas[i + 1]), x)
            if callback is not None:
                alpha_next = append_dims(process.alpha(full_like_t(x, grid[i + 1])), x)
                callback({"step": i, "t": full_like_t(x, grid[i]), "sigma": sigma_hat, "x": alpha_next * x})
        sigma = full_like_t(x, sigmas[-1])
        if not self.denoise:
            return x * append_dims(process.alpha(full_like_t(x, grid[-1])), x)
        if self.S_churn > 0:
            x, sigma = churn(x, sigma, gammas[-1], self.S_noise, generator)
        t = time(sigma)
        return self.finish(score_fn, process, x * append_dims(process.alpha(t), x), t)


__all__ = ["EDMHeun", "churn", "edm_denoiser"]
