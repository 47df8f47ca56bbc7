"""Variance-exploding processes: the continuous geometric VE SDE and NCSN's discrete σ ladder.

σ(t) = σ_min (σ_max/σ_min)^t, α = 1, f = 0, g² = dσ²/dt = 2σ² log(σ_max/σ_min) (Song et al. 2021, eq. 30).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.processes.base import NoiseProcess


class VE(NoiseProcess):
    """Variance-exploding SDE with a geometric noise schedule (SMLD / NCSN in continuous time)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5, t_max: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(t_min, t_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def log_snr(self, t: Tensor) -> Tensor:
        return -(math.log(self.sigma_min) + t * self._log_ratio)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return (-log_snr - math.log(self.sigma_min)) / self._log_ratio

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Time at which the noise level is σ."""
        return self.t_from_log_snr(-sigma.log())

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        return 2 * self._log_ratio * self.sigma(t) ** 2

    def c_noise(self, t: Tensor) -> Tensor:
        """log σ(t), as NCSN++ conditions on it."""
        return -self.log_snr(t)

    def with_sigma_max(self, sigma_max: float) -> VE:
        return VE(self.sigma_min, sigma_max, self.t_min, self.t_max).to(self.device)

    def extra_repr(self) -> str:
        return f"sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, " + super().extra_repr()


class DiscreteVE(VE):
    """NCSN's geometric ladder σ₁ > … > σ_L (Song & Ermon 2019) as the VE process at t_k = k/(L − 1).

    Level i (1-based, σ₁ largest) sits at t = (L − i)/(L − 1); training draws a level uniformly and
    grids snap onto the ladder.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_levels: int = 232) -> None:
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        super().__init__(sigma_min, sigma_max, t_min=0.0, t_max=1.0)
        self.num_levels = num_levels

    @property
    def sigmas(self) -> Tensor:
        """The ladder σ₁ > … > σ_L."""
        return self.sigma(torch.linspace(1, 0, self.num_levels, dtype=torch.float64, device=self.device))

    def sample_time(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """A level drawn uniformly from the ladder."""
        device = device if device is not None else self.device
        k = torch.randint(0, self.num_levels, (batch,), generator=generator, device=device)
        return k.to(torch.get_default_dtype()) / (self.num_levels - 1)

    def discretize(self, t: Tensor) -> Tensor:
        return (t * (self.num_levels - 1)).round().clamp(0, self.num_levels - 1) / (self.num_levels - 1)

    def with_sigma_max(self, sigma_max: float) -> DiscreteVE:
        """The ladder rebuilt with σ₁ = ``sigma_max`` (σ_L and the number of levels unchanged)."""
        return DiscreteVE(self.sigma_min, sigma_max, self.num_levels).to(self.device)

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, " + super().extra_repr()
