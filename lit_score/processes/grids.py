"""Time grids as small pure functions (k-diffusion's ``get_sigmas_karras`` habit).

Every function returns ``n + 1`` values ordered from the noisiest end to the cleanest end.
Grids over log-SNR λ = log(α/σ) are converted to times by ``NoiseProcess.t_from_log_snr``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_grid(t_max: float, t_min: float, n: int) -> Tensor:
    """Uniformly spaced times t_max → t_min (DDPM / score_sde)."""
    return torch.linspace(t_max, t_min, n + 1, dtype=torch.float64)


def quadratic_grid(t_max: float, t_min: float, n: int) -> Tensor:
    """Times uniform in √t, denser near t_min (the "quad" spacing of Song et al. 2021, DDIM)."""
    return torch.linspace(t_max**0.5, t_min**0.5, n + 1, dtype=torch.float64) ** 2


def karras_log_snr(lam_min: float, lam_max: float, n: int, rho: float = 7.0) -> Tensor:
    """Log-SNR of the Karras et al. (2022) grid, eq. (5): σ_i = (σ_max^{1/ρ} + i/n (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.

    The EDM noise level is σ/α = exp(−λ), so σ_max = exp(−lam_min) and σ_min = exp(−lam_max).
    """
    sigma_max, sigma_min = torch.tensor([-lam_min, -lam_max], dtype=torch.float64).exp()
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return -sigmas.log()


def uniform_log_snr(lam_min: float, lam_max: float, n: int) -> Tensor:
    """Log-SNR uniformly spaced from lam_min to lam_max (DPM-Solver's "logSNR" skip type)."""
    return torch.linspace(lam_min, lam_max, n + 1, dtype=torch.float64)


def kl_optimal_log_snr(lam_min: float, lam_max: float, n: int) -> Tensor:
    """Log-SNR of Align Your Steps' Gaussian-data grid (Sabour et al. 2024, the closed form for Gaussian data, ComfyUI's
    ``kl_optimal``): linear in arctan σ̃,

        σ̃_i = tan((1 − i/n)·arctan σ̃_max + (i/n)·arctan σ̃_min),      σ̃ = σ/α = exp(−λ).

    With θ = arctan σ̃ (the angle of a variance-preserving process, α = cos θ, σ = sin θ), the grid is uniform in θ.
    For unit-variance Gaussian data a first-order step (DDIM, Euler in σ̃ on x/α) with the exact denoiser maps the
    normalised state y = x cos θ / α to cos(θ_s − θ_t)·y, so the output's variance Π cos²Δθ_i, hence its KL to the
    data, is best with every Δθ_i equal (log cos is concave): the sense in which this grid is optimal (derived and
    checked in tests/test_schedules.py; the paper states it for isotropic unit-variance Gaussian data).
    σ̃_max = ∞ (a flow's α(1) = 0) gives θ = π/2, which the arctan handles.
    """
    theta_max, theta_min = torch.tensor([-lam_min, -lam_max], dtype=torch.float64).exp().atan()
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    return -torch.tan((1 - ramp) * theta_max + ramp * theta_min).log()
