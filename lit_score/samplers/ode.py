r"""ODE integrators in torch, and the probability-flow ODE samplers built on them.

``solve_ode`` is an embedded Runge–Kutta pair with step-size control (Dormand & Prince 1980, the 5(4)
pair with FSAL; or Bogacki & Shampine 1989, 3(2)); ``solve_ode_fixed`` runs Euler, Heun or RK4 over a
given grid. Both integrate dy/dt = fn(t, y) for a single tensor state y of shape (B, ...), with t handed
to ``fn`` as a 0-d tensor; both work in either direction of time.

| symbol | meaning |
|---|---|
| e = y₅ − y₄ | the embedded error estimate of one step |
| sc = atol + rtol·max(|y_n|, |y_{n+1}|) | elementwise tolerance (Hairer, Nørsett & Wanner 1993, II.4, eq. 4.10) |
| E = max_b RMS_b(e / sc) | error norm: per-sample RMS, then the worst sample, so each sample meets the tolerance |
| h ← h·clip(0.9·E^{−1/(q+1)}, 0.2, 10) | step-size controller, q the order of the embedded (lower) solution |

Accepting or rejecting a step needs E on the host: one synchronisation per step (both numbers read at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import (
    Sampler,
    ScoreFn,
    full_like_t,
    probability_flow_velocity,
    require_process,
)
from lit_score.samplers.stepping import sample_on_grid
from lit_score.utils import append_dims

ODEFn = Callable[[Tensor, Tensor], Tensor]

# Butcher tableaus (a, b of the propagated solution, b* of the embedded one, c, order q of the embedded one).
_DOPRI5 = (
    [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
     [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
     [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
     [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40],
    [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
    4,
)
_BOSH3 = (
    [[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
    [2 / 9, 1 / 3, 4 / 9, 0],
    [7 / 24, 1 / 4, 1 / 3, 1 / 8],
    [0, 1 / 2, 3 / 4, 1],
    2,
)
_TABLEAUS = {"dopri5": _DOPRI5, "bosh3": _BOSH3}


def _error_norm(e: Tensor) -> Tensor:
    """max over the batch of the per-sample RMS of ``e`` (a 0-d tensor)."""
    return e.reshape(e.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


def _initial_step(
    fn: Callable[[float, Tensor], Tensor], t0: float, y0: Tensor, f0: Tensor, direction: float, q: int, rtol, atol
) -> float:
    """Starting step size (Hairer, Nørsett & Wanner 1993, II.4, "starting step size"); one extra evaluation."""
    scale = atol + rtol * y0.abs()
    d0, d1 = _error_norm(y0 / scale), _error_norm(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = float(h0)
    f1 = fn(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = float(_error_norm((f1 - f0) / scale)) / h0
    dmax = max(float(d1), d2)
    h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1 / (q + 1))
    return min(100 * h0, h1)


def solve_ode(
    fn: ODEFn,
    y0: Tensor,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
    method: Literal["dopri5", "bosh3"] = "dopri5",
    on_step: Callable[[float, Tensor], None] | None = None,
) -> tuple[Tensor, int]:
    """y(t1) of dy/dt = fn(t, y), y(t0) = y0, by an adaptive embedded Runge–Kutta pair; returns (y1, NFE).

    ``fn(t, y)`` gets t as a 0-d tensor on y's device and dtype. ``on_step(t, y)`` is called after every
    accepted step. Raises ``RuntimeError`` after ``max_steps`` attempted steps.
    """
    if method not in _TABLEAUS:
        raise ValueError(f"unknown method {method!r}: use dopri5 or bosh3")
    a, b, b_star, c, q = _TABLEAUS[method]
    e_coef = [bi - bsi for bi, bsi in zip(b, b_star)]
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        return y0, 0
    direction = 1.0 if t1 > t0 else -1.0
    nfe = 0

    def f(t: float, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return fn(y.new_tensor(t), y)

    t, y = t0, y0
    k_first = f(t, y)
    h = min(_initial_step(f, t0, y0, k_first, direction, q, rtol, atol), abs(t1 - t0))
    for _ in range(max_steps):
        remaining = abs(t1 - t)
        last = h >= remaining
        h_step = remaining if last else h
        dt = direction * h_step
        ks = [k_first]
        for i in range(1, len(c)):
            y_i = y + dt * sum(a_ij * k for a_ij, k in zip(a[i], ks) if a_ij != 0)
            ks.append(f(t + c[i] * dt, y_i))
        # FSAL pairs: the last stage is evaluated at the propagated solution itself.
        y_new = y_i
        err = dt * sum(e_j * k for e_j, k in zip(e_coef, ks) if e_j != 0)
        norm = _error_norm(err / (atol + rtol * torch.maximum(y.abs(), y_new.abs())))
        norm = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, math.inf))
        factor = (0.9 * norm.clamp_min(1e-10) ** (-1 / (q + 1))).clamp(0.2, 10.0)
        norm_value, factor_value = torch.stack([norm, factor]).tolist()  # the one host sync of the step
        if norm_value <= 1:
            t, y, k_first = (t1 if last else t + dt), y_new, ks[-1]
            if on_step is not None:
                on_step(t, y)
            if last:
                return y, nfe
        h = h_step * factor_value
    raise RuntimeError(f"solve_ode did not reach t1={t1} from t0={t0} in max_steps={max_steps} steps (now t={t})")


# --- fixed-grid steps: y at s from y at t; t, s are 0-d or (B,) tensors ------------------------------------
def euler_step(fn: ODEFn, t: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """Explicit Euler: y + (s − t)·fn(t, y)."""
    return y + append_dims(s - t, y) * fn(t, y)


def heun_step(fn: ODEFn, t: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """Heun's method (explicit trapezoid, 2nd order), as in Algorithm 1 of Karras et al. 2022."""
    dt = append_dims(s - t, y)
    d = fn(t, y)
    d_next = fn(s, y + dt * d)
    return y + dt * 0.5 * (d + d_next)


def rk4_step(fn: ODEFn, t: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """The classical 4th-order Runge–Kutta step."""
    h = s - t
    dt = append_dims(h, y)
    k1 = fn(t, y)
    k2 = fn(t + h / 2, y + dt / 2 * k1)
    k3 = fn(t + h / 2, y + dt / 2 * k2)
    k4 = fn(s, y + dt * k3)
    return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def solve_ode_fixed(fn: ODEFn, y0: Tensor, ts: Tensor, method: Literal["euler", "heun", "rk4"] = "rk4") -> Tensor:
    """y at ts[-1] of dy/dt = fn(t, y), y(ts[0]) = y0, stepping through every time of the 1-D grid ``ts``."""
    if method not in _STEPS:
        raise ValueError(f"unknown method {method!r}: use euler, heun or rk4")
    step, ts, y = _STEPS[method], ts.to(device=y0.device, dtype=y0.dtype), y0
    for i in range(len(ts) - 1):
        y = step(fn, ts[i], ts[i + 1], y)
    return y


# --- probability-flow ODE samplers -------------------------------------------------------------------------
def velocity_fn(score_fn: ScoreFn, process: NoiseProcess) -> ODEFn:
    """fn(t, x) = dx/dt of the probability-flow ODE (Song et al. 2021, eq. 13), t 0-d or (B,)."""
    return lambda t, x: probability_flow_velocity(score_fn, process, x, full_like_t(x, t))


class Euler(Sampler):
    """Euler's method on the probability-flow ODE (Song et al. 2021, eq. 13); 1 NFE per step."""

    reversible = True  # y + (s − t)·v holds for s > t: the same method integrating forward
    steps_on_grid = True
    ode_step = True

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One Euler step t → s; returns (x_s, x_s)."""
        x = euler_step(velocity_fn(score_fn, process), t, s, x)
        return x, x

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="euler")


class Heun(Sampler):
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1); 2 NFE per step.

    ``num_steps`` counts grid steps (plus the final denoise): the NFE is 2·(num_steps − denoise) + denoise.
    """

    reversible = True
    steps_on_grid = True
    ode_step = True

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One Heun step t → s; returns (x_s, x_s)."""
        x = heun_step(velocity_fn(score_fn, process), t, s, x)
        return x, x

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="heun")


class AdaptiveODE(Sampler):
    """The probability-flow ODE by an adaptive embedded Runge–Kutta pair (``solve_ode``), t_max → t_min.

    One host synchronisation per step (step acceptance). ``progress`` shows the fraction of [t_min, t_max] done;
    ``callback`` gets every accepted step. The NFE depends on the tolerances.
    """

    reversible = True  # solve_ode integrates in either direction of time

    def __init__(
        self,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: Literal["dopri5", "bosh3"] = "dopri5",
        max_steps: int = 10_000,
        denoise: bool = True,
    ) -> None:
        check_number("rtol", rtol, gt=0.0)
        check_number("atol", atol, ge=0.0)
        check_number("max_steps", max_steps, ge=1, integer=True)
        super().__init__(1 + int(denoise), None, denoise)
        if method not in _TABLEAUS:
            raise ValueError(f"unknown method {method!r}: use dopri5 or bosh3")
        self.rtol, self.atol, self.method, self.max_steps = rtol, atol, method, max_steps

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        t_max, t_min = process.t_max, process.t_min
        bar = time_bar(t_max, t_min, progress, "adaptive ode")
        steps = 0

        def on_step(t: float, y: Tensor) -> None:
            nonlocal steps
            if bar is not None:
                bar.update(abs(t_max - t) / abs(t_max - t_min) - bar.n)
            if callback is not None:
                callback({"step": steps, "t": full_like_t(y, t), "x": y})
            steps += 1

        x, _ = solve_ode(velocity_fn(score_fn, process), x, t_max, t_min, self.rtol, self.atol, self.max_steps,
                         self.method, on_step)
        if bar is not None:
            bar.close()
        return self.finish(score_fn, process, x, torch.tensor(t_min))


def time_bar(t_start: float, t_end: float, progress: bool, desc: str):
    """A tqdm bar over the fraction of [t_end, t_start] integrated, or None."""
    if not progress:
        return None
    return tqdm(total=1.0, desc=desc, leave=False, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.3f}/1")


__all__ = [
    "AdaptiveODE",
    "Euler",
    "Heun",
    "euler_step",
    "heun_step",
    "rk4_step",
    "solve_ode",
    "solve_ode_fixed",
    "velocity_fn",
]
