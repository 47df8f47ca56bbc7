r"""The parameterisations of a network's output (targets), their EDM preconditioning and training targets.

With x_t = α x₀ + σ ε, every parameterisation is a linear map of the pair (x̂₀, ε̂):

| target     | network predicts               | recovered as                                              |
|------------|--------------------------------|-----------------------------------------------------------|
| ``eps``    | ε (Ho et al. 2020)             | x̂₀ = (x − σ ε̂)/α                                         |
| ``x0``     | x₀                             | ε̂ = (x − α x̂₀)/σ                                         |
| ``v``      | v = α ε − σ x₀ (Salimans & Ho) | x̂₀ = (α x − σ v)/(α² + σ²),  ε̂ = (σ x + α v)/(α² + σ²)   |
| ``score``  | ∇ log p_t = −ε/σ               | ε̂ = −σ ŝ   (optionally ŝ = out/σ, Song & Ermon 2020)      |
| ``velocity`` | dx/dt = α' x₀ + σ' ε (flow matching) | solve [[α, σ], [α', σ']] [x̂₀, ε̂] = [x, v]          |
| ``edm``    | F of D = c_skip x̃ + c_out F(c_in x̃) (Karras et al. 2022) | x̂₀ = D, with σ_data (below)               |

**Preconditioning.** Each row is affine in the network's output F, so each is one row of EDM's Table 1 written in
the scaled variable x̃ = x/α with noise level σ̃ = σ/α = e^{−λ} (Karras et al. 2022, eq. 4 with s = α):

    x̂₀ = D(x̃; σ̃) = c_skip·x̃ + c_out·F(c_in·x̃; c_noise(t))

| target                    | c_skip                 | c_out                      | c_in                 |
|---------------------------|------------------------|----------------------------|----------------------|
| ``eps``                   | 1                      | −σ̃                         | α                    |
| ``x0``                    | 0                      | 1                          | α                    |
| ``v``                     | α²/(α² + σ²)           | −σ/(α² + σ²)               | α                    |
| ``score`` (F = σ·s if scaled, else s) | 1          | σ̃ (scaled) / σ̃·σ           | α                    |
| ``velocity``              | α σ'/(α σ' − σ α')     | −σ/(α σ' − σ α')           | α                    |
| ``edm``                   | σ_d²/(σ̃² + σ_d²)       | σ̃ σ_d/√(σ̃² + σ_d²)         | 1/√(σ̃² + σ_d²)       |

On VP (α² + σ² = 1, so α = 1/√(1 + σ̃²)) ``eps`` is the table's "VP" column, on VE (α = 1) the scaled ``score``
is its "VE" column; ``edm`` is its "EDM" column on every process (in x̃ and σ̃, as :class:`~lit_score.samplers.EDMHeun`
integrates). The noise conditioning c_noise(t) is always the process's (¼ ln σ for :class:`~lit_score.processes.EDM`
and (M − 1)t for DDPM's chain, as the table; NCSN++-style VE conditions on ln σ where the table has ln ½σ).
Since x̂₀ − x₀ = c_out·(F − F*) and ε̂ − ε = −(α/σ)(x̂₀ − x₀), an error on F is an ε error scaled by
(c_out/σ̃)²: :meth:`NetworkScore.eps_error_scale` gives that factor for the raw output, which is how a loss
weighting stated on ε-MSE (:mod:`lit_score.losses.weighting`) applies to any target.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.utils import append_dims

Target = Literal["eps", "x0", "v", "score", "velocity", "edm"]
TARGETS = ("eps", "x0", "v", "score", "velocity", "edm")


class Parameterisation:
    """The maths of the table above for :class:`~lit_score.scores.NetworkScore` (a base of it): (x̂₀, ε̂) from a raw
    output, the preconditioning (c_skip, c_out, c_in), the ε-error scale and the training target. Uses the score
    model's ``target``, ``process``, ``scale_by_sigma`` and ``sigma_data``."""

    def preconditioning(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) of this target at t, each (B,), in x̃ = x/α and σ̃ = σ/α (the module's table), with
        c_out relative to the network's output F (before a ``scale_by_sigma`` division)."""
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        sigma_t, one = sigma / alpha, torch.ones_like(t)
        if self.target == "edm":
            norm = (sigma_t**2 + self.sigma_data**2).sqrt()
            return self.sigma_data**2 / norm**2, sigma_t * self.sigma_data / norm, 1 / norm
        if self.target == "eps":
            return one, -sigma_t, alpha
        if self.target == "x0":
            return torch.zeros_like(t), one, alpha
        if self.target == "v":
            norm = alpha**2 + sigma**2
            return alpha**2 / norm, -sigma / norm, alpha
        if self.target == "score":
            return one, sigma_t if self.scale_by_sigma else sigma_t * sigma, alpha
        alpha_dot, sigma_dot = self.process.alpha_dot(t), self.process.sigma_dot(t)
        det = alpha * sigma_dot - sigma * alpha_dot
        return alpha * sigma_dot / det, -sigma / det, alpha

    def eps_error_scale(self, t: Tensor) -> Tensor:
        """r(t), (B,), with ‖raw − training_target‖² = r·‖ε̂ − ε‖²: (c_out/σ̃)² for the raw output (the one place a
        weighting on ε-MSE is turned into one on this target's regression)."""
        c_out = self.preconditioning(t)[1]
        if self.scale_by_sigma:
            c_out = c_out * self.process.sigma(t)  # raw = F/σ: its c_out is σ times F's
        sigma_t = self.process.sigma(t) / self.process.alpha(t)
        return (sigma_t / c_out) ** 2

    def _coefs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return append_dims(self.process.alpha(t), x), append_dims(self.process.sigma(t), x)

    def _predict(self, x: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self._coefs(x, t)
        if self.target == "eps":
            return (x - sigma * out) / alpha, out
        if self.target == "x0":
            return out, (x - alpha * out) / sigma
        if self.target == "v":
            norm = alpha**2 + sigma**2
            return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
        if self.target == "score":
            eps = -sigma * out
            return (x - sigma * eps) / alpha, eps
        if self.target == "edm":
            c_skip, c_out, _ = (append_dims(c, x) for c in self.preconditioning(t))
            x0 = c_skip * x / alpha + c_out * out
            return x0, (x - alpha * x0) / sigma
        alpha_dot, sigma_dot = append_dims(self.process.alpha_dot(t), x), append_dims(self.process.sigma_dot(t), x)
        det = alpha * sigma_dot - sigma * alpha_dot
        return (sigma_dot * x - sigma * out) / det, (alpha * out - alpha_dot * x) / det

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the raw output should equal for x_t = α x₀ + σ ε (before any 1/σ output scaling)."""
        alpha, sigma = self._coefs(x0, t)
        if self.target == "eps":
            return noise
        if self.target == "x0":
            return x0
        if self.target == "v":
            return alpha * noise - sigma * x0
        if self.target == "score":
            return -noise / sigma
        if self.target == "edm":  # F* = (x₀ − c_skip·x̃)/c_out with x̃ = x₀ + σ̃ ε
            c_skip, c_out, _ = (append_dims(c, x0) for c in self.preconditioning(t))
            return ((1 - c_skip) * x0 - c_skip * (sigma / alpha) * noise) / c_out
        return append_dims(self.process.alpha_dot(t), x0) * x0 + append_dims(self.process.sigma_dot(t), x0) * noise
