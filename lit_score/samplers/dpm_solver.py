r"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE in log-SNR, singlestep and multistep, orders 1–3, for any process.

Both solve the ODE exactly in its linear part and Taylor-expand the model output M in λ = log(α/σ).
Written with α, σ, λ only, the updates hold for VP, sub-VP, VE and EDM alike. For a step t → s (t noisier):

| symbol | dpmsolver (noise prediction) | dpmsolver++ (data prediction) |
|---|---|---|
| M | ε̂(x, t) | x̂₀(x, t) |
| ρ (scale of x) | α_s/α_t | σ_s/σ_t |
| c | σ_s | α_s |
| ĥ | h = λ_s − λ_t | −h |

with φ₁(ĥ) = e^ĥ − 1, φ₂(ĥ) = φ₁(ĥ)/ĥ − 1, φ₃(ĥ) = φ₂(ĥ)/ĥ − ½ (the paper's coefficients up to sign):

| update | x_s |
|---|---|
| order 1 (= DDIM, η = 0) | ρ x − c φ₁ M_t |
| singlestep 2 (u at λ_t + r₁h) | ρ x − c φ₁ M_t − (c φ₁/2r₁)(M_u − M_t) |
| singlestep 3, stage u₂ (u₁, u₂ at r₁, r₂) | ρ_{u₂} x − c_{u₂} φ₁(r₂ĥ) M_t − (r₂/r₁) c_{u₂} φ₂(r₂ĥ)(M_{u₁} − M_t) |
| singlestep 3 | ρ x − c φ₁ M_t − (c φ₂/r₂)(M_{u₂} − M_t) |
| multistep 2 (r₀ = h₀/h, D₁ = (M₀ − M₋₁)/r₀) | ρ x − c φ₁ M₀ − ½ c φ₁ D₁ |
| multistep 3 (r₁ = h₁/h, D₁' = (M₋₁ − M₋₂)/r₁, D₂ = (D₁ − D₁')/(r₀+r₁)) | ρ x − c φ₁ M₀ − c φ₂ (D₁ + r₀D₂) − c φ₃ D₂ |

(Lu et al. 2022a, Algorithms 1, 4, 5; Lu et al. 2022b, Algorithms 1, 2 and the 3M update of their code.)
Every update matches LuChengTHU/dpm-solver's ``dpm_solver_pytorch.py`` (solver_type "dpmsolver") to
float64 rounding, including its step schedules (multistep warm-up, ``lower_order_final``, DPM-Solver-fast).

Note on 3M. The exact solution's second-order term is −c h² φ₃ M'' (∫₀ʰ e^{u−h} u²/2 du = −h² φ₃ for ++),
but D₂ = (D₁ − D₁')/(r₀ + r₁) ≈ h² M''/2 — the second divided difference, not the derivative — so the
reference 3M update (also diffusers', k-diffusion's) has an O(h³) local error and converges at order 2.
``corrected_3m=True`` uses 2·D₂ and converges at order 3 (both are tested); the default reproduces the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims

Model = Callable[[Tensor, Tensor], Tensor]


def phi_1(h: Tensor) -> Tensor:
    """φ₁(ĥ) = e^ĥ − 1."""
    return torch.expm1(h)


def phi_2(h: Tensor) -> Tensor:
    """φ₂(ĥ) = φ₁(ĥ)/ĥ − 1."""
    return torch.expm1(h) / h - 1


def phi_3(h: Tensor) -> Tensor:
    """φ₃(ĥ) = φ₂(ĥ)/ĥ − ½."""
    return phi_2(h) / h - 0.5


def scales(process: NoiseProcess, t: Tensor, s: Tensor, plus: bool) -> tuple[Tensor, Tensor]:
    """(ρ, c) of the step t → s: (σ_s/σ_t, α_s) for dpmsolver++, (α_s/α_t, σ_s) for dpmsolver."""
    if plus:
        return process.sigma(s) / process.sigma(t), process.alpha(s)
    return (process.log_alpha(s) - process.log_alpha(t)).exp(), process.sigma(s)


def singlestep_update(
    model: Model, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, order: int,
    r1: Tensor | float, r2: Tensor | float, plus: bool,
) -> Tensor:
    """Singlestep DPM-Solver(-++)-``order`` from t to s with intermediate log-SNR ratios r₁ (, r₂); ``order`` NFE."""
    lam_t = process.log_snr(t)
    h = process.log_snr(s) - lam_t
    h_hat = -h if plus else h
    rho, c = scales(process, t, s, plus)
    m_t = model(x, t)
    x_s = append_dims(rho, x) * x - append_dims(c * phi_1(h_hat), x) * m_t
    if order == 1:
        return x_s
    u1 = process.t_from_log_snr(lam_t + r1 * h)
    rho_1, c_1 = scales(process, t, u1, plus)
    m_u1 = model(append_dims(rho_1, x) * x - append_dims(c_1 * phi_1(r1 * h_hat), x) * m_t, u1)
    if order == 2:
        return x_s - append_dims(c * phi_1(h_hat) * (0.5 / r1), x) * (m_u1 - m_t)
    u2 = process.t_from_log_snr(lam_t + r2 * h)
    rho_2, c_2 = scales(process, t, u2, plus)
    x_u2 = (append_dims(rho_2, x) * x - append_dims(c_2 * phi_1(r2 * h_hat), x) * m_t
            - append_dims(c_2 * phi_2(r2 * h_hat) * (r2 / r1), x) * (m_u1 - m_t))
    return x_s - append_dims(c * phi_2(h_hat) / r2, x) * (model(x_u2, u2) - m_t)


def multistep_update(
    process: NoiseProcess, x: Tensor, ts: list[Tensor], ms: list[Tensor], s: Tensor, plus: bool,
    corrected_3m: bool = False, eta_h: Tensor | None = None, heun: bool = False,
) -> Tensor:
    """Multistep DPM-Solver(-++) of order len(ms) from ts[-1] to s, from the model values ``ms`` at ``ts``; 0 NFE.

    ``corrected_3m`` doubles D₂ in the order-3 update (see the module notes): third order instead of second.
    ``eta_h`` = ηh ≥ 0 (dpmsolver++ only) gives the deterministic part of the DPM-Solver++ SDE step
    (``dpm_solver_sde.py``): ρ·e^{−ηh} and ĥ = −(1 + η)h in every term. ``heun`` takes order 2 as the exact integral
    of the linear extrapolation, −c φ₂(ĥ) D₁ (dpm-solver's "taylor", diffusers' / k-diffusion's "heun"), instead of
    the midpoint −½ c φ₁(ĥ) D₁. ``ts[-2]`` may lie between ts[-1] and s (the SDE sampler's singlestep stage):
    D₁ is then the divided difference towards that later point.
    """
    order, lam = len(ms), [process.log_snr(t) for t in ts]
    h = process.log_snr(s) - lam[-1]
    h_hat = -h if plus else h
    rho, c = scales(process, ts[-1], s, plus)
    if eta_h is not None:
        rho, h_hat = rho * (-eta_h).exp(), h_hat - eta_h
    x_s = append_dims(rho, x) * x - append_dims(c * phi_1(h_hat), x) * ms[-1]
    if order == 1:
        return x_s
    r0 = (lam[-1] - lam[-2]) / h
    d1_0 = (ms[-1] - ms[-2]) / append_dims(r0, x)
    if order == 2:
        return x_s - append_dims(c * phi_2(h_hat) if heun else 0.5 * c * phi_1(h_hat), x) * d1_0
    r1 = (lam[-2] - lam[-3]) / h
    d1_1 = (ms[-2] - ms[-3]) / append_dims(r1, x)
    d1 = d1_0 + append_dims(r0 / (r0 + r1), x) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / append_dims((r0 + r1) / 2 if corrected_3m else r0 + r1, x)
    return x_s - append_dims(c * phi_2(h_hat), x) * d1 - append_dims(c * phi_3(h_hat), x) * d2


def singlestep_orders(steps: int, order: int, fast: bool) -> list[int]:
    """Orders of the singlestep steps for ``steps`` NFE: DPM-Solver-fast (Lu et al. 2022a, §3.4) or fixed order."""
    if not fast or order == 1:
        return [order] * (steps // order)
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    k = steps // 3 + 1
    return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[steps % 3]


def singlestep_plan(
    process: NoiseProcess, steps: int, order: int, spacing: Spacing, fast: bool, device: torch.device
) -> tuple[Tensor, list[int], list[tuple[Tensor | float, Tensor | float]]]:
    """(outer grid, order of each step, (r₁, r₂) of each step), as dpm-solver's singlestep schedules.

    With log-SNR spacing the outer grid is uniform in λ with one interval per step and r = ½ or (⅓, ⅔);
    otherwise the steps take consecutive groups of a ``sum(orders)``-interval grid and r comes from its λ's.
    """
    orders = singlestep_orders(steps, order, fast)
    if not orders:
        raise ValueError(f"{steps} steps are too few for singlestep order {order}")
    if spacing == "logsnr":
        outer = process.time_grid(len(orders), spacing, device=device)
        ratios = [(1 / k if k > 1 else 0.5, 2 / 3 if k == 3 else 1.0) for k in orders]
        fine_ok = len(outer) == len(orders) + 1
    else:
        fine = process.time_grid(sum(orders), spacing, device=device)
        fine_ok = len(fine) == sum(orders) + 1
        idx = torch.cumsum(torch.tensor([0] + orders), 0).tolist() if fine_ok else [0]
        outer, lam = fine[idx], process.log_snr(fine)
        ratios = [tuple((lam[i + j] - lam[i]) / (lam[i + k] - lam[i]) if j < k else 1.0 for j in (1, 2))
                  for i, k in zip(idx, orders)]
    if not fine_ok:
        raise ValueError(f"{type(process).__name__}'s grid merged points: use fewer steps than {steps}")
    return outer, orders, ratios


class DPMSolver(Sampler):
    """DPM-Solver / DPM-Solver++ (Lu et al. 2022a, b), singlestep or multistep, order 1–3; NFE = num_steps.

    Args:
        num_steps: NFE (with ``denoise`` the last is the final Tweedie step, as dpm-solver's ``denoise_to_zero``).
        order: 1, 2 or 3; order 1 is DDIM (η = 0).
        multistep: multistep (warm-up with lower orders for the first steps) or singlestep.
        algorithm: ``dpmsolver`` (noise prediction) or ``dpmsolver++`` (data prediction).
        spacing: time spacing (default uniform in log-SNR, dpm-solver's "logSNR").
        lower_order_final: multistep: lower orders for the last steps when there are fewer than 10;
            singlestep: DPM-Solver-fast's mix of orders using all ``num_steps`` (else fixed order,
            ``num_steps // order`` steps, as dpm-solver's "singlestep_fixed").
        corrected_3m: multistep order 3 with the third-order D₂ coefficient (see the module notes).
        thresholding: x̂₀ thresholding of every model value (``StaticThreshold``, ``DynamicThreshold``); for
            ``dpmsolver`` M is the ε̂ re-derived from the thresholded x̂₀, as diffusers' ``DPMSolverMultistepScheduler``.
    """

    steps_on_grid = True

    @property
    def reversible(self) -> bool:
        """Without thresholding. The updates are exact integrals of the linear part in λ, so they hold for
        h = λ_s − λ_t < 0 (s noisier than t): run inside process.window(t_min, t_max) DPM-Solver integrates the
        probability-flow ODE forward (encoding); a thresholded x̂₀ is not that ODE's."""
        return self.thresholding is None

    @property
    def ode_step(self) -> bool:
        """Singlestep (``multistep`` False) and ``reversible``: :meth:`flow_step` is its ``order`` update t → s."""
        return not self.multistep and self.reversible

    def __init__(
        self,
        num_steps: int = 20,
        order: Literal[1, 2, 3] = 2,
        multistep: bool = True,
        algorithm: Literal["dpmsolver", "dpmsolver++"] = "dpmsolver++",
        spacing: Spacing | None = "logsnr",
        denoise: bool = False,
        lower_order_final: bool = True,
        corrected_3m: bool = False,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        if algorithm not in ("dpmsolver", "dpmsolver++"):
            raise ValueError(f"unknown algorithm {algorithm!r}: use dpmsolver or dpmsolver++")
        self.order, self.multistep, self.algorithm = order, multistep, algorithm
        self.lower_order_final, self.corrected_3m = lower_order_final, corrected_3m
        self.thresholding = thresholding

    def interval(self) -> Sampler:
        """One interval of ``grid()`` by the first-order update (DDIM, η = 0), 1 NFE.

        A step transform changes x after every interval, so the model values a multistep update keeps from earlier
        times no longer belong to the trajectory: the history restarts each interval and every step is order 1.
        (The singlestep plan's own grid is not ``grid()``; on ``grid()`` it is likewise order 1, at the same NFE.)
        """
        return super().interval().with_settings(multistep=True)

    def multistep_order(self, i: int, n: int) -> int:
        """Order of multistep step i of n: warm-up i + 1, then ``order`` (lower at the end for n < 10)."""
        if i + 1 < self.order:
            return i + 1
        return min(self.order, n - i) if self.lower_order_final and n < 10 else self.order

    def model(self, score_fn: ScoreFn, process: NoiseProcess) -> Model:
        """M(y, t): x̂₀ for dpmsolver++, ε̂ for dpmsolver (one evaluation, thresholded when the sampler is)."""
        def model(y: Tensor, t: Tensor) -> Tensor:
            x0, eps = self.denoised(score_fn, process, y, t)
            return x0 if self.algorithm == "dpmsolver++" else eps

        return model

    def flow_step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """One singlestep update of ``order`` from t to s ≤ t with per-sample times (B,), the intermediate times at
        r = ½ (order 2) or (⅓, ⅔) (order 3) of the step in λ, as dpm-solver's log-SNR singlestep: ``order`` NFE (a
        distillation teacher's step, ``ode_step``)."""
        r1, r2 = (1 / 3, 2 / 3) if self.order == 3 else (0.5, 1.0)
        return singlestep_update(self.model(score_fn, process), process, x, t, s, self.order, r1, r2,
                                 self.algorithm == "dpmsolver++")

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        plus = self.algorithm == "dpmsolver++"
        model = self.model(score_fn, process)

        if self.multistep:
            grid = self.grid(process, x.device)
            n = len(grid) - 1
            ts = [full_like_t(x, grid[0])]
            ms = [model(x, ts[0])]
            for i in self.steps(n, progress, "dpm-solver"):
                s, order = full_like_t(x, grid[i + 1]), self.multistep_order(i, n)
                x = multistep_update(process, x, ts[-order:], ms[-order:], s, plus, self.corrected_3m)
                if i < n - 1:  # the model value at the last time is never needed
                    ts, ms = (ts + [s])[-self.order:], (ms + [model(x, s)])[-self.order:]
                _report(callback, i, full_like_t(x, grid[i]), x)
        else:
            spacing = self.spacing or process.default_spacing
            steps = self.num_steps - int(self.denoise)
            fast = self.lower_order_final
            grid, orders, ratios = singlestep_plan(process, steps, self.order, spacing, fast, x.device)
            for i in self.steps(len(orders), progress, "dpm-solver"):
                t, s = full_like_t(x, grid[i]), full_like_t(x, grid[i + 1])
                x = singlestep_update(model, process, x, t, s, orders[i], *ratios[i], plus)
                _report(callback, i, t, x)
        return self.finish(score_fn, process, x, grid[-1])


def _report(callback, i: int, t: Tensor, x: Tensor) -> None:
    if callback is not None:
        callback({"step": i, "t": t, "x": x})


__all__ = ["DPMSolver", "multistep_update", "singlestep_orders", "singlestep_plan", "singlestep_update"]
