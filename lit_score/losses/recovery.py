r"""Diffusion recovery likelihood (Gao, Song, Poole, Wu & Kingma 2021) as a loss for noise-conditional energies.

For a level pair (s, t) = (t_i, t_{i+1}) of the ladder (:func:`~lit_score.samplers.recovery.recovery_grid`), i uniform
per sample: x_s = α_s x₀ + σ_s ε, x_t = α_{t|s} x_s + σ_{t|s} ε′, and the model's conditional density of x_s given x_t
is p(x_s | x_t) ∝ exp(−E(x_s, s) − ‖x_t − α_{t|s} x_s‖² / 2σ²_{t|s}). Its log-likelihood gradient is
−∇_θE(x_s, s) + E_{p(·|x_t)}[∇_θE(x̃_s, s)] (the anchor does not depend on θ), so the per-sample loss is

    ℓ = w_i · (E(x_s, s) − E(x̃_s, s)),   x̃_s = K Langevin steps on p(· | x_t) from k·x_t (no gradient),

the contrastive-divergence form at every level, with short chains that work because p(· | x_t) is nearly unimodal;
they start at a Gaussian posterior mean k·x_t, not the reference's x_t/α_{t|s} (why: the samplers module).
w_i = σ_{t₁|t₀}/σ_{t_{i+1}|t_i} is the reference's per-level scale (1 at the first pair).
Unlike denoising score matching the energy's constant per level is unconstrained, so its E(x, t) has the score, not
the normalised log-density, as every other noise-conditional energy. :class:`~lit_score.samplers.RecoverySampler`
generates with the same chains.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.processes import Spacing
from lit_score.samplers.recovery import anchor, recovery_chain, recovery_grid
from lit_score.utils import append_dims, rand, randn_like


class RecoveryLikelihood(DiffusionLoss):
    """Recovery-likelihood objective per sample (B,) for a diffusion family with a ``NoiseConditionalEnergy``.

    Args:
        num_levels: L level pairs (the reference: 6 on CIFAR-10).
        num_steps: K Langevin steps per negative sample (the reference: 30).
        step_size: c, the Langevin step in units of the Gaussian posterior's variance P (:func:`anchor`).
        spacing: the ladder's spacing (default: the process's own); the sampler must use the same.
        level_scale: weight level i by σ_{t₁|t₀}/σ_{t_{i+1}|t_i} (the reference); False: weight 1.
        data_std: σ_d of the Gaussian whose posterior sets each chain's start k·x_t and step c·P (see
            :mod:`lit_score.samplers.recovery`); the data's per-coordinate standard deviation.
    """

    requires_energy = True

    def __init__(
        self,
        num_levels: int = 6,
        num_steps: int = 30,
        step_size: float = 0.05,
        spacing: Spacing | None = None,
        level_scale: bool = True,
        data_std: float = 1.0,
    ) -> None:
        self.data_std = check_number("data_std", data_std, gt=0.0)
        self.num_levels = check_number("num_levels", num_levels, ge=1, integer=True)
        self.num_steps = check_number("num_steps", num_steps, ge=1, integer=True)
        self.step_size = check_number("step_size", step_size, gt=0.0)
        self.spacing, self.level_scale = spacing, level_scale

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        grid = recovery_grid(process, self.num_levels, self.spacing, x0.device)
        pairs = len(grid) - 1
        index = (rand((x0.shape[0],), generator, x0.device) * pairs).long().clamp(max=pairs - 1)
        s, t = grid[index].to(x0.dtype), grid[index + 1].to(x0.dtype)
        coefficients = anchor(process, s, t, self.data_std)
        alpha_ts, sigma_ts2 = coefficients[:2]
        x_s = process.perturb(x0, s, randn_like(x0, generator))
        x_t = append_dims(alpha_ts, x0) * x_s + append_dims(sigma_ts2.sqrt(), x0) * randn_like(x0, generator)
        was_training = score_model.training
        score_model.eval()  # the chain needs only ∇ₓE: no graph to θ, no dropout
        try:
            with torch.no_grad():
                negative = recovery_chain(score_model, x_t, s, coefficients, self.num_steps, self.step_size,
                                          generator).detach()
        finally:
            score_model.train(was_training)
        energy = score_model.energy(torch.cat([x_s, negative]), torch.cat([s, s]))
        loss = energy[: x0.shape[0]] - energy[x0.shape[0]:]
        if self.level_scale:
            first = anchor(process, grid[:1], grid[1:2])[1]
            loss = loss * (first.sqrt().to(x0.dtype) / sigma_ts2.sqrt())
        return loss

    def __repr__(self) -> str:
        return (f"RecoveryLikelihood(num_levels={self.num_levels}, num_steps={self.num_steps},"
                f" step_size={self.step_size}, spacing={self.spacing!r}, level_scale={self.level_scale},"
                f" data_std={self.data_std})")


__all__ = ["RecoveryLikelihood"]
