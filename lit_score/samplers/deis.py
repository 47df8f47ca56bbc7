r"""DEIS (Zhang & Chen 2023) and iPNDM: exponential Adams–Bashforth integrators of the probability-flow ODE.

In the scaled state y = x/α and the noise-to-signal ratio ρ = σ/α = e^{−λ}, the probability-flow ODE of any process
with x_t = α_t x₀ + σ_t ε (VP, sub-VP, VE, EDM, the flow interpolant) is dy/dρ = ε̂(x, t) — its linear part solved
exactly (DEIS §3–4: the exponential integrator; ρ is the paper's ρ, y its ŷ). A multistep method extrapolates ε̂ from
the r latest grid times through a polynomial ℓ in a variable u and integrates it exactly over the step:

| symbol | meaning |
|---|---|
| α, σ, λ | the process's ``alpha``, ``sigma``, ``log_snr``; ρ = σ/α = e^{−λ} |
| t_i → t_{i+1} | one step of the grid (t_{i+1} less noisy); ε̂_k = ε̂(x_{t_{i−k}}, t_{i−k}), k = 0 … r−1 |
| u | the extrapolation variable: t (``t_ab``: tAB-DEIS), ρ (``rho_ab``: ρAB-DEIS), log ρ (``log_rho_ab``) |
| ℓ_k(u) | the Lagrange basis through u(t_i), …, u(t_{i−r+1}) |
| C_k | ∫_{ρ(t_i)}^{ρ(t_{i+1})} ℓ_k(u(ρ)) dρ: tAB-DEIS's C_ij/α_{i+1} (its weight ½Ψ G Gᵀ L^{−T} dτ/α_{i+1} = dρ) |
| update | x_{i+1} = (α_{i+1}/α_i)·x_i + α_{i+1}·Σ_k C_k ε̂_k |
| iPNDM | C_k = (ρ_{i+1} − ρ_i)·b_k, fixed AB b: 1; 3/2, −1/2; 23/12, −16/12, 5/12; 55/24, −59/24, 37/24, −9/24 |

With r = 1 every variant is DDIM (η = 0) = DPM-Solver-1; on a grid uniform in u = ρ, ρAB-DEIS is iPNDM (both tested).
The first steps use lower orders (r = i + 1: the warm start with no extra NFE of iPNDM and of diffusers). Its first
(Euler) step leaves an O(h²) local error, so the global order is min(r, 2) in the limit; from the diffusion prior, where
ε̂ is nearly constant in ρ, that error's constant is small and order r shows at practical step counts (both measured
in tests/test_deis.py: order 2 for iPNDM-4 on σ ∈ [1, 3], order ≈ r for DEIS-r from the VP prior).

C_k is computed by Gauss–Legendre quadrature in log ρ = −λ (``QUADRATURE_NODES`` nodes), the weights rescaled so
that they integrate 1 exactly (Σ_k C_k = ρ_{i+1} − ρ_i, hence r = 1 is exact). The integrand e^v·ℓ_k(u) is entire in
v = log ρ for ``rho_ab`` / ``log_rho_ab``; for ``t_ab`` it holds t(λ) = ``t_from_log_snr``, smooth for the
continuous processes (a discrete DDPM table interpolates t(λ) piecewise linearly: there tAB's C_k carry the table's
kinks, which the paper's numerical C_ij share). Measured: C_k agree with diffusers' closed forms to 1.9e-16 relative
on a large step.

Measured on the exact mixture of tests/test_samplers_oracle.py (mean ‖x − x_ODE‖ at 10 NFE, order 3): VP quadratic
grid log-ρ 0.033, t 0.031, ρ 0.066, iPNDM 0.026 (DPM-Solver++2M 0.045); EDM Karras grid log-ρ 0.047, ρ = t 0.138,
iPNDM 0.051 (DPM-Solver++2M 0.25). Hence the default ``log_rho_ab``; ρAB-DEIS trails on these grids.

Notes where a reference differs.
- diffusers' ``DEISMultistepScheduler`` implements only log-ρ AB (orders 1–3, ``lower_order_final`` for < 15 steps,
  as ``lower_order_final`` here) and runs its σ table in float32; ``DEIS(method="log_rho_ab")`` reproduces its steps
  exactly on its grid (tests/test_deis.py states the measured difference). The paper's ρAB-DEIS and tAB-DEIS are not
  in diffusers; tAB-DEIS's coefficients are the paper's integrals, by quadrature as in its code.
- k-diffusion 0.1.1 (the version installed) has no ``sample_ipndm``; it lives in ComfyUI's fork of k-diffusion (after
  zju-pi/diff-sampler): AB in σ on ε̂ = (x − D)/σ, the order min(4, i + 1), and x = D at σ = 0 — this ``IPNDM`` on
  the EDM process with ``denoise=True``. Its ``sample_ipndm_v`` (AB coefficients from the actual σ steps), like
  k-diffusion's ``sample_lms`` (tested), is ``DEIS(method="rho_ab", order=4, lower_order_final=False)`` on EDM.
  diffusers' ``IPNDMScheduler`` is the same update as ``IPNDM`` on a VP grid (v-prediction; tested).
- The paper's sections are cited by content, not equation number: its text was not at hand here to check numbers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.dpm_solver import scales
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims

Method = Literal["t_ab", "rho_ab", "log_rho_ab"]
METHODS = ("t_ab", "rho_ab", "log_rho_ab")
QUADRATURE_NODES = 32
#: the fixed Adams–Bashforth weights b_k of iPNDM, newest ε̂ first
IPNDM_WEIGHTS = {
    1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)
}


def rho(process: NoiseProcess, t: Tensor) -> Tensor:
    """ρ(t) = σ/α = e^{−λ(t)}."""
    return (-process.log_snr(t)).exp()


def extrapolation_variable(process: NoiseProcess, method: Method, neg_lambda: Tensor, t: Tensor | None = None):
    """u where −λ = ``neg_lambda``: t (``t`` when given, else ``t_from_log_snr``), ρ = e^{−λ} or log ρ = −λ."""
    if method == "t_ab":
        return t if t is not None else process.t_from_log_snr(-neg_lambda)
    return neg_lambda.exp() if method == "rho_ab" else neg_lambda


def ab_coefficients(process: NoiseProcess, ts: list[Tensor], s: Tensor, method: Method) -> list[Tensor]:
    """C_k = ∫_{ρ(t)}^{ρ(s)} ℓ_k(u(ρ)) dρ for the nodes ``ts`` (oldest first; ts[-1] = t, the step's start), in the
    order of ``ts``; each (B,). Gauss–Legendre in v = log ρ, normalised so that Σ_k C_k = ρ(s) − ρ(t) exactly."""
    v_t, v_s = -process.log_snr(ts[-1]), -process.log_snr(s)
    xi, w = (torch.as_tensor(a, dtype=v_t.dtype, device=v_t.device) for a in np.polynomial.legendre.leggauss(
        QUADRATURE_NODES))
    half, mid = (v_s - v_t)[:, None] / 2, (v_s + v_t)[:, None] / 2
    v = mid + half * xi  # (B, K) nodes in log ρ
    weights = half * w * v.exp()
    weights = weights * ((v_s.exp() - v_t.exp()) / weights.sum(1))[:, None]
    u = extrapolation_variable(process, method, v)
    u_k = [extrapolation_variable(process, method, -process.log_snr(t), t) for t in ts]
    coefficients = []
    for k, u_kk in enumerate(u_k):
        basis = torch.ones_like(u)
        for m, u_m in enumerate(u_k):
            if m != k:
                basis = basis * (u - u_m[:, None]) / (u_kk - u_m)[:, None]
        coefficients.append((weights * basis).sum(1))
    return coefficients


def ipndm_coefficients(process: NoiseProcess, ts: list[Tensor], s: Tensor) -> list[Tensor]:
    """C_k = (ρ(s) − ρ(t))·b_k with iPNDM's fixed weights of order len(ts), in the order of ``ts`` (oldest first)."""
    step = rho(process, s) - rho(process, ts[-1])
    return [step * b for b in reversed(IPNDM_WEIGHTS[len(ts)])]


def exponential_ab_update(process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, coefficients: list[Tensor],
                          eps: list[Tensor]) -> Tensor:
    """x_s = (α_s/α_t)·x + α_s·Σ_k C_k ε̂_k: the exponential integrator in y = x/α (0 NFE)."""
    ratio = scales(process, t, s, plus=False)[0]
    increment = sum(append_dims(c, x) * e for c, e in zip(coefficients, eps))
    return append_dims(ratio, x) * x + append_dims(process.alpha(s), x) * increment


def run_multistep(sampler: DEIS | IPNDM, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, callback,
                  progress: bool) -> Tensor:
    """The multistep loop both samplers share: one ε̂ per grid time, ``sampler.step_order(i, n)`` of them per step,
    weighted by ``sampler.coefficients(process, ts, s)``; NFE = ``num_steps``."""
    grid = sampler.grid(process, x.device)
    n = len(grid) - 1
    ts, eps = [], []
    for i in sampler.steps(n, progress, type(sampler).__name__):
        t, s = full_like_t(x, grid[i]), full_like_t(x, grid[i + 1])
        ts, eps = (ts + [t])[-sampler.order:], (eps + [sampler.denoised(score_fn, process, x, t)[1]])[-sampler.order:]
        r = sampler.step_order(i, n)
        x = exponential_ab_update(process, x, t, s, sampler.coefficients(process, ts[-r:], s), eps[-r:])
        if callback is not None:
            callback({"step": i, "t": t, "x": x})
    return sampler.finish(score_fn, process, x, grid[-1])


class DEIS(Sampler):
    """DEIS (Zhang & Chen 2023): the exponential integrator with Adams–Bashforth extrapolation of ε̂; NFE = num_steps.

    Args:
        num_steps: NFE (with ``denoise`` the last is the final Tweedie step).
        order: number r of ε̂ values the polynomial goes through, 1–4 (order r; r = 1 is DDIM).
        method: ``log_rho_ab`` (diffusers' "logrho"; the most accurate here, module notes), ``rho_ab`` (ρAB-DEIS) or
            ``t_ab`` (tAB-DEIS).
        spacing: time spacing (default: the process's own).
        denoise: finish with x̂₀ at t_min.
        lower_order_final: with fewer than 15 steps, the last two steps use orders ≤ 1 and ≤ 2 (diffusers).
        thresholding: x̂₀ thresholding (``StaticThreshold``, ``DynamicThreshold``); ε̂ is re-derived from the
            thresholded x̂₀, as diffusers' ``DEISMultistepScheduler(thresholding=True)``.
    """

    steps_on_grid = True

    @property
    def reversible(self) -> bool:
        """Without thresholding: the updates integrate the linear part exactly in either direction of ρ, so inside
        ``process.window(t_min, t_max)`` they encode; a thresholded x̂₀ is not the probability-flow ODE's."""
        return self.thresholding is None

    def __init__(
        self,
        num_steps: int = 20,
        order: int = 3,
        method: Method = "log_rho_ab",
        spacing: Spacing | None = None,
        denoise: bool = False,
        lower_order_final: bool = True,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        check_number("order", order, ge=1, le=4, integer=True)
        if method not in METHODS:
            raise ValueError(f"unknown DEIS method {method!r}: use t_ab, rho_ab or log_rho_ab")
        self.order, self.method, self.lower_order_final = order, method, lower_order_final
        self.thresholding = thresholding

    def step_order(self, i: int, n: int) -> int:
        """Order of step i of n: the warm start i + 1, then ``order`` (n − i at the end for n < 15 steps)."""
        order = min(self.order, i + 1)
        return min(order, n - i) if self.lower_order_final and n < 15 else order

    def coefficients(self, process: NoiseProcess, ts: list[Tensor], s: Tensor) -> list[Tensor]:
        return ab_coefficients(process, ts, s, self.method)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return run_multistep(self, score_fn, require_process(process, self), x, callback, progress)


class IPNDM(Sampler):
    """iPNDM (Zhang & Chen 2023's improved PNDM): linear multistep in ρ with the fixed AB weights and a lower-order
    warm start instead of PNDM's Runge–Kutta start; NFE = num_steps.

    Args:
        num_steps: NFE (with ``denoise`` the last is the final Tweedie step, as k-diffusion's step to σ = 0).
        order: maximal order, 1–4 (the warm start uses min(order, i + 1)).
        spacing: time spacing (default: the process's own).
        denoise: finish with x̂₀ at t_min.
        thresholding: x̂₀ thresholding, ε̂ re-derived from the thresholded x̂₀ (as ``DEIS``).
    """

    steps_on_grid = True
    reversible = DEIS.reversible  # the same property: without thresholding

    def __init__(self, num_steps: int = 20, order: int = 4, spacing: Spacing | None = None, denoise: bool = False,
                 thresholding: Thresholding | None = None) -> None:
        super().__init__(num_steps, spacing, denoise)
        self.order = check_number("order", order, ge=1, le=4, integer=True)
        self.thresholding = thresholding

    def step_order(self, i: int, n: int) -> int:
        """Order of step i: min(order, i + 1)."""
        return min(self.order, i + 1)

    def coefficients(self, process: NoiseProcess, ts: list[Tensor], s: Tensor) -> list[Tensor]:
        return ipndm_coefficients(process, ts, s)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return run_multistep(self, score_fn, require_process(process, self), x, callback, progress)


__all__ = ["DEIS", "IPNDM", "ab_coefficients", "exponential_ab_update", "ipndm_coefficients"]
