"""Variance-preserving processes: continuous VP (linear, cosine), sub-VP, and DDPM's discrete β table.

Notation (Song et al. 2021; Kingma et al. 2021): β(t) = β_min + t(β_max − β_min), α(t) = exp(∫₀ᵗ −½β),
σ(t)² = 1 − α(t)² for VP and σ(t) = 1 − α(t)² for sub-VP; f(t) = −½β(t).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes.base import NoiseProcess


def _vp_sigma(log_alpha: Tensor) -> Tensor:
    """σ = √(1 − α²), computed stably from log α."""
    return (-torch.expm1(2 * log_alpha)).sqrt()


def _vp_log_snr(log_alpha: Tensor) -> Tensor:
    """λ = log α − ½ log(1 − α²)."""
    return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))


def _vp_log_alpha_from_log_snr(log_snr: Tensor) -> Tensor:
    """Inverse of λ(α) for VP: log α = −½ softplus(−2λ)."""
    return -0.5 * F.softplus(-2 * log_snr)


class _LinearBeta:
    """The linear β schedule shared by VP and sub-VP: log α(t) = −¼t²(β_max − β_min) − ½tβ_min."""

    beta_min: float
    beta_max: float

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """Solve ½t²Δ + tβ_min = −2 log α for t ≥ 0 (Δ = β_max − β_min)."""
        c, delta = -2 * log_alpha, self.beta_max - self.beta_min
        if delta == 0:
            return c / self.beta_min
        return 2 * c / (self.beta_min + (self.beta_min**2 + 2 * delta * c).sqrt())


class _VariancePreserving(NoiseProcess):
    """α² + σ² = 1: every marginal quantity from ``log_alpha(t)`` alone (VP and its discrete DDPM table), in the
    numerically careful forms above; g² = −2f holds for any VP drift."""

    def log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor) -> Tensor:
        return _vp_sigma(self.log_alpha(t))

    def log_snr(self, t: Tensor) -> Tensor:
        return _vp_log_snr(self.log_alpha(t))

    def g2(self, t: Tensor) -> Tensor:
        return -2 * self.f(t)


class VP(_LinearBeta, _VariancePreserving):
    """Variance-preserving SDE (Song et al. 2021), linear β or the cosine schedule of Nichol & Dhariwal (2021).

    The cosine schedule stops at t_max = 0.9946 by default, where α is still positive (as DPM-Solver does).
    """

    def __init__(
        self,
        schedule: Literal["linear", "cosine"] = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        cosine_s: float = 0.008,
        t_min: float = 1e-3,
        t_max: float | None = None,
    ) -> None:
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r}: use linear or cosine")
        if schedule == "linear" and not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}: score_sde uses 0.1 and 20")
        check_number("cosine_s", cosine_s, ge=0.0)
        super().__init__(t_min, t_max if t_max is not None else (1.0 if schedule == "linear" else 0.9946))
        self.schedule, self.beta_min, self.beta_max, self.cosine_s = schedule, beta_min, beta_max, cosine_s
        self._log_cos0 = math.log(math.cos(math.pi / 2 * cosine_s / (1 + cosine_s)))

    def log_alpha(self, t: Tensor) -> Tensor:
        if self.schedule == "linear":
            return _LinearBeta.log_alpha(self, t)
        s = self.cosine_s
        return torch.log(torch.cos(math.pi / 2 * (t + s) / (1 + s))) - self._log_cos0

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        log_alpha = _vp_log_alpha_from_log_snr(log_snr)
        if self.schedule == "linear":
            return self.t_from_log_alpha(log_alpha)
        s = self.cosine_s
        return 2 * (1 + s) / math.pi * torch.arccos(torch.exp(log_alpha + self._log_cos0)) - s

    def f(self, t: Tensor) -> Tensor:
        if self.schedule == "linear":
            return -0.5 * self.beta(t)
        s = self.cosine_s
        return -math.pi / (2 * (1 + s)) * torch.tan(math.pi / 2 * (t + s) / (1 + s))

    def extra_repr(self) -> str:
        betas = f"beta_min={self.beta_min:g}, beta_max={self.beta_max:g}"
        return f"schedule={self.schedule}, {betas}, " + super().extra_repr()


class SubVP(_LinearBeta, NoiseProcess):
    """Sub-VP SDE (Song et al. 2021, eq. 29): σ(t) = 1 − α(t)², g² = β(t)(1 − α(t)⁴)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}: score_sde uses 0.1 and 20")
        super().__init__(t_min, t_max)
        self.beta_min, self.beta_max = beta_min, beta_max

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # e^λ (1 − α²) = α  ⇒  α = 2e^λ / (1 + √(1 + 4e^{2λ}))
        alpha = 2 * log_snr.exp() / (1 + (1 + 4 * (2 * log_snr).exp()).sqrt())
        return self.t_from_log_alpha(alpha.log())

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, " + super().extra_repr()


def ddpm_betas(
    num_timesteps: int, schedule: str, beta_start: float, beta_end: float, cosine_s: float = 0.008
) -> Tensor:
    """DDPM's β table in float64: linear (Ho et al. 2020), scaled_linear, or cosine (Nichol & Dhariwal 2021, eq. 17)."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule in ("linear", "scaled_linear") and not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"DDPM betas need 0 < beta_start <= beta_end < 1, got beta_start={beta_start},"
                         f" beta_end={beta_end}: the paper uses 1e-4 and 0.02")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown DDPM schedule {schedule!r}: use linear, scaled_linear or cosine")


class DiscreteVP(_VariancePreserving):
    """DDPM's discrete chain as a VP process: step n ∈ {1..N} is time t = n/N with α(t)² = ᾱ_n exactly.

    Between grid points log α is interpolated linearly in t, so f = d log α/dt is piecewise constant
    and g² = −2f (a VP process). Training draws n uniformly from {1..N}; grids snap to n/N.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        schedule: Literal["linear", "scaled_linear", "cosine"] = "linear",
        cosine_s: float = 0.008,
    ) -> None:
        check_number("num_timesteps", num_timesteps, ge=1, integer=True)
        check_number("cosine_s", cosine_s, ge=0.0)
        super().__init__(1.0 / num_timesteps, 1.0)
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        betas = ddpm_betas(num_timesteps, schedule, beta_start, beta_end, cosine_s)
        log_alpha = 0.5 * torch.cumsum(torch.log1p(-betas), 0)
        self.register_buffer("betas", betas)
        self.register_buffer("log_alpha_table", torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha]))

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_n for n = 1..N, exactly as DDPM defines it."""
        return (2 * self.log_alpha_table[1:]).exp()

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        pos = t.to(torch.float64) * self.num_timesteps
        k = pos.floor().clamp(0, self.num_timesteps - 1).long()
        return k, pos - k

    def log_alpha(self, t: Tensor) -> Tensor:
        k, w = self._segment(t)
        table = self.log_alpha_table
        return ((1 - w) * table[k] + w * table[k + 1]).to(t.dtype)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        target = _vp_log_alpha_from_log_snr(log_snr.to(torch.float64))
        table = -self.log_alpha_table  # increasing
        k = (torch.searchsorted(table, -target.contiguous()) - 1).clamp(0, self.num_timesteps - 1)
        w = (-target - table[k]) / (table[k + 1] - table[k])
        return ((k + w) / self.num_timesteps).to(log_snr.dtype)

    def f(self, t: Tensor) -> Tensor:
        k, _ = self._segment(t)
        table = self.log_alpha_table
        return (self.num_timesteps * (table[k + 1] - table[k])).to(t.dtype)

    def sample_time(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n uniform on {1..N}, returned as t = n/N."""
        device = device if device is not None else self.device
        n = torch.randint(1, self.num_timesteps + 1, (batch,), generator=generator, device=device)
        return n.to(torch.get_default_dtype()) / self.num_timesteps

    def discretize(self, t: Tensor) -> Tensor:
        n = (t * self.num_timesteps).round().clamp(1, self.num_timesteps)
        return n / self.num_timesteps

    def c_noise(self, t: Tensor) -> Tensor:
        """DDPM's integer timestep index n − 1 ∈ {0..N−1}."""
        return t * self.num_timesteps - 1

    def extra_repr(self) -> str:
        return f"num_timesteps={self.num_timesteps}, schedule={self.schedule}"
