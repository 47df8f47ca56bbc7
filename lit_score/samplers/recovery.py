r"""Diffusion recovery likelihood's conditional chains (Gao, Song, Poole, Wu & Kingma 2021), written once for the
loss that trains a noise-conditional energy with them and the sampler that generates with them.

| symbol | meaning |
|---|---|
| t₀ < t₁ < … < t_L | the ladder: ``recovery_grid`` (t₀ = t_min, t_L = t_max), ``num_levels`` = L pairs |
| (s, t) = (t_i, t_{i+1}) | one recovery step; x_t = α_{t\|s}·x_s + σ_{t\|s}·ε (``transition_variances``) |
| E(x, s) | the model's energy at level s (``score_model.energy``; −∇ₓE is its score) |
| p(x_s \| x_t) ∝ exp(−E(x_s, s) − ‖x_t − α_{t\|s}x_s‖² / 2σ²_{t\|s}) | the recovery density: E plus a Gaussian anchor |
| V_s = α_s²σ_d² + σ_s² | the variance of p_s were the data N(0, σ_d²·I) (σ_d = ``data_std``) |
| k = α_{t\|s}V_s/D, P = V_sσ²_{t\|s}/D, D = α²_{t\|s}V_s + σ²_{t\|s} | that Gaussian's E[x_s \| x_t] = k·x_t, Var = P |
| η = c·P (``step_size`` c) | Langevin step: x ← x + η∇log p(x \| x_t) + √(2η)·z, from x = k·x_t |

Given x_t the recovery density is nearly unimodal for small steps, so a short chain of K steps samples it well; that
is what makes the objective trainable with short chains. The reference (its TensorFlow code) scales the energy by the
step, E = −f/η, moves y = α·x_s and starts at x_t/α_{t|s}; its ladder keeps α_{t|s} near 1 (six levels in the low-noise
half of DDPM's schedule, then pure noise). On a ladder that spans a whole process, x_t/α_{t|s} is far outside p_s
at the high levels (α_{t|s} ≈ 0.16 between VP's top two of six uniform levels) and the division compounds down the
ladder (measured: samples of magnitude 10³). So here the chain starts at the Gaussian posterior mean k·x_t (x_t/α
only as α_{t|s} → 1 and σ_s → 0) and the step is stated relative to that posterior's variance P (c dimensionless,
η bounded by V_s at the top and → c·σ²_{t|s}/α²_{t|s} at the bottom).
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


def anchor(process: NoiseProcess, s: Tensor, t: Tensor, data_std: float = 1.0) -> tuple[Tensor, ...]:
    """(α_{t|s}, σ²_{t|s}, k, P) of the step s → t, shape (B,): the anchor, and the start gain and variance of the
    Gaussian posterior for data N(0, σ_d²·I)."""
    alpha_ts, sigma_ts2, _ = transition_variances(process, t, s)
    var_s = process.alpha(s) ** 2 * data_std**2 + process.sigma(s) ** 2
    denom = alpha_ts**2 * var_s + sigma_ts2
    return alpha_ts, sigma_ts2, alpha_ts * var_s / denom, var_s * sigma_ts2 / denom


def recovery_chain(
    score_fn: ScoreFn,
    x_t: Tensor,
    s: Tensor,
    coefficients: tuple[Tensor, Tensor, Tensor, Tensor],
    num_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """K unadjusted Langevin steps on p(x_s | x_t) from k·x_t with η = c·P; ``coefficients`` = :func:`anchor`'s
    (α_{t|s}, σ²_{t|s}, k, P), each per chain (B,)."""
    a, v, gain, var = (append_dims(c, x_t) for c in coefficients)
    step = step_size * var
    x = gain * x_t
    for _ in range(num_steps):
        drift = score_fn(x, s) + a * (x_t - a * x) / v
        x = x + step * drift + (2 * step).sqrt() * randn_like(x, generator)
    return x


class RecoverySampler(Sampler):
    """Generation by recovery: x_{t_L} from the prior, then for i = L−1 … 0 a chain on p(x_{t_i} | x_{t_{i+1}}).

    Use the ``num_levels`` (and ``spacing``) the :class:`~lit_score.losses.RecoveryLikelihood` loss trained with:
    the energy was fitted at exactly those levels. ``mh`` adds the Metropolis–Hastings test (MALA on the recovery
    density; needs the energy) and measures its ``acceptance_rate``; the reference runs plain Langevin.
    NFE: L·K (+ L with ``mh``, the chains' starting evaluations).

    Args:
        num_levels: L.
        steps_per_level: K, Langevin steps per recovery (the reference: 30).
        step_size: c, the step in units of the Gaussian posterior's variance P (:func:`anchor`).
        mh: Metropolis-adjust every step.
        spacing: the ladder's spacing (default: the process's own).
        data_std: σ_d of the Gaussian that sets each chain's start and step (the loss's value).
    """

    measures = ("acceptance_rate",)

    def __init__(
        self,
        num_levels: int = 6,
        steps_per_level: int = 30,
        step_size: float = 0.05,
        mh: bool = False,
        spacing: Spacing | None = None,
        data_std: float = 1.0,
    ) -> None:
        super().__init__(steps_per_level, spacing, denoise=False)
        self.data_std = check_number("data_std", data_std, gt=0.0)
        check_number("num_levels", num_levels, ge=1, integer=True)
        check_number("steps_per_level", steps_per_level, ge=1, integer=True)
        check_number("step_size", step_size, gt=0.0)
        self.num_levels, self.steps_per_level, self.step_size, self.mh = num_levels, steps_per_level, step_size, mh

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
            coefficients = anchor(process, s, t, self.data_std)
            if not self.mh:
                x = recovery_chain(score_fn, x, s, coefficients, self.steps_per_level, self.step_size, generator)
            else:
                x, rate = self._mala(score_fn, x, s, [float(c[0]) for c in coefficients], generator)
                accepted.append(rate)
            if callback is not None:
                callback({"step": k, "level": level, "t": s, "x": x})
        return x, ({"acceptance_rate": float(torch.stack(accepted).mean())} if accepted else {})

    def _mala(self, score_fn, x_t, s, coefficients: list[float], generator) -> tuple[Tensor, Tensor]:
        """MALA on the recovery density (E plus the anchor), from k·x_t; the levels' steps are scalars here."""
        a, v, gain, var = coefficients

        def fn(y: Tensor) -> tuple[Tensor, Tensor]:
            energy, score = energy_and_score(score_fn, y, s)
            diff = x_t - a * y
            return energy + diff.flatten(1).pow(2).sum(1) / (2 * v), score + a * diff / v

        x = gain * x_t
        energy, score = fn(x)
        total, step = torch.zeros((), device=x.device), self.step_size * var
        for _ in range(self.steps_per_level):
            x, energy, score, _, alpha = mala_step(fn, x, energy, score, step, 1.0, None, generator)
            total = total + alpha.mean()
        return x, total / self.steps_per_level


__all__ = ["RecoverySampler", "anchor", "recovery_chain", "recovery_grid"]
