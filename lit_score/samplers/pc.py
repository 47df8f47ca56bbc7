r"""Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3) with the Langevin corrector at a target SNR.

At every grid interval t → s the corrector runs ``n_steps`` Langevin steps at t, then any predictor
(a sampler with a ``step``, see ``stepping.py``) moves x to s — score_sde's order.

| symbol | meaning |
|---|---|
| r (``snr``) | target signal-to-noise ratio ‖ε·s‖ / ‖√(2ε)·z‖ of one Langevin step |
| α_i = (α_t/α_s)² | step-size factor: score_sde's 1 − β_i on DDPM's grid (α_{t|s}² = 1 − β_i), 1 for VE |
| ε = 2 α_i (r ‖z‖ / ‖s_θ(x, t)‖)² | step size; ‖·‖ the batch mean of per-sample norms, as score_sde |
| x ← x + ε s_θ + √(2ε) z | the Langevin step, with the same z as in ε |

``norm="sample"`` uses each sample's own norms instead (no coupling across the batch). Fine in high
dimension, where norms concentrate, but in low dimension ‖z‖²/‖s‖² is heavy-tailed (F(2, 2) in 2-D, of
infinite mean: samples near a mode get huge steps), so the batch mean is the default.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn
from lit_score.samplers.langevin import langevin_step
from lit_score.samplers.mcmc import energy_and_score, metropolis_accept
from lit_score.samplers.sde import ReverseDiffusion
from lit_score.samplers.stepping import Stepper, sample_on_grid, sample_on_grid_with_acceptance
from lit_score.utils import append_dims, per_sample_norm, randn_like


def langevin_alpha(process: NoiseProcess, t: Tensor, s: Tensor) -> Tensor:
    """α_i = (α_t/α_s)² of the interval t → s, (B,); score_sde's ``alphas`` (1 − β_i for VP, 1 for VE)."""
    return (process.log_alpha(t) - process.log_alpha(s)).mul(2).exp()


def batch_norm(x: Tensor) -> Tensor:
    """The batch mean of the per-sample norms, broadcast to (B,) (score_sde's choice; stays on the device)."""
    return per_sample_norm(x).mean().expand(x.shape[0])


def langevin_corrector_step(
    score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, snr: float,
    generator: torch.Generator | None, norm: Literal["batch", "sample"] = "batch",
) -> tuple[Tensor, Tensor]:
    """One Langevin corrector step at t with target SNR (Song et al. 2021, Algorithms 4–5); (x, x_mean)."""
    score, z = score_fn(x, t), randn_like(x, generator)
    norm_fn = batch_norm if norm == "batch" else per_sample_norm
    ratio = snr * norm_fn(z) / norm_fn(score).clamp_min(torch.finfo(x.dtype).tiny)
    eps = 2 * langevin_alpha(process, t, s) * ratio**2
    x_mean = langevin_step(x, score, eps, 0.0)
    return x_mean + append_dims((2 * eps).sqrt(), x) * z, x_mean


class LangevinCorrector(Sampler):
    """Langevin corrector with a target SNR (Song et al. 2021, Algorithms 4–5); alone, corrector-only sampling.

    Called as a sampler it runs ``n_steps`` corrector steps at each grid time but the last, then the final
    denoise (score_sde's PC sampler with no predictor); inside ``PredictorCorrector`` only ``snr`` and
    ``n_steps`` matter. The NFE is ``n_steps`` per grid time.
    """

    steps_on_grid = True

    def __init__(
        self,
        snr: float = 0.16,
        n_steps: int = 1,
        num_steps: int = 1000,
        spacing: Spacing | None = None,
        denoise: bool = True,
        norm: Literal["batch", "sample"] = "batch",
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        check_number("snr", snr, gt=0.0)
        check_number("n_steps", n_steps, ge=0, integer=True)
        if norm not in ("batch", "sample"):
            raise ValueError(f"unknown norm {norm!r}: use batch or sample")
        self.snr, self.n_steps, self.norm = float(snr), int(n_steps), norm

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """``n_steps`` Langevin steps at t, with α_i from the interval t → s; returns (x, x_mean)."""
        x_mean = x
        for _ in range(self.n_steps):
            x, x_mean = langevin_corrector_step(score_fn, process, x, t, s, self.snr, generator, self.norm)
        return x, x_mean

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="langevin corrector")


def mala_corrector_step(
    score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, snr: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Metropolis-adjusted corrector step at t on p_t ∝ exp(−E(x, t)): (x, x_mean, accepted (B,)).

    The step follows the SNR rule with the expected noise norm, per chain, ε(x) = 2·α_i·(r·√D / ‖s(x)‖)², so it depends
    on the chain's own state only; the proposal x′ ~ N(x + ε(x)·s(x), 2ε(x)·I) and its reverse, with ε(x′), enter
    the Metropolis–Hastings ratio with their own variances (a position-dependent MALA, exact for any ε).
    """

    dim = x[0].numel()
    alpha = langevin_alpha(process, t, s)
    tiny = torch.finfo(x.dtype).tiny

    def step_size(score: Tensor) -> Tensor:
        return 2 * alpha * (snr * dim**0.5 / per_sample_norm(score).clamp_min(tiny)) ** 2

    energy, score = energy_and_score(score_fn, x, t)
    eta = step_size(score)
    mean = x + append_dims(eta, x) * score
    proposal = mean + append_dims((2 * eta).sqrt(), x) * randn_like(x, generator)
    energy_new, score_new = energy_and_score(score_fn, proposal, t)
    eta_new = step_size(score_new)
    log_forward = -per_sample_norm(proposal - mean) ** 2 / (4 * eta) - 0.5 * dim * torch.log(4 * torch.pi * eta)
    back = x - proposal - append_dims(eta_new, x) * score_new
    log_backward = -per_sample_norm(back) ** 2 / (4 * eta_new) - 0.5 * dim * torch.log(4 * torch.pi * eta_new)
    log_alpha = energy - energy_new + log_backward - log_forward
    accept = metropolis_accept(log_alpha, generator)
    x = torch.where(append_dims(accept, x), proposal, x)
    return x, x, accept


class MALACorrector(LangevinCorrector):
    """The Langevin corrector with a Metropolis–Hastings test at each level (needs the energy E(x, t) of a
    noise-conditional energy model): every corrector step leaves p_t exactly invariant, and a call measures how often
    its SNR-rule step is accepted (``acceptance_rate``; each grid step reports its corrector steps' shares of accepted
    chains as ``accepted_fraction``). Two energy evaluations per step."""

    requires_energy = True
    measures = ("acceptance_rate",)

    def __init__(
        self,
        snr: float = 0.16,
        n_steps: int = 1,
        num_steps: int = 1000,
        spacing: Spacing | None = None,
        denoise: bool = True,
    ) -> None:
        super().__init__(snr, n_steps, num_steps, spacing, denoise, norm="sample")

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ("snr", "n_steps", "num_steps", "spacing", "denoise")}

    def correct(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """``n_steps`` MALA steps at t: (x, the share of chains each step accepted (n_steps,), on the device)."""
        accepted = []
        for _ in range(self.n_steps):
            x, _, accept = mala_corrector_step(score_fn, process, x, t, s, self.snr, generator)
            accepted.append(accept.float().mean())  # kept on the device: no host sync per step
        return x, torch.stack(accepted) if accepted else x.new_zeros(0)

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        x, _ = self.correct(score_fn, process, x, t, s, generator)
        return x, x

    def advance(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        x, accepted = self.correct(score_fn, process, x, t, s, generator)
        return x, {"x_mean": x, "accepted_fraction": accepted}

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid_with_acceptance(self, score_fn, x, process, generator=generator, callback=callback,
                                              progress=progress, desc="mala corrector")


class PredictorCorrector(Sampler):
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1): corrector at t, then predictor t → s.

    The grid, ``num_steps``, ``spacing`` and ``denoise`` are the predictor's; the NFE is
    (predictor NFE per step + corrector ``n_steps``) per grid step, plus the final denoise.

    Args:
        predictor: any sampler with a ``step`` (default ``ReverseDiffusion()``).
        corrector: the corrector (default ``LangevinCorrector()``); ``n_steps=0`` gives the predictor alone.
    """

    #: a Metropolis-adjusted corrector's (MALACorrector's) share of accepted steps; nothing for the others
    measures = ("acceptance_rate",)

    def __init__(self, predictor: Sampler | None = None, corrector: LangevinCorrector | None = None) -> None:
        if predictor is None:
            predictor = ReverseDiffusion(num_steps=1000)
        corrector = corrector if corrector is not None else LangevinCorrector()
        for role, part in (("predictor", predictor), ("corrector", corrector)):
            if not isinstance(part, Stepper):
                raise TypeError(f"{type(part).__name__} has no step(score_fn, process, x, t, s, generator): "
                                f"it cannot be the {role} of a PredictorCorrector")
        super().__init__(predictor.num_steps, predictor.spacing, predictor.denoise)
        self.predictor, self.corrector = predictor, corrector

    @property
    def requires_energy(self) -> bool:
        """A Metropolis-adjusted corrector needs the model's energy."""
        return self.corrector.requires_energy

    @property
    def steps_on_grid(self) -> bool:
        """The predictor's grid, one interval per step."""
        return self.predictor.steps_on_grid

    def interval(self) -> Sampler:
        """The corrector and the predictor's one-interval sampler."""
        return self.with_settings(predictor=self.predictor.interval())

    def grid(self, process: NoiseProcess, device: torch.device) -> Tensor:
        """The predictor's grid."""
        return self.predictor.grid(process, device)

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """The corrector at t, then the predictor t → s; returns the predictor's (x_s, x_mean)."""
        x, _ = self.corrector.step(score_fn, process, x, t, s, generator)
        return self.predictor.step(score_fn, process, x, t, s, generator)

    def advance(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """:meth:`step`, reporting the predictor's x_mean and what the corrector's step reports beside it."""
        x, corrected = self.corrector.advance(score_fn, process, x, t, s, generator)
        x, x_mean = self.predictor.step(score_fn, process, x, t, s, generator)
        return x, {**corrected, "x_mean": x_mean}

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid_with_acceptance(self, score_fn, x, process, generator=generator, callback=callback,
                                              progress=progress, desc="predictor-corrector")


__all__ = ["LangevinCorrector", "MALACorrector", "PredictorCorrector", "langevin_alpha", "langevin_corrector_step",
           "mala_corrector_step"]
