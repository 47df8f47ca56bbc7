r"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models").

The stochastic Adams predictor (order p) and corrector (order c) in data prediction, written with α, σ and
λ = log(α/σ) only, so they hold for VP, sub-VP, VE, EDM and flow alike. For a step s → t (λ_t > λ_s, h = λ_t − λ_s)
with stochasticity τ:

| symbol | meaning |
|---|---|
| M_k = x̂₀(x_k, t_k) | the data prediction at grid point k, formed by ``Sampler.denoised`` (thresholding applies) |
| κ = 1 + τ² | |
| ℓ_i | the Lagrange basis polynomial of the nodes λ_{k_0}, λ_{k_1}, … (newest first), in u = λ − λ_t |
| b_i = ∫_{−h}^{0} e^{κu} ℓ_i(u) du | the Adams coefficients (moments m_k = ∫_{−h}^{0} e^{κu} u^k du in closed form) |
| x_t = e^{−τ²h}(σ_t/σ_s) x_s + κ α_t Σ_i b_i M_{k_i} + σ_t √(1 − e^{−2τ²h}) ξ | the update (paper, eq. 14 / 17) |

The predictor at step s → t interpolates M at s and the p − 1 points before it; the corrector, once M_t is evaluated at
the predicted x_t, redoes the step from the same x_s with the same ξ, interpolating M_t and the c − 1 points before it
(so it costs no evaluation: M_t is the next predictor's). The last predicted point is not corrected (that would cost an
evaluation). With order 2 the reference integrates the divided-difference term without the exponential weight,
b_0 += Δ, b_1 −= Δ with Δ = (h²/2 − ∫_{−h}^{0} e^{κu}(u + h) du)/(λ_{k_0} − λ_{k_1}) (an O(h³) change, as UniPC's B(h));
it is done here too. τ = 0 is a deterministic multistep solver of the probability-flow ODE (order 1 is DDIM).

τ(t) is ``tau`` where S_min ≤ σ̃(t) ≤ S_max (σ̃ = σ/α, EDM's noise level, as EDMHeun's churn range) and 0 elsewhere,
taken at the start of each step; diffusers' default, τ = 1 for timesteps 200–800, is the same rule with
S_min, S_max the σ̃ of those timesteps. Steps, order warm-up and ``lower_order_final`` follow diffusers'
``SASolverScheduler`` (predictor order min(p, i + 1, n − i), corrector order min(c, i + 2, n − i + 1) at step i of n);
the updates match it to float64 rounding on a matching ``DiscreteVP`` (tests/test_sa_solver.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims, randn_like


def exponential_moments(h: Tensor, kappa: Tensor, n: int) -> list[Tensor]:
    """m_k = ∫_{−h}^{0} e^{κu} u^k du for k < n, by m_0 = (1 − e^{−κh})/κ and m_k = (−(−h)^k e^{−κh} − k m_{k−1})/κ."""
    decay = torch.exp(-kappa * h)
    moments = [-torch.expm1(-kappa * h) / kappa]
    for k in range(1, n):
        moments.append((-((-h) ** k) * decay - k * moments[-1]) / kappa)
    return moments


def adams_coefficients(nodes: list[Tensor], h: Tensor, kappa: Tensor) -> list[Tensor]:
    """b_i = ∫_{−h}^{0} e^{κu} ℓ_i(u) du for the nodes u_i = λ_{k_i} − λ_t (newest first), with the order-2 change."""
    moments = exponential_moments(h, kappa, len(nodes))
    coefficients = []
    for i, u_i in enumerate(nodes):
        poly, denominator = [torch.ones_like(h)], torch.ones_like(h)  # ℓ_i's coefficients of u^0, u^1, …
        for j, u_j in enumerate(nodes):
            if j != i:
                poly = [(poly[k - 1] if k > 0 else 0) - (u_j * poly[k] if k < len(poly) else 0)
                        for k in range(len(poly) + 1)]
                denominator = denominator * (u_i - u_j)
        coefficients.append(sum(c * m for c, m in zip(poly, moments)) / denominator)
    if len(nodes) == 2:
        delta = (h**2 / 2 - (moments[1] + h * moments[0])) / (nodes[0] - nodes[1])
        coefficients = [coefficients[0] + delta, coefficients[1] - delta]
    return coefficients


def sa_update(
    process: NoiseProcess, x: Tensor, s: Tensor, t: Tensor, times: list[Tensor], ms: list[Tensor], tau: Tensor,
    noise: Tensor | None,
) -> Tensor:
    """The stochastic Adams update s → t from x_s with the data predictions ``ms`` at ``times`` (newest first)."""
    lam_s, lam_t = process.log_snr(s), process.log_snr(t)
    h, kappa = lam_t - lam_s, 1 + tau**2
    b = adams_coefficients([process.log_snr(r) - lam_t for r in times], h, kappa)
    sigma_s, sigma_t, alpha_t = process.sigma(s), process.sigma(t), process.alpha(t)
    x_t = append_dims(torch.exp(-(tau**2) * h) * sigma_t / sigma_s, x) * x
    x_t = x_t + sum(append_dims(kappa * alpha_t * b_i, x) * m for b_i, m in zip(b, ms))
    if noise is not None:
        x_t = x_t + append_dims(sigma_t * torch.sqrt(-torch.expm1(-2 * tau**2 * h)), x) * noise
    return x_t


class SASolver(Sampler):
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor (order p) – corrector (order c); NFE = num_steps.

    Args:
        num_steps: NFE (with ``denoise`` the last is the final Tweedie step at t_min).
        predictor_order, corrector_order: p and c, 1–3 each (diffusers' defaults: 2 and 2).
        tau: τ where S_min ≤ σ̃ ≤ S_max (0 elsewhere); 0 is the ODE solver, 1 the reverse SDE.
        S_min, S_max: the σ̃ = σ/α range where τ applies (default: everywhere).
        spacing: time spacing (default uniform in log-SNR, as DPM-Solver; ``uniform`` is diffusers' ``linspace``
            on a ``DiscreteVP``).
        denoise: finish with x̂₀ at t_min.
        lower_order_final: lower orders in the last steps, as diffusers.
        thresholding: x̂₀ thresholding (``StaticThreshold``, ``DynamicThreshold``) wherever x̂₀ is formed.
    """

    def __init__(
        self,
        num_steps: int = 20,
        predictor_order: int = 2,
        corrector_order: int = 2,
        tau: float = 1.0,
        S_min: float = 0.0,
        S_max: float = math.inf,
        spacing: Spacing | None = "logsnr",
        denoise: bool = False,
        lower_order_final: bool = True,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        check_number("predictor_order", predictor_order, ge=1, le=3, integer=True)
        check_number("corrector_order", corrector_order, ge=1, le=3, integer=True)
        check_number("tau", tau, ge=0.0)
        check_number("S_min", S_min, ge=0.0)
        check_number("S_max", S_max, ge=S_min, allow_inf=True)
        self.predictor_order, self.corrector_order = predictor_order, corrector_order
        self.tau, self.S_min, self.S_max, self.lower_order_final = tau, S_min, S_max, lower_order_final
        self.thresholding = thresholding

    def orders(self, i: int, n: int) -> tuple[int, int]:
        """(predictor order of step i, corrector order for the point it predicts), as diffusers' warm-up and ending."""
        p, c = self.predictor_order, self.corrector_order
        if self.lower_order_final:
            p, c = min(p, n - i), min(c, n - i + 1)
        return min(p, i + 1), min(c, i + 2)

    def taus(self, grid: Tensor, process: NoiseProcess, dtype: torch.dtype) -> Tensor:
        """τ at every grid time: ``tau`` inside [S_min, S_max] in σ̃, else 0 (a tensor: no host synchronisation)."""
        sigmas = (-process.log_snr(grid)).exp()
        return (((sigmas >= self.S_min) & (sigmas <= self.S_max)) * self.tau).to(dtype)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        grid = self.grid(process, x.device)
        taus, n = self.taus(grid, process, x.dtype), len(grid) - 1
        history = max(self.predictor_order, self.corrector_order - 1)
        times: list[Tensor] = []
        ms: list[Tensor] = []
        previous = None  # (x_s, s, ξ, τ, corrector order) of the last predictor step
        for i in self.steps(n, progress, "sa-solver"):
            t = full_like_t(x, grid[i])
            m = self.denoised(score_fn, process, x, t)[0]
            if previous is not None:  # the corrector: the last step again, with M_t among its nodes
                x_s, s, noise, tau, order = previous
                x = sa_update(process, x_s, s, t, ([t] + times)[:order], ([m] + ms)[:order], tau, noise)
            times, ms = ([t] + times)[:history], ([m] + ms)[:history]
            noise = randn_like(x, generator) if self.tau > 0 else None
            p, c = self.orders(i, n)
            s_next = full_like_t(x, grid[i + 1])
            previous = (x, t, noise, taus[i], c)
            x = sa_update(process, x, t, s_next, times[:p], ms[:p], taus[i], noise)
            if callback is not None:
                callback({"step": i, "t": t, "x": x})
        return self.finish(score_fn, process, x, grid[-1])


__all__ = ["SASolver", "adams_coefficients", "exponential_moments", "sa_update"]
