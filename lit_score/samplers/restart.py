r"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", Algorithm 1), any process.

The deterministic main solver is EDM's Heun (Karras et al. 2022, Algorithm 1) on the Karras grid, run like
:class:`~lit_score.samplers.edm.EDMHeun` in the scaled variables x̃ = x/α, σ̃ = σ/α = e^{−λ} (``edm_denoiser``,
``heun_step``). Restart intervals are given in σ̃, the paper's σ (the process's σ for VE and EDM; σ/α for VP, sub-VP and
flow). When the main run lands on the grid point σ̃_j nearest an interval's t_min, the interval is run K times:

| symbol | meaning |
|---|---|
| {N, K, t_min, t_max} | one interval: N noise levels on its own Karras grid t_max → σ̃_j (N − 1 Heun steps), K repeats |
| σ̃_j | the main grid's noise level nearest t_min (the reference snaps t_min onto the grid the same way) |
| x̃ ← x̃ + √(t_max² − σ̃_j²)·S_noise·ε | the forward jump σ̃_j → t_max with fresh ε (Algorithm 1, line 5) |
| x̃ ← Heun steps t_max → σ̃_j on σ_k = (t_max^{1/ρ} + k/(N−1)(σ̃_j^{1/ρ} − t_max^{1/ρ}))^ρ | the restart's backward ODE |

The forward jump in a process's own units is the transition q(x_{t'} | x_t) (t' noisier):
x_{t'} = (α_{t'}/α_t) x_t + √(σ_{t'}² − (α_{t'}/α_t)² σ_t²)·ε. Divided by α_{t'} this is
x̃_{t'} = x̃_t + √(σ̃_{t'}² − σ̃_t²)·ε: the EDM formula in σ̃, which is why one formula serves every process.

NFE = 2(num_steps − 1) + 1 with ``denoise`` (EDM's count: the last step, Euler to σ = 0, is the base's Tweedie step),
2·num_steps without, plus 2(N − 1)·K per interval. (With N the number of noise levels of the restart grid, as the
reference's ``num_steps``: its README's ImageNet-64 setting, 36 main steps and five intervals, is 71 + 132 = 203 NFE,
the NFE it states.)

The reference code (Newbeeer/diffusion_restart_sampling, ``benchmarks/generate_restart.py``) also churns inside the
restart steps: before each one σ̂ = (1 + γ)σ with γ = ``restart_gamma`` where S_min ≤ σ ≤ S_max, else 0 (EDM's churn,
``edm.churn``; one noise draw per restart step; 0.05 on [0.01, 1] in its README commands, absent from the paper's
Algorithm 1). Here ``restart_gamma`` defaults to 0 (Algorithm 1). Differences: no S_churn in the main run; two
intervals that snap onto the same grid point are refused (the reference's dict keeps the last one silently).
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.processes.grids import karras_log_snr
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.edm import churn, edm_denoiser
from lit_score.samplers.ode import heun_step
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims, randn_like

INTERVAL_KEYS = ("N", "K", "t_min", "t_max")


class RestartInterval(TypedDict):
    """One restart interval (a YAML mapping): N noise levels, K repeats, t_min < t_max in σ̃ = σ/α."""

    N: int
    K: int
    t_min: float
    t_max: float


def check_interval(i: int, interval: RestartInterval) -> RestartInterval:
    """One restart interval {N, K, t_min, t_max}, checked (N ≥ 2 and K ≥ 0 integers, 0 < t_min < t_max)."""
    if not isinstance(interval, dict) or set(interval) != set(INTERVAL_KEYS):
        raise ValueError(f"restart[{i}] must be a mapping with exactly the keys N, K, t_min, t_max, got {interval!r}")
    check_number(f"restart[{i}].N", interval["N"], ge=2, integer=True)
    check_number(f"restart[{i}].K", interval["K"], ge=0, integer=True)
    check_number(f"restart[{i}].t_min", interval["t_min"], gt=0.0)
    check_number(f"restart[{i}].t_max", interval["t_max"], gt=interval["t_min"])
    return RestartInterval(**interval)


def restart_levels(t_max: float, sigma_j: float, n: int, rho: float) -> list[float]:
    """The restart's N noise levels t_max → σ̃_j (Karras et al. 2022, eq. 5), with both ends exact."""
    levels = (-karras_log_snr(-math.log(t_max), -math.log(sigma_j), n - 1, rho)).exp().tolist()
    levels[0], levels[-1] = t_max, sigma_j
    return levels


class Restart(Sampler):
    """Restart sampling (Xu et al. 2023, Algorithm 1) around EDM's deterministic Heun on the Karras grid.

    Args:
        num_steps: main-run noise levels as :class:`~lit_score.samplers.edm.EDMHeun` counts them (with ``denoise``
            the last step is the Tweedie step at t_min: 18 is EDM's 35 NFE before restarts).
        restart: the restart intervals, a list of {N, K, t_min, t_max} with t_min, t_max noise levels σ̃ = σ/α (the
            paper's σ); t_min snaps to the nearest main-grid level after the first, t_max must not exceed σ̃ at t_max
            of the process. Empty: the plain Heun run.
        S_noise: scale of the restart noise (the paper's S_noise; 1.003 in the reference's commands).
        spacing, rho: the main grid (Karras ρ-spacing of σ̃ by default); the restart grids are Karras with ``rho``.
        denoise: finish with x̂₀ at t_min (EDM's final Euler step to σ = 0).
        restart_gamma, S_min, S_max: the reference code's churn γ before each restart step whose level lies in
            [S_min, S_max] (σ̃); 0: none, Algorithm 1 of the paper.
        thresholding: x̂₀ thresholding (``StaticThreshold``, ``DynamicThreshold``) wherever x̂₀ is formed.
    """

    def __init__(
        self,
        num_steps: int = 18,
        restart: list[RestartInterval] | None = None,
        S_noise: float = 1.0,
        spacing: Spacing | None = "karras",
        rho: float = 7.0,
        denoise: bool = True,
        restart_gamma: float = 0.0,
        S_min: float = 0.0,
        S_max: float = math.inf,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        check_number("S_noise", S_noise, ge=0.0)
        check_number("restart_gamma", restart_gamma, ge=0.0)
        check_number("S_min", S_min, ge=0.0)
        check_number("S_max", S_max, ge=S_min, allow_inf=True)
        check_number("rho", rho, gt=0.0)
        if restart is not None and not isinstance(restart, (list, tuple)):
            raise ValueError(f"restart must be a list of {{N, K, t_min, t_max}} mappings, got {restart!r}")
        self.restart = [check_interval(i, r) for i, r in enumerate(restart or [])]
        self.S_noise, self.rho = S_noise, rho
        self.restart_gamma, self.S_min, self.S_max = restart_gamma, S_min, S_max
        self.thresholding = thresholding

    def grid(self, process: NoiseProcess, device: torch.device) -> Tensor:
        """Decreasing times t_max → t_min of the main run (Karras ρ-spacing of σ̃ by default)."""
        return process.time_grid(self.num_steps - int(self.denoise), self.spacing, rho=self.rho, device=device)

    def plan(self, sigmas: list[float]) -> dict[int, tuple[int, int, float]]:
        """{main-grid index j: (N, K, t_max)}: each interval at the grid level nearest its t_min (index ≥ 1)."""
        plan: dict[int, tuple[int, int, float]] = {}
        for i, r in enumerate(self.restart):
            j = min(range(len(sigmas)), key=lambda k: abs(sigmas[k] - r["t_min"]))
            if j == 0:
                raise ValueError(f"restart[{i}].t_min = {r['t_min']:g} is nearest the first noise level "
                                 f"{sigmas[0]:g}: a restart interval must end below where the run starts")
            if r["t_max"] > sigmas[0] * (1 + 1e-9):
                raise ValueError(f"restart[{i}].t_max = {r['t_max']:g} is above the process's largest noise level "
                                 f"σ/α = {sigmas[0]:g}: lower t_max")
            if r["t_max"] <= sigmas[j]:
                raise ValueError(f"restart[{i}]: t_max = {r['t_max']:g} is not above its grid level {sigmas[j]:g}")
            if j in plan:
                raise ValueError(f"restart[{i}] snaps onto the same grid level {sigmas[j]:g} as an earlier interval: "
                                 "merge them or use more main steps")
            plan[j] = (int(r["N"]), int(r["K"]), float(r["t_max"]))
        return plan

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        grid = self.grid(process, x.device)
        sigmas = (-process.log_snr(grid)).exp()
        levels = sigmas.tolist()  # the one host read of the run
        plan = self.plan(levels)
        time, derivative = edm_denoiser(score_fn, process, self)
        x = x / append_dims(process.alpha(full_like_t(x, grid[0])), x)
        for i in self.steps(len(grid) - 1, progress, "restart"):
            x = heun_step(derivative, full_like_t(x, sigmas[i]), full_like_t(x, sigmas[i + 1]), x)
            if i + 1 in plan:
                x = self.restarts(derivative, x, levels[i + 1], *plan[i + 1], generator)
            if callback is not None:
                alpha_next = append_dims(process.alpha(full_like_t(x, grid[i + 1])), x)
                callback({"step": i, "t": full_like_t(x, grid[i]), "sigma": full_like_t(x, sigmas[i]),
                          "x": alpha_next * x})
        if not self.denoise:
            return x * append_dims(process.alpha(full_like_t(x, grid[-1])), x)
        t = time(full_like_t(x, sigmas[-1]))
        return self.finish(score_fn, process, x * append_dims(process.alpha(t), x), t)

    def restarts(self, derivative, x: Tensor, sigma_j: float, n: int, k: int, t_max: float, generator) -> Tensor:
        """K restarts of x̃ at σ̃_j: the jump to t_max with fresh noise, then N − 1 Heun steps (churned by
        ``restart_gamma``) back to σ̃_j."""
        levels = restart_levels(t_max, sigma_j, n, self.rho)
        for _ in range(k):
            x = x + math.sqrt(t_max**2 - sigma_j**2) * self.S_noise * randn_like(x, generator)
            for a, b in zip(levels[:-1], levels[1:]):
                sigma = full_like_t(x, a)
                if self.restart_gamma > 0:
                    gamma = self.restart_gamma if self.S_min <= a <= self.S_max else 0.0
                    x, sigma = churn(x, sigma, gamma, self.S_noise, generator)
                x = heun_step(derivative, sigma, full_like_t(x, b), x)
        return x


__all__ = ["Restart", "RestartInterval", "restart_levels"]
