r"""DDPM ancestral sampling and DDIM(η), for any process, over any grid.

For a step t → s < t, with α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α_{t|s}² σ_s² (Kingma et al. 2021, eq. 33):

| symbol | meaning |
|---|---|
| μ̃ = (α_{t|s} σ_s²/σ_t²)·x_t + (α_s σ²_{t|s}/σ_t²)·x̂₀ | posterior mean of q(x_s | x_t, x₀) (Ho et al. 2020, eq. 7) |
| β̃ = σ²_{t|s} σ_s²/σ_t² | posterior variance; the alternative "β" choice is σ²_{t|s} |
| DDIM: x_s = α_s x̂₀ + √(σ_s² − c²)·ε̂ + c·z, c = η·√β̃ | Song et al. 2021a, eq. 12 |
| log Σ = f·log σ²_{t|s} + (1 − f)·log β̃, f = (v + 1)/2 | a learned variance (Nichol & Dhariwal 2021, eq. 15) |

On DDPM's grid (t = n/N, s = (n−1)/N) these are exactly DDPM's β_n and β̃_n; on a VE process they
are SMLD's ancestral sampler (Song et al. 2021b, eq. 47).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn
from lit_score.samplers.stepping import sample_on_grid
from lit_score.samplers.thresholding import Thresholding
from lit_score.scores.function import as_score_function
from lit_score.utils import append_dims, randn_like


def transition_variances(process: NoiseProcess, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(α_{t|s}, σ²_{t|s}, β̃) for the step t → s."""
    alpha_t, alpha_s = process.alpha(t), process.alpha(s)
    sigma_t2, sigma_s2 = process.sigma(t) ** 2, process.sigma(s) ** 2
    alpha_ts = alpha_t / alpha_s
    sigma_ts2 = sigma_t2 - alpha_ts**2 * sigma_s2
    return alpha_ts, sigma_ts2, sigma_ts2 * sigma_s2 / sigma_t2


def learned_range_variance(frac: Tensor, sigma_ts2: Tensor, beta_tilde: Tensor) -> Tensor:
    """Σ = exp(f·log σ²_{t|s} + (1 − f)·log β̃) elementwise, with the step's (B,) bounds widened to f's shape: f = 0 is
    β̃, f = 1 is σ²_{t|s} (DDPM's β on its own grid), on whatever grid t → s belongs to."""
    log_upper, log_lower = append_dims(sigma_ts2.log(), frac), append_dims(beta_tilde.log(), frac)
    return (frac * log_upper + (1 - frac) * log_lower).exp()


def posterior_mean(process: NoiseProcess, x: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """μ̃(x_t, x̂₀) of q(x_s | x_t, x₀)."""
    alpha_ts, sigma_ts2, _ = transition_variances(process, t, s)
    sigma_t2, sigma_s2 = process.sigma(t) ** 2, process.sigma(s) ** 2
    coef_x = append_dims(alpha_ts * sigma_s2 / sigma_t2, x)
    coef_x0 = append_dims(process.alpha(s) * sigma_ts2 / sigma_t2, x)
    return coef_x * x + coef_x0 * x0


def check_clip(clip_denoised: float | None, thresholding: Thresholding | None) -> None:
    """``clip_denoised`` is a number > 0 or None, and not given beside ``thresholding`` (it is its shorthand)."""
    check_number("clip_denoised", clip_denoised, gt=0.0, allow_none=True)
    if clip_denoised is not None and thresholding is not None:
        raise ValueError(f"clip_denoised={clip_denoised:g} is the shorthand of thresholding=StaticThreshold"
                         f"({clip_denoised:g}): pass clip_denoised or thresholding, not both (on a command line that"
                         " adds thresholding to a sampler with a clip: --sampler.init_args.clip_denoised null)")


class Ancestral(Sampler):
    """Ancestral sampling from the DDPM posterior (Ho et al. 2020, Algorithm 2), on any grid.

    Args:
        variance: ``beta_tilde`` (posterior β̃, the DDPM paper's lower bound), ``beta`` (σ²_{t|s}, the upper), or
            ``learned`` (the model's interpolation between them for this step, iDDPM; one network evaluation gives
            the mean and the variance); None: ``learned`` when the model has a learned variance, else ``beta_tilde``.
        clip_denoised: clamp x̂₀ to [−c, c] before each step (DDPM clips to the image range 1.0): the shorthand of
            ``thresholding=StaticThreshold(c)``.
        thresholding: x̂₀ thresholding before each step and at the final denoise (``StaticThreshold``,
            ``DynamicThreshold``); not with ``clip_denoised``.
    """

    steps_on_grid = True

    def __init__(
        self,
        num_steps: int = 1000,
        spacing: Spacing | None = None,
        denoise: bool = True,
        variance: Literal["beta_tilde", "beta", "learned"] | None = None,
        clip_denoised: float | None = None,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        if variance not in (None, "beta_tilde", "beta", "learned"):
            raise ValueError(f"unknown variance {variance!r}: use beta_tilde, beta or learned")
        check_clip(clip_denoised, thresholding)
        self.variance, self.clip_denoised, self.thresholding = variance, clip_denoised, thresholding

    def update(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step t → s: (x_s, posterior mean μ̃, x̂₀)."""
        learned = as_score_function(score_fn).learned_variance
        variance = self.variance or ("learned" if learned else "beta_tilde")
        if variance == "learned" and not learned:
            raise ValueError("Ancestral(variance='learned') needs a model with a learned variance: use beta_tilde or"
                             " beta for this one")
        if variance == "learned":
            x0, _, frac = score_fn.predict_with_variance(x, t)
            x0 = self.thresholded(x0)
        else:
            x0 = self.denoised(score_fn, process, x, t)[0]
        _, sigma_ts2, beta_tilde = transition_variances(process, t, s)
        if variance == "learned":
            var = learned_range_variance(frac, sigma_ts2, beta_tilde)
        else:
            var = append_dims(beta_tilde if variance == "beta_tilde" else sigma_ts2, x)
        x_mean = posterior_mean(process, x, x0, t, s)
        return x_mean + var.sqrt() * randn_like(x, generator), x_mean, x0

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step t → s: (x_s, μ̃), the predictor interface of ``PredictorCorrector``."""
        return self.update(score_fn, process, x, t, s, generator)[:2]

    def advance(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step of :func:`sample_on_grid`: x_s, with x̂₀ reported to the step callback as ``denoised``."""
        x, x_mean, x0 = self.update(score_fn, process, x, t, s, generator)
        return x, {"x_mean": x_mean, "denoised": x0}

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="ancestral")


class DDIM(Sampler):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) with stochasticity η ∈ [0, 1]; η = 0 is deterministic.

    ``clip_denoised`` (c) is the shorthand of ``thresholding=StaticThreshold(c)``; ``thresholding`` applies to x̂₀ before
    each step (ε̂ re-derived from it, as diffusers' ``DDIMScheduler`` with ``thresholding``) and at the final denoise.
    """

    steps_on_grid = True

    @property
    def reversible(self) -> bool:
        """η = 0 without thresholding: x_s = α_s x̂₀ + σ_s ε̂ holds for s > t too (DDIM inversion; a clamped x̂₀ is not
        the probability-flow ODE's)."""
        return self.eta == 0 and self.x0_threshold is None

    @property
    def ode_step(self) -> bool:
        """η = 0 without thresholding (``reversible``): ``step`` is then one deterministic probability-flow step."""
        return self.reversible

    def __init__(
        self,
        num_steps: int = 50,
        spacing: Spacing | None = None,
        denoise: bool = True,
        eta: float = 0.0,
        clip_denoised: float | None = None,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        check_number("eta", eta, ge=0.0)
        check_clip(clip_denoised, thresholding)
        self.eta, self.clip_denoised, self.thresholding = eta, clip_denoised, thresholding

    def update(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step t → s: (x_s, x_s without its fresh noise, x̂₀)."""
        x0, eps = self.denoised(score_fn, process, x, t)
        c2 = self.eta**2 * transition_variances(process, t, s)[2]
        direction = append_dims((process.sigma(s) ** 2 - c2).clamp_min(0).sqrt(), x)
        x_mean = append_dims(process.alpha(s), x) * x0 + direction * eps
        if self.eta > 0:
            return x_mean + append_dims(c2.sqrt(), x) * randn_like(x, generator), x_mean, x0
        return x_mean, x_mean, x0

    def step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step t → s: (x_s, x_s without noise), the predictor interface of ``PredictorCorrector``."""
        return self.update(score_fn, process, x, t, s, generator)[:2]

    def advance(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One step of :func:`sample_on_grid`: x_s, with x̂₀ reported to the step callback as ``denoised``."""
        x, x_mean, x0 = self.update(score_fn, process, x, t, s, generator)
        return x, {"x_mean": x_mean, "denoised": x0}

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        return sample_on_grid(self, score_fn, x, process, generator=generator, callback=callback, progress=progress,
                              desc="ddim")


__all__ = ["Ancestral", "DDIM", "learned_range_variance", "posterior_mean", "transition_variances"]
