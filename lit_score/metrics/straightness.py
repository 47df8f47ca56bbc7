r"""Straightness of a probability-flow ODE (Liu, Gong & Liu 2022, "Flow straight and fast", Sec. 2.2, Def. 2.2).

    S(Z) = ∫₀¹ E‖(Z₁ − Z₀) − Ż_t‖² dt

=============  ==================================================================================================
symbol         here
=============  ==================================================================================================
Z_t            the ODE path from x at t_max to t_min (the paper's time s = (t_max − t)/(t_max − t_min) ∈ [0, 1])
Ż_t            its velocity in the paper's time: (t_max − t_min)·(−dx/dt), so Z₁ − Z₀ is the whole displacement
‖·‖²           the squared Euclidean norm over all data dimensions (the paper's; not a per-dimension mean)
=============  ==================================================================================================

S = 0 exactly when every path is a straight line travelled at constant speed; a k-step Euler solve is then exact.
Computed by Euler's method on ``num_steps`` uniform steps with the velocities it evaluates, as a Riemann sum: with
weights w_i = Δt_i/(t_max − t_min) (Σ w_i = 1) and D = Σ w_i v_i (Euler's own displacement, so D = Z₁ − Z₀ of the
discrete path), S_N = E[Σ w_i ‖v_i‖² − ‖D‖²] = E[Σ w_i ‖v_i − D‖²], accumulated per step (no path kept in memory).
Converges to S at Euler's first order as ``num_steps`` grows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import ScoreFn
from lit_score.samplers.ode import velocity_fn
from lit_score.utils import batch_sum


@dataclass(frozen=True)
class Straightness:
    """S(Z) (module docstring) with its protocol: Euler steps (= NFE), the number of paths and its standard error."""

    straightness: float
    standard_error: float
    num_steps: int
    num_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def straightness(score_fn: ScoreFn, process: NoiseProcess, x: Tensor, num_steps: int = 100) -> Straightness:
    """S(Z) of the probability-flow ODE of ``score_fn`` on ``process`` from the start states ``x`` (at t_max; a model's
    ``initial_state(n, generator)``), by ``num_steps`` Euler steps (module docstring)."""
    check_number("num_steps", num_steps, ge=1, integer=True)
    if x.shape[0] < 2:
        raise ValueError(f"straightness averages over paths: pass at least 2 start states, got {x.shape[0]}")
    velocity = velocity_fn(score_fn, process)
    ts = process.time_grid(num_steps, "uniform", device=x.device)
    span = ts[0] - ts[-1]
    z, moment = x, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(num_steps):
        dt = (ts[i + 1] - ts[i]).to(x.dtype)
        v = velocity(ts[i].to(x.dtype), z) * (-span.to(x.dtype))  # Ż in the paper's time
        moment += (dt.abs() / span).double() * batch_sum(v.double() ** 2)
        z = z + dt * v / (-span.to(x.dtype))
    displacement = batch_sum(((z - x).double()) ** 2)  # ‖Z₁ − Z₀‖²
    per_path = moment - displacement
    return Straightness(per_path.mean().item(), (per_path.std() / per_path.shape[0] ** 0.5).item(), num_steps,
                        x.shape[0])


__all__ = ["Straightness", "straightness"]
