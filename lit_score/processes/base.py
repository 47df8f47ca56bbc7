r"""The noise-process interface.

A process is the forward corruption x_t = α(t)·x₀ + σ(t)·ε for t ∈ [t_min, t_max], equivalently the
linear SDE dx = f(t)·x dt + g(t) dw with

    f(t) = d log α / dt,        g(t)² = dσ²/dt − 2 f(t) σ(t)²          (Kingma et al. 2021, eq. 17).

Subclasses give α(t), σ(t) and the inverse of the log-SNR λ(t) = log(α/σ); closed forms of f and g²
are optional (the base differentiates log α and σ² with forward-mode autograd). Everything a sampler
needs is derived here once: the reverse-time drift (Song et al. 2021, eq. 6 and the probability-flow
ODE, eq. 13), α'(t), σ'(t), time grids and the prior.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.processes.grid_file import load_grid
from lit_score.processes.grids import (
    karras_log_snr,
    kl_optimal_log_snr,
    quadratic_grid,
    uniform_grid,
    uniform_log_snr,
)
from lit_score.utils import append_dims, batch_sum

SpacingName = Literal["uniform", "quadratic", "karras", "logsnr", "kl_optimal"]
SPACINGS: tuple[str, ...] = get_args(SpacingName)
#: a spacing's name, or the path of a saved grid file (``*.json``, :mod:`lit_score.processes.grid_file`)
Spacing = SpacingName | str


def check_spacing(spacing: Spacing | None) -> Spacing | None:
    """``spacing`` when it is None, a name of :data:`SPACINGS` or a ``.json`` path (read when a grid is made);
    ValueError naming the choices otherwise (a misspelt name fails here, not at sampling time)."""
    if spacing is None or spacing in SPACINGS:
        return spacing
    if isinstance(spacing, (str, os.PathLike)) and str(spacing).endswith(".json"):
        return str(spacing)
    raise ValueError(f"unknown time spacing {spacing!r}: use {', '.join(SPACINGS)} or the path of a grid file (.json,"
                     " written by `lit-score grid`)")


class NoiseProcess(nn.Module, ABC):
    """Forward noising process x_t = α(t)·x₀ + σ(t)·ε; an nn.Module holding only buffers."""

    #: spacing used by :meth:`time_grid` when none is given
    default_spacing: Spacing = "uniform"
    #: N of a discrete grid t = n/N the model is trained on (DDPM's chain), None for a continuous process
    num_timesteps: int | None = None
    #: L of a discrete ladder of noise levels σ₁ > … > σ_L (NCSN's DiscreteVE), None for a continuous process
    num_levels: int | None = None
    #: the schedule has parameters trained with the model (VDM's LearnedVP: ``shape(t)``, ``gamma_from_shape``)
    learnable_schedule: bool = False

    def __init__(self, t_min: float, t_max: float) -> None:
        super().__init__()
        check_number("t_min", t_min, ge=0.0)
        check_number("t_max", t_max, gt=0.0)
        if not 0 <= t_min < t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    # --- primitive marginals ------------------------------------------------------------------
    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale α(t), shape (B,)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale σ(t), shape (B,)."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`."""

    def log_alpha(self, t: Tensor) -> Tensor:
        """log α(t)."""
        return self.alpha(t).log()

    def log_snr(self, t: Tensor) -> Tensor:
        """λ(t) = log(α(t)/σ(t)), decreasing in t."""
        return self.log_alpha(t) - self.sigma(t).log()

    # --- SDE coefficients ------------------------------------------------------------------------
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient f(t) = d log α / dt, shape (B,)."""
        return torch.func.jvp(self.log_alpha, (t,), (torch.ones_like(t),))[1]

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)² = dσ²/dt − 2 f σ², shape (B,)."""
        sigma2, dsigma2 = torch.func.jvp(lambda s: self.sigma(s) ** 2, (t,), (torch.ones_like(t),))
        return dsigma2 - 2 * self.f(t) * sigma2

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward SDE drift f(t)·x."""
        return append_dims(self.f(t), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        """Forward SDE diffusion g(t), shape (B,)."""
        return self.g2(t).clamp_min(0).sqrt()

    def alpha_dot(self, t: Tensor) -> Tensor:
        """dα/dt = α·f."""
        return self.alpha(t) * self.f(t)

    def sigma_dot(self, t: Tensor) -> Tensor:
        """dσ/dt = (g² + 2 f σ²) / (2σ)."""
        sigma = self.sigma(t)
        return (self.g2(t) + 2 * self.f(t) * sigma**2) / (2 * sigma)

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor, probability_flow: bool = False) -> Tensor:
        """Drift of the reverse SDE f·x − g²·s, or of the probability-flow ODE f·x − ½g²·s (Song et al. 2021)."""
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - append_dims(weight * self.g2(t), x) * score

    def with_sigma_max(self, sigma_max: float) -> NoiseProcess:
        """A new process of the same class and settings with σ_max replaced (NCSN's σ₁ from the data); only a
        variance-exploding process has one."""
        raise ValueError(f"{type(self).__name__} has no sigma_max: sigma_max_from_data needs a VE (or EDM) process")

    # --- marginals, prior -------------------------------------------------------------------------
    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample of the marginal: x_t = α(t)·x₀ + σ(t)·ε."""
        return append_dims(self.alpha(t), x0) * x0 + append_dims(self.sigma(t), x0) * noise

    @property
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, σ(t_max)² I)."""
        return float(self.sigma(torch.tensor([self.t_max], dtype=torch.float64, device=self.device)).item())

    def prior_sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """Draw from the prior N(0, σ(t_max)² I)."""
        device = device if device is not None else self.device
        return self.prior_std * torch.randn(shape, generator=generator, device=device)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """Log-density of the prior, shape (B,)."""
        std = self.prior_std
        dim = z[0].numel()
        return -0.5 * dim * math.log(2 * math.pi * std**2) - batch_sum(z**2) / (2 * std**2)

    # --- times ------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the process' buffers."""
        return self._device_probe.device

    def sample_time(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training-time distribution: uniform on [t_min, t_max]."""
        device = device if device is not None else self.device
        u = torch.rand(batch, generator=generator, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    def discretize(self, t: Tensor) -> Tensor:
        """Snap times onto the grid the model was trained on (identity for continuous processes)."""
        return t

    def c_noise(self, t: Tensor) -> Tensor:
        """The conditioning value handed to the network for time t (default 999·t, as score_sde for VP)."""
        return 999.0 * t

    def time_grid(
        self, n_steps: int, spacing: Spacing | None = None, rho: float = 7.0, device: torch.device | None = None
    ) -> Tensor:
        """``n_steps + 1`` float64 times from t_max to t_min (fewer if a discrete process merges steps).

        ``spacing`` names a closed form (:data:`SPACINGS`: uniform, quadratic, Karras ρ, log-SNR-uniform, and Align
        Your Steps' Gaussian-data ``kl_optimal``, linear in arctan σ̃) or is the path of a saved grid file, whose
        times come back exactly after :meth:`~lit_score.processes.grid_file.StoredGrid.times_for` has checked them
        against this process and ``n_steps``.

        Decreasing, except inside a reversed :meth:`window` (t_max < t_min there): then it is the forward grid of the
        same two ends read backwards, point for point (so an ODE sampler encodes and decodes on one grid).
        """
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        spacing = spacing or self.default_spacing
        hi, lo = max(self.t_max, self.t_min), min(self.t_max, self.t_min)
        if spacing == "uniform":
            t = uniform_grid(hi, lo, n_steps)
        elif spacing == "quadratic":
            t = quadratic_grid(hi, lo, n_steps)
            t[0], t[-1] = hi, lo  # (√t)² is t only up to rounding: the ends are exact
        elif spacing in ("karras", "logsnr", "kl_optimal"):
            ends = torch.tensor([hi, lo], dtype=torch.float64, device=self.device)
            lam_min, lam_max = self.log_snr(ends).tolist()
            if spacing == "karras":
                lam = karras_log_snr(lam_min, lam_max, n_steps, rho)
            else:
                lam = (uniform_log_snr if spacing == "logsnr" else kl_optimal_log_snr)(lam_min, lam_max, n_steps)
            t = self.t_from_log_snr(lam.to(self.device)).cpu()
            t[0], t[-1] = hi, lo
        else:
            t = load_grid(check_spacing(spacing)).times_for(self, n_steps, f"grid file {spacing}").cpu()
        t = torch.unique_consecutive(self.discretize(t.to(self.device)))
        t = t.flip(0) if self.t_max < self.t_min else t
        return t.to(device=device if device is not None else self.device, dtype=torch.float64)

    @contextmanager
    def window(self, t_start: float, t_end: float) -> Iterator[NoiseProcess]:
        """Inside the block (t_max, t_min) = (t_start, t_end): any sampler then runs from t_start to t_end unchanged.

        This is how control runs samplers over part of the range or backwards (DESIGN.md 3c): SDEdit starts at
        t₀ < t_max (``window(t0, t_min)``), an inpainter steps one grid interval at a time (``window(t_i, t_{i+1})``),
        and the probability-flow ODE encodes data with ``window(t_min, t_max)`` (t_start < t_end: the grid samplers'
        grids come out increasing, the adaptive solvers integrate forward in time). Only the two ends change: α, σ,
        the SDE coefficients and the network conditioning do not depend on them, so a score function sharing this
        process sees no difference. The prior (``prior_std``, ``prior_sample``) follows t_max and is not meant to be
        used inside a window (control draws its starting points itself). The ends are restored on exit, also when
        the block raises. It acts on this object, not on a copy: the model's own process (its buffers, parameters
        and device) is what the sampler gets. A nested window must lie inside the enclosing one.

        Args:
            t_start: where the sampler starts (the role of t_max), inside [t_min, t_max].
            t_end: where it stops (the role of t_min), inside [t_min, t_max], ≠ t_start.
        """
        lo, hi = self.t_min, self.t_max
        t_start = check_number("t_start", float(t_start), ge=min(lo, hi), le=max(lo, hi))
        t_end = check_number("t_end", float(t_end), ge=min(lo, hi), le=max(lo, hi))
        if t_start == t_end:
            raise ValueError(f"a window needs t_start != t_end, got {t_start:g} for both")
        self.t_max, self.t_min = t_start, t_end
        try:
            yield self
        finally:
            self.t_max, self.t_min = hi, lo

    def extra_repr(self) -> str:
        return f"t_min={self.t_min:g}, t_max={self.t_max:g}"
