r"""Shortcut models (Frans, Hafner, Levine & Abbeel 2025, "One Step Diffusion via Shortcut Models") on a two-time
model (DESIGN.md §3d): one network whose step size is chosen at sampling time, trained without a teacher.

A shortcut s(x_τ, τ, d) is the velocity that takes x_τ to x_{τ+d} in one step, x_{τ+d} ≈ x_τ + d·s. Here it is a
two-time model read at the two times of the step: the flow map X_{t→s} of
:class:`~lit_score.scores.FlowMapScore` with (t, s) the step's ends on the process's clock, and the average velocity
of the jump

    u(x, t, s) = (x − X_{t→s}(x))/(t − s),   the probability-flow velocity dx/dt at s = t,

which in the DDIM form of :mod:`lit_score.scores.flow_map` is u = c_x·x + c_0·D̂(x, t, s) with
c_x = (1 − σ_s/σ_t)/(t − s), c_0 = −(α_s − α_t σ_s/σ_t)/(t − s), and at s = t their limits σ'_t/σ_t and
α'_t − α_t σ'_t/σ_t: one network evaluation for every row, whatever its step (:func:`average_velocity`). On the
interpolant both are ±1/t, so u = (x − D̂)/t, and with target ``velocity`` the network's output *is* u.

| symbol | meaning |
|---|---|
| τ ∈ [0, 1] | the reference's time: τ = 0 noise, τ = 1 data (the opposite of the process's t) |
| t = t_max − τ·L, L = t_max − t_min | the one conversion (:class:`ReferenceClock`); a step d ↔ t − s = d·L |
| s = dx/dτ = −L·dx/dt | the reference's velocity in the process's units; ``ReferenceClock.velocity`` |
| M | the finest step is 1/M (reference: M = 128, ``denoise_timesteps``) |
| d = 1/2^k, k = 0 … log₂ M | the step sizes; k = log₂ M (d = 1/M) is queried at d = 0 (s = t), see below |
| B, B_b = ⌊B/``bootstrap_every``⌋ | the batch and its bootstrap rows (the paper's share 1/4: ``bootstrap_every`` 4) |
| ŝ_θ(x, τ, d) = −L·u_θ(x, t(τ), t(τ + d)) | the model's shortcut |
| θ⁻, μ | the bootstrap's target model and ``ema_rate`` (μ = 0: θ, gradient stopped; below) |

**The batch** (the reference's ``targets_shortcut.py``), rows in this order:

- B_b *bootstrap* rows. Their step 2d = 1/2^j takes each j = log₂M − 1, …, 0 (2d = 1/64 … 1 for M = 128) on
  ⌊B_b/log₂M⌋ rows, the rest at 2d = 1 (the reference's ``bootstrap_dt_bias`` 0); τ is uniform on the multiples of
  2d below 1, τ = i·2d, i ~ U{0, …, 2^j − 1}. The target is two d-steps of the target model θ⁻:
  ŝ₁ = ŝ_{θ⁻}(x_τ, τ, d), x′ = x_τ + d·ŝ₁, ŝ₂ = ŝ_{θ⁻}(x′, τ + d, d), target (ŝ₁ + ŝ₂)/2, so that
  x_τ + 2d·target = x′ + d·ŝ₂: one 2d-jump equals two d-jumps (the flow map's semigroup property). Where d = 1/M,
  the finest step, ŝ is queried at d = 0: the flow-matching velocity, as the paper queries its smallest step (in
  the reference code the finest step's token ``dt_base`` = log₂M is the one its flow-matching rows train).
- B − B_b *flow-matching* rows: d = 0 (s = t), τ = i/M with i ~ U{0, …, M − 1}, the target the conditional
  velocity of the path, dx_τ/dτ = −L·(α'_t x₀ + σ'_t ε), whose expectation given x_τ is the exact ŝ(x, τ, 0).
- The loss per row: the mean over coordinates of (ŝ_θ − target)² (the reference's ``mse_v``); the family averages.

x_τ = α_t x₀ + σ_t ε is the process's marginal at t = t(τ) (the reference's own path, x_τ = (1 − (1 − 10⁻⁵)τ)·ε +
τ·x₀, is the interpolant with ends 0 and 10⁻⁵ where ours are the process's t_min, t_max). With ``clip`` the
reference clips x′ and the target to [−clip, clip] (4 on its latents, the default here; None: no clip).

**The target model θ⁻** (:class:`~lit_score.losses.target_network.TargetNetwork`, shared with
:class:`~lit_score.losses.ConsistencyDistillation`), chosen by ``ema_rate`` μ:

- μ = 0 (the default): the online model with its gradient stopped, evaluated under ``no_grad`` in its own mode. At
  the fixed point both targets are the same, and iCT shows a stop-gradient target trains (Song & Dhariwal 2023,
  Sec. 3.2). The loss carries no state and resumes exactly with the model.
- μ > 0: the reference's target (``bootstrap_ema`` 1, rate μ = 0.999, evaluated with ``train=False``): a frozen copy of
  the score model held by the loss (not the trainer's :class:`~lit_score.callbacks.EMA`, which a loss cannot see),
  made at the start of fit, θ⁻ ← μ·θ⁻ + (1 − μ)·θ once per optimizer step (the loss's ``before_step``), run in eval
  mode as the reference's ``train=False`` (no dropout in the target; the student's pass keeps its own mode) and
  conditioned on the student's labels. It is the loss's checkpoint state ``{"target", "target_step"}``, so a resume is
  bit-exact.

**Other differences from the reference**: the flow-matching and bootstrap rows take disjoint data rows (the reference
draws both from the first rows of one batch, which overlap); no class-conditional guidance inside the target
(``bootstrap_cfg``); the reference's code default is ``bootstrap_every`` 8 (share 1/8), the paper's 1/4; the default
``ema_rate`` is 0 where the reference's is 0.999 (above).

**Sampling.** :class:`~lit_score.samplers.FlowMapSampler` with ``k`` jumps on the ``uniform`` grid (the interpolant's
default) jumps t_max − i·L/k → t_max − (i + 1)·L/k: τ = i/k, d = 1/k, a trained (τ, d) for every k = 2^j ≤ M/2; k = M
asks for d = 1/M, which is trained only through the d = 0 rows around it. With d = 0 the model is the ordinary
velocity, so every ODE sampler, the likelihood and guidance take it too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.target_network import FollowsTargetNetwork, TargetNetwork
from lit_score.processes import NoiseProcess
from lit_score.utils import append_dims, batch_mean, rand, randn_like


class ReferenceClock:
    """The one conversion between the reference's clock (τ = 0 noise → 1 data) and the process's (t from t_max at
    the noise end to t_min): t = t_max − τ·L, L = t_max − t_min, and velocities dx/dτ = −L·dx/dt."""

    def __init__(self, process: NoiseProcess) -> None:
        self.t_max, self.span = float(process.t_max), float(process.t_max - process.t_min)

    def time(self, tau: Tensor) -> Tensor:
        """t(τ) = t_max − τ·L."""
        return self.t_max - tau * self.span

    def velocity(self, u: Tensor) -> Tensor:
        """dx/dτ = −L·u from a velocity u = dx/dt."""
        return -self.span * u


def average_velocity(score_model, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """u(x, t, s) = (x − X_{t→s}(x))/(t − s), the probability-flow velocity where s = t (module docstring), from one
    evaluation of ``score_model.denoise(x, t, s)`` (t, s (B,), s ≤ t)."""
    process = score_model.process
    alpha_t, sigma_t, alpha_s, sigma_s = process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s)
    same = s == t
    gap = torch.where(same, 1.0, t - s)
    ratio = sigma_s / sigma_t
    rate = process.sigma_dot(t) / sigma_t
    coef_x = torch.where(same, rate, (1 - ratio) / gap)
    coef_x0 = torch.where(same, process.alpha_dot(t) - alpha_t * rate, -(alpha_s - alpha_t * ratio) / gap)
    return append_dims(coef_x, x) * x + append_dims(coef_x0, x) * score_model.denoise(x, t, s)


def bootstrap_levels(batch: int, bootstrap_every: int, denoise_timesteps: int) -> Tensor:
    """j per bootstrap row (⌊batch/bootstrap_every⌋,) with the row's step 2d = 1/2^j: log₂M − 1, …, 0 on
    ⌊B_b/log₂M⌋ rows each, the remaining rows at j = 0 (module docstring; the reference's ``dt_base``)."""
    rows, levels = batch // bootstrap_every, int(math.log2(denoise_timesteps))
    per_level = rows // levels
    j = torch.arange(levels - 1, -1, -1).repeat_interleave(per_level)
    return torch.cat([j, torch.zeros(rows - len(j), dtype=torch.long)])


class Shortcut(FollowsTargetNetwork, DiffusionLoss):
    """The shortcut-model objective of a two-time model (module docstring): a per-sample loss (B,).

    Args:
        denoise_timesteps: M, the number of finest steps (a power of two ≥ 2; the reference: 128).
        bootstrap_every: one row in ``bootstrap_every`` is a bootstrap row (the paper's share 1/4: 4; the reference
            code's default 8).
        clip: the reference clips the bootstrap's intermediate point and target to [−clip, clip] (4.0); None: no
            clipping (data on another scale).
        ema_rate: μ of the bootstrap's target model θ⁻ (0: the online model, gradient stopped; the reference: an EMA
            copy with 0.999, in eval mode).
    """

    #: the capability it asks of the score model: ``denoise(x, t, s)`` (a FlowMapScore: a two-time network)
    requires_two_time: bool = True

    def __init__(self, denoise_timesteps: int = 128, bootstrap_every: int = 4, clip: float | None = 4.0,
                 ema_rate: float = 0.0) -> None:
        check_number("denoise_timesteps", denoise_timesteps, ge=2, integer=True)
        check_number("bootstrap_every", bootstrap_every, ge=2, integer=True)
        check_number("clip", clip, gt=0.0, allow_none=True)
        if denoise_timesteps & (denoise_timesteps - 1):
            raise ValueError(f"denoise_timesteps must be a power of two (the steps 1/2^k), got {denoise_timesteps}:"
                             f" use {2 ** round(math.log2(denoise_timesteps))}")
        self.denoise_timesteps, self.bootstrap_every = int(denoise_timesteps), int(bootstrap_every)
        self.clip = None if clip is None else float(clip)
        self.target_network = TargetNetwork(ema_rate)  # θ⁻ (module docstring)
        self.ema_rate = self.target_network.ema_rate

    def times(self, batch: int, generator, device) -> tuple[Tensor, Tensor]:
        """(τ, d) (B,) float64 on the reference's clock: the bootstrap rows first (τ a multiple of their 2d, which is
        what d holds for them), then the flow-matching rows (τ = i/M, d = 0)."""
        j = bootstrap_levels(batch, self.bootstrap_every, self.denoise_timesteps).to(device)
        sections = (2.0 ** j).to(torch.float64)  # 1/(2d)
        u = rand((batch,), generator, device=device, dtype=torch.float64)
        m = self.denoise_timesteps
        i_bootstrap = torch.minimum((u[: len(j)] * sections).floor(), sections - 1)
        i_flow = (u[len(j):] * m).floor().clamp_max(m - 1)
        tau = torch.cat([i_bootstrap / sections, i_flow / m])
        step = torch.cat([1.0 / sections, torch.zeros(batch - len(j), dtype=torch.float64, device=device)])
        return tau, step

    def shortcut(self, score_model, clock: ReferenceClock, x: Tensor, tau: Tensor, d: Tensor) -> Tensor:
        """ŝ(x, τ, d) = −L·u(x, t(τ), t(τ + d)) (τ, d float64 (B,)); d = 1/M is queried at d = 0."""
        d = torch.where(d * self.denoise_timesteps <= 1, 0.0, d)
        t, s = clock.time(tau), clock.time(tau + d)
        return clock.velocity(average_velocity(score_model, x, t.to(x.dtype), s.to(x.dtype)))

    def bootstrap_target(self, score_model, clock: ReferenceClock, x: Tensor, tau: Tensor, step: Tensor) -> Tensor:
        """(ŝ₁ + ŝ₂)/2 from two d-steps (d = step/2) of the target model, without gradient (module docstring)."""
        half = step / 2
        with torch.no_grad():
            first = self.shortcut(score_model, clock, x, tau, half)
            middle = self.clamp(x + append_dims(half.to(x.dtype), x) * first)
            second = self.shortcut(score_model, clock, middle, tau + half, half)
            return self.clamp((first + second) / 2)

    def clamp(self, x: Tensor) -> Tensor:
        return x if self.clip is None else x.clamp(-self.clip, self.clip)

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process, batch = score_model.process, x0.shape[0]
        clock = ReferenceClock(process)
        tau, step = self.times(batch, generator, x0.device)
        noise = randn_like(x0, generator)
        t = clock.time(tau).to(x0.dtype)
        x_t = process.perturb(x0, t, noise)
        rows = batch // self.bootstrap_every
        flow = clock.velocity(append_dims(process.alpha_dot(t[rows:]), x0) * x0[rows:]
                              + append_dims(process.sigma_dot(t[rows:]), x0) * noise[rows:])
        target_model = self.target_network.model(score_model, training=False)  # μ = 0: score_model itself
        target = torch.cat([self.bootstrap_target(target_model, clock, x_t[:rows], tau[:rows], step[:rows]), flow])
        return batch_mean((self.shortcut(score_model, clock, x_t, tau, step) - target) ** 2)

    # --- the target network θ⁻ (μ > 0; every hook does nothing at μ = 0; the others: FollowsTargetNetwork) ------
    def fit_started(self, score_model, resumed: bool) -> None:
        """At the start of fit: make θ⁻ (a copy of the model, or the checkpoint's)."""
        self.target_network.started(score_model)

    def __repr__(self) -> str:
        ema = f", ema_rate={self.ema_rate:g}" if self.ema_rate else ""
        return (f"Shortcut(denoise_timesteps={self.denoise_timesteps}, bootstrap_every={self.bootstrap_every},"
                f" clip={self.clip!r}{ema})")


__all__ = ["ReferenceClock", "Shortcut", "average_velocity", "bootstrap_levels"]
