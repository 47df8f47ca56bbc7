"""The EDM process of Karras et al. (2022): α = 1, σ(t) = t."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes.base import NoiseProcess


class EDM(NoiseProcess):
    """σ(t) = t on [σ_min, σ_max]; training noise ln σ ~ N(P_mean, P_std²); Karras ρ-spaced grids by default."""

    default_spacing = "karras"

    def __init__(
        self, sigma_min: float = 0.002, sigma_max: float = 80.0, p_mean: float = -1.2, p_std: float = 1.2
    ) -> None:
        check_number("p_mean", p_mean)
        check_number("p_std", p_std, gt=0.0)
        super().__init__(sigma_min, sigma_max)
        self.p_mean, self.p_std = p_mean, p_std

    def with_sigma_max(self, sigma_max: float) -> EDM:
        """This EDM process with σ_max replaced (its σ_min and training σ distribution kept)."""
        return EDM(self.t_min, sigma_max, self.p_mean, self.p_std).to(self.device)  # t = σ

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def log_snr(self, t: Tensor) -> Tensor:
        return -t.log()

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return (-log_snr).exp()

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        return 2 * t

    def sample_time(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """ln σ ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1)."""
        device = device if device is not None else self.device
        return (self.p_mean + self.p_std * torch.randn(batch, generator=generator, device=device)).exp()

    def c_noise(self, t: Tensor) -> Tensor:
        """¼ ln σ (Karras et al. 2022, Table 1)."""
        return 0.25 * t.log()
