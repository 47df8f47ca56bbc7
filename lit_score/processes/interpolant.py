"""The linear interpolant of flow matching / rectified flow: x_t = (1 − t)·x₀ + t·ε."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.processes.base import NoiseProcess


class Interpolant(NoiseProcess):
    """α = 1 − t, σ = t (Lipman et al. 2023; Liu et al. 2023); the velocity is ε − x₀.

    The ends are kept a hair inside [0, 1] (default 1e-3) so that the log-SNR and the SDE coefficients
    f = −1/(1 − t), g² = 2t/(1 − t) stay finite; the prior N(0, σ(t_max)²) then differs from the exact
    marginal by α(t_max)·x₀ = 1e-3·x₀.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1 - 1e-3) -> None:
        super().__init__(t_min, t_max)

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def log_snr(self, t: Tensor) -> Tensor:
        return torch.log1p(-t) - t.log()

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.sigmoid(-log_snr)

    def f(self, t: Tensor) -> Tensor:
        return -1 / (1 - t)

    def g2(self, t: Tensor) -> Tensor:
        return 2 * t / (1 - t)

    def alpha_dot(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def c_noise(self, t: Tensor) -> Tensor:
        return 1000.0 * t
