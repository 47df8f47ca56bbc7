"""The torch ODE integrators: adaptive embedded Runge–Kutta (``solve_ode``) and fixed grids (``solve_ode_fixed``)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.samplers.ode import solve_ode, solve_ode_fixed

RATES = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)


def forced_decay(t, y):
    """dy/dt = −k·y + sin t, contractive (one-sided Lipschitz constant −min k < 0)."""
    return -RATES * y + torch.sin(t)


def forced_decay_exact(t: float, t0: float, y0):
    """y(t) for y(t0) = y0: the particular solution (k sin t − cos t)/(k² + 1) plus a decaying homogeneous part."""
    def particular(s):
        return (RATES * math.sin(s) - math.cos(s)) / (RATES**2 + 1)

    return (y0 - particular(t0)) * torch.exp(-RATES * (t - t0)) + particular(t)


def rotation(t, y):
    """dy/dt = J y (a harmonic oscillator): norms are preserved and the flow is exactly a rotation by t."""
    return torch.stack([-y[:, 1], y[:, 0]], dim=1)


def rotation_exact(angle: float, y0):
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * y0[:, 0] - s * y0[:, 1], s * y0[:, 0] + c * y0[:, 1]], dim=1)


@pytest.fixture
def y0():
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_error_follows_tolerance(y0, method):
    """Global error ≤ (accepted steps)·√D·tol·(1 + max|y|): on a contractive problem local errors do not grow,
    and each accepted step has per-sample RMS error ≤ tol·(1 + |y|), i.e. max error ≤ √D times that."""
    errors, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        y1, nfe = solve_ode(forced_decay, y0, 0.0, 3.0, rtol=tol, atol=tol, method=method)
        err = float((y1 - forced_decay_exact(3.0, 0.0, y0)).abs().max())
        steps = nfe / (6 if method == "dopri5" else 3)  # evaluations per FSAL step
        assert err <= steps * math.sqrt(3) * tol * (1 + float(y0.abs().max()))
        errors.append(err)
        nfes.append(nfe)
    assert errors[0] > errors[1] > errors[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_adaptive_both_directions_and_nfe(y0):
    calls = []

    def counted(t, y):
        calls.append(t)
        return rotation(t, y)

    y = y0[:, :2]
    forward, nfe = solve_ode(counted, y, 0.0, 2.0, rtol=1e-9, atol=1e-9)
    assert nfe == len(calls)
    assert all(t.ndim == 0 and t.dtype == y.dtype for t in calls)
    torch.testing.assert_close(forward, rotation_exact(2.0, y), rtol=0, atol=1e-7)
    back, _ = solve_ode(rotation, forward, 2.0, 0.0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back, y, rtol=0, atol=1e-7)
    same, zero = solve_ode(rotation, y, 1.0, 1.0)
    assert zero == 0 and same is y


def test_adaptive_max_steps_and_method(y0):
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_ode(forced_decay, y0, 0.0, 100.0, rtol=1e-10, atol=1e-10, max_steps=5)
    with pytest.raises(ValueError, match="unknown method"):
        solve_ode(forced_decay, y0, 0.0, 1.0, method="rk45")


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_grid_order(y0, method, order):
    """log₂ of the error ratio between n and 2n steps tends to the order p as p + c/n; the deviation at 2n is
    then about the change between successive estimates, so |p̂(2n, 4n) − p| ≤ max(2|p̂(n, 2n) − p̂(2n, 4n)|, 0.1)."""
    exact = forced_decay_exact(2.0, 0.0, y0)
    errors = [float((solve_ode_fixed(forced_decay, y0, torch.linspace(0, 2, n + 1), method) - exact).abs().max())
              for n in (16, 32, 64)]
    p1, p2 = math.log2(errors[0] / errors[1]), math.log2(errors[1] / errors[2])
    assert abs(p2 - order) <= max(2 * abs(p1 - p2), 0.1), (p1, p2)


def test_fixed_grid_backwards_and_unknown(y0):
    y = y0[:, :2]
    back = solve_ode_fixed(rotation, y, torch.linspace(1.0, 0.0, 41, dtype=torch.float64), "rk4")
    torch.testing.assert_close(back, rotation_exact(-1.0, y), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="unknown method"):
        solve_ode_fixed(rotation, y, torch.linspace(0, 1, 3), "midpoint")
