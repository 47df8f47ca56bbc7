r"""Diffusion recovery likelihood's conditional chains (Gao, Song, Poole, Wu & Kingma 2021), written once for the
loss that trains a noise-conditional energy with them and the sampler that generates with them.

| symbol | meaning |
|---|---|
| t₀ < t₁ < … < t_L | the ladder: ``recovery_grid`` (t₀ = t_min, t_L = t_max), ``num_levels`` = L pairs |
| (s, t) = (t_i, t_{i+1}) | one recovery step; x_t = α_{t\|s}·x_s + σ_{t\|s}·ε (``transition_variances``) |
| E(x, s) | the model's energy at level s (``score_model.energy``; −∇ₓE is its score) |
| p(x_s \| x_t) ∝ exp(−E(x_s, s) − ‖x_t − α_{t\|s}x_s‖² / 2σ²_{t\|s}) | the recovery density: E plus a Gaussian anchor |
| w = σ_{t\|s}/α_{t\|s} | the anchor's width in x_s; a chain starts at x_t/α_{t\|s} |
| η = c·w² (``step_size`` c) | Langevin step: x ← x + η∇log p(x \| x_t) + √(2η)·z |

Given x_t the recovery density is close to a Gaussian of width w (nearly unimodal for small steps), so a short chain
of K steps samples it well; that is what makes the objective trainable with short chains from the anchor. The
reference (its TensorFlow code) scales the energy by the step, E = −f/η, and Langevin moves y = α·x_s; here E is the
model's own energy in x_s, and the step is stated in units of the anchor's width (c is dimensionless).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.ancestral import transition_variances
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.mcmc import energy_and_score, mala_step
from lit_score.utils import append_dims, randn_like


def recovery_grid(process: NoiseProcess, num_levels: int, spacing: Spacing | None = None, device=None) -> Tensor:
    """t₀ = t_min < … < t_L = t_max (float64, increasing): the process's own grid of L steps, reversed."""
    return process.time_grid(num_levels, spacing, device=device).flip(0)


def anchor(process: NoiseProcess, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(α_{t|s}, σ²_{t|s}) of the step s → t, shape (B,)."""
    alpha_ts, sigma_ts2, _ = transition_variances(process, t, s)
    return alpha_ts, sigma_ts2


def recovery_chain(
    score_fn: ScoreFn,
    x_t: Tensor,
    s: Tensor,
    alpha_ts: Tensor,
    sigma_ts2: Tensor,
    num_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """K unadjusted Langevin steps on p(x_s | x_t) from x_t/α_{t|s}; α, σ² and the step η = c·σ²/α² per chain (B,)."""
    a, v = append_dims(alpha_ts, x_t), append_dims(sigma_ts2, x_t)
    step = step_size * v / a**2
    x = x_t / a
    for _ in range(num_steps):
        drift = score_fn(x, s) + a * (x_t - a * x) / v
        x = x + step * drift + (2 * step).sqrt() * randn_like(x, generator)
    return x


class RecoverySampler(Sampler):
    """Generation by recovery: x_{t_L} from the prior, then for i = L−1 … 0 a chain on p(x_{t_i} | x_{t_{i+1}}).

    Use the ``num_levels`` (and ``spacing``) the :class:`~lit_score.losses.RecoveryLikelihood` loss trained with:
    the energy was fitted at exactly those levels. ``mh`` adds the Metropolis–Hastings test (MALA on the recovery
    density; needs the energy) and records ``acceptance_rate``; the reference runs plain Langevin.
    NFE: L·K (+ L with ``mh``, the chains' starting evaluations).

    Args:
        num_levels: L.
        steps_per_level: K, Langevin steps per recovery (the reference: 30).
        step_size: c, the step in units of the anchor's squared width.
        mh: Metropolis-adjust every step.
        spacing: the ladder's spacing (default: the process's own).
    """

    run_state = ("nfe", "acceptance_rate")

    def __init__(
        self,
        num_levels: int = 6,
        steps_per_level: int = 30,
        step_size: float = 0.05,
        mh: bool = False,
        spacing: Spacing | None = None,
    ) -> None:
        super().__init__(steps_per_level, spacing, denoise=False)
        check_number("num_levels", num_levels, ge=1, integer=True)
        check_number("steps_per_level", steps_per_level, ge=1, integer=True)
        check_number("step_size", step_size, gt=0.0)
        self.num_levels, self.steps_per_level, self.step_size, self.mh = num_levels, steps_per_level, step_size, mh
        self.acceptance_rate: float | None = None

    @property
    def requires_energy(self) -> bool:
        return self.mh

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        grid = recovery_grid(process, self.num_levels, self.spacing, x.device)
        accepted = []
        for k, i in enumerate(self.steps(len(grid) - 1, progress, "recovery")):
            level = len(grid) - 2 - i
            s, t = full_like_t(x, grid[level]), full_like_t(x, grid[level + 1])
            alpha_ts, sigma_ts2 = anchor(process, s, t)
            if not self.mh:
                x = recovery_chain(score_fn, x, s, alpha_ts, sigma_ts2, self.steps_per_level, self.step_size,
                                   generator)
            else:
                x, rate = self._mala(score_fn, x, s, float(alpha_ts[0]), float(sigma_ts2[0]), generator)
                accepted.append(rate)
            if callback is not None:
                callback({"step": k, "level": level, "t": s, "x": x})
        self.acceptance_rate = float(torch.stack(accepted).mean()) if accepted else None
        return x

    def _mala(self, score_fn, x_t, s, a: float, v: float, generator) -> tuple[Tensor, Tensor]:
        """MALA on the recovery density (E plus the anchor), from x_t/α; the levels' steps are scalars here."""

        def fn(y: Tensor) -> tuple[Tensor, Tensor]:
            energy, score = energy_and_score(score_fn, y, s)
            diff = x_t - a * y
            return energy + diff.flatten(1).pow(2).sum(1) / (2 * v), score + a * diff / v

        x = x_t / a
        energy, score = fn(x)
        total, step = torch.zeros((), device=x.device), self.step_size * v / a**2
        for _ in range(self.steps_per_level):
            x, energy, score, _, alpha = mala_step(fn, x, energy, score, step, 1.0, None, generator)
            total = total + alpha.mean()
        return x, total / self.steps_per_level


__all__ = ["RecoverySampler", "anchor", "recovery_chain", "recovery_grid"]
