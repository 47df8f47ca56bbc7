"""The sampler interface and the step maths that more than one sampler needs.

A sampler is configured by its typed ``__init__`` and called as
``sampler(score_fn, x, process, *, generator=None, callback=None, progress=False) -> x``, where
``score_fn(x, t)`` returns ∇ₓ log p_t(x) and ``x`` is the starting point (usually a prior sample).
A score function may also offer ``predict(x, t) -> (x̂₀, ε̂)`` and ``velocity(x, t)``
(:class:`~lit_score.scores.NetworkScore` does); samplers use them when present, else derive them from
the score.

A call returns the samples only; :meth:`Sampler.draw` (same arguments) returns what the call produced as a
:class:`Draw`, and nothing of a call is left on the sampler:

| field | what |
|---|---|
| ``samples`` | x at the end of the run |
| ``nfe`` | score (energy, denoiser, velocity) evaluations of this call, counted by a per-call :class:`CountingScore` |
| ``measurements`` | what the sampling loop measured beside its NFE, keyed by the names in ``sampler.measures`` |
|  | (an MCMC kernel's ``acceptance_rate`` and ``adapted_step_size``, …; empty for samplers that measure nothing) |
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing, check_spacing
from lit_score.samplers.draw import CountingScore, Draw
from lit_score.samplers.thresholding import StaticThreshold, Thresholding
from lit_score.scores.function import as_score_function
from lit_score.utils import append_dims

ScoreFn = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[dict[str, Any]], None]


def full_like_t(x: Tensor, t: Tensor | float) -> Tensor:
    """A (B,) tensor of time t for the batch x."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype) if not torch.is_tensor(t) else (
        t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    )


def predict_x0_eps(score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) at (x, t): from ``score_fn.predict`` when offered, else Tweedie from the score."""
    predict = as_score_function(score_fn).predict
    if predict is not None:
        return predict(x, t)
    alpha, sigma = append_dims(process.alpha(t), x), append_dims(process.sigma(t), x)
    eps = -sigma * score_fn(x, t)
    return (x - sigma * eps) / alpha, eps


def probability_flow_velocity(score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor) -> Tensor:
    """dx/dt of the probability-flow ODE: ``score_fn.velocity`` when offered, else f·x − ½g²·s."""
    velocity = as_score_function(score_fn).velocity
    if velocity is not None:
        return velocity(x, t)
    return process.reverse_drift(x, t, score_fn(x, t), probability_flow=True)


def require_process(process: NoiseProcess | None, sampler: object) -> NoiseProcess:
    """Fail clearly when a sampler that needs a noise process is called without one."""
    if process is None:
        raise ValueError(f"{type(sampler).__name__} needs a noise process: call it as sampler(score_fn, x, process)")
    return process


class Sampler(ABC):
    """Base of all samplers: a typed configuration, a grid, a loop.

    Args:
        num_steps: network-evaluating steps; with ``denoise`` the last of them is the final
            noise-free (Tweedie) step at t_min, so the grid then has ``num_steps - 1`` intervals.
        spacing: time spacing (default: the process's own): a name (uniform, quadratic, karras, logsnr, kl_optimal)
            or the path of a grid file (``lit-score grid``), which ``grid()`` reads through ``process.time_grid``.
        denoise: finish with x̂₀ = E[x₀ | x_{t_min}] instead of the last noisy iterate.
    """

    #: whether the sampler needs a noise process (every sampler but plain Langevin, which runs on an EBM's −∇E)
    requires_process: bool = True
    #: whether it carries the prior sample through the process's noise levels t_max → t_min (every sampler but
    #: plain Langevin, which runs one chain at t_min: from the prior it cannot reach a diffusion model's data)
    traverses_noise_levels: bool = True
    #: whether it needs the energy E(x) itself, not only the score (the Metropolis–Hastings kernels MALA and HMC)
    requires_energy: bool = False
    #: whether it needs a two-time model's flow map X_{t→s} (FlowMapSampler), not only a score
    requires_two_time: bool = False
    #: the names of what a call measures beside its NFE (the keys ``Draw.measurements`` may hold); a sampler that
    #: declares some returns ``(x, measurements)`` from its ``sample`` loop, the others return x
    measures: tuple[str, ...] = ()
    #: whether it is a deterministic solver of the probability-flow ODE whose updates hold with t increasing as well,
    #: so that inside ``process.window(t_min, t_max)`` it maps data to latents (DDIM inversion; ``control.encode``)
    reversible: bool = False
    #: whether it walks ``grid(process)`` one interval at a time with x as its whole state, so that ``interval()``
    #: inside ``process.window(t_i, t_{i+1})`` takes the step a full run takes there (step transforms: inpainting)
    steps_on_grid: bool = False

    @property
    def ode_step(self) -> bool:
        """Whether :meth:`flow_step` takes one deterministic probability-flow step t → s with per-sample times (B,)
        and x as its whole state: what a distillation teacher steps with (:class:`~lit_score.losses.Teacher`).
        Euler, Heun, DDIM with η = 0, EDMHeun without churn and singlestep DPMSolver, all without thresholding."""
        return False

    def flow_step(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """x_s from x_t by one deterministic probability-flow step t → s (``ode_step``): a grid sampler's ``step``;
        samplers whose run is not a sequence of such steps (EDMHeun, DPMSolver) override it."""
        if not self.ode_step:
            raise ValueError(f"{type(self).__name__} with these settings takes no single deterministic step")
        return self.step(score_fn, process, x, t, s)[0]
    #: DDPM's clamp [−c, c] of x̂₀, the shorthand of ``thresholding=StaticThreshold(c)`` (Ancestral and DDIM take it)
    clip_denoised: float | None = None
    #: x̂₀ thresholding (x̂₀ ↦ x̂₀ inside the data range) applied by :meth:`denoised`, the one place a sampler forms
    #: x̂₀ for its update, and by :meth:`finish`; None: x̂₀ as the model gives it (a sampler that takes a
    #: ``thresholding: Thresholding | None = None`` argument stores it here)
    thresholding: Thresholding | None = None
    #: network-evaluating steps of a run and whether the last is the final Tweedie step (set by ``__init__``; a
    #: sampler that counts steps otherwise, per level or per chain, keeps its own settings beside these)
    num_steps: int | None = None
    denoise: bool = False

    def __init__(self, num_steps: int = 100, spacing: Spacing | None = None, denoise: bool = True) -> None:
        check_number("num_steps", num_steps, ge=1, integer=True)
        if num_steps < 1 + int(denoise):
            raise ValueError(f"num_steps must be >= {1 + int(denoise)} (denoise={denoise}), got {num_steps}")
        self.num_steps, self.spacing, self.denoise = num_steps, check_spacing(spacing), denoise

    def grid(self, process: NoiseProcess, device: torch.device) -> Tensor:
        """Times t_max → t_min for this sampler's steps (decreasing but inside a reversed ``process.window``)."""
        return process.time_grid(self.num_steps - int(self.denoise), self.spacing, device=device)

    def interval(self) -> Sampler:
        """This sampler cut to one interval of its grid, without the final denoise (for ``steps_on_grid`` samplers).

        Called inside ``process.window(t, s)`` it takes the step t → s of a full run; a step transform calls it once
        per interval and projects x in between. Samplers whose step depends on the grid's length override it.
        """
        if not self.steps_on_grid:
            raise ValueError(f"{type(self).__name__} does not step along a fixed grid: it cannot be run one interval at"
                             " a time (use a grid sampler such as Ancestral, DDIM, EulerMaruyama or Heun)")
        return self.with_settings(num_steps=1, denoise=False)

    def __call__(
        self,
        score_fn: ScoreFn,
        x: Tensor,
        process: NoiseProcess | None = None,
        *,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> Tensor:
        """The samples of :meth:`draw` (which see)."""
        return self.draw(score_fn, x, process, generator=generator, callback=callback, progress=progress).samples

    def draw(
        self,
        score_fn: ScoreFn,
        x: Tensor,
        process: NoiseProcess | None = None,
        *,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> Draw:
        """Run the sampling loop from ``x``: the samples, the NFE of this call and what it measured."""
        counted = CountingScore(score_fn)
        out = self.sample(counted, x, process, generator=generator, callback=callback, progress=progress)
        samples, measurements = out if self.measures else (out, {})
        return Draw(samples, counted.calls, measurements)

    @abstractmethod
    def sample(
        self,
        score_fn: ScoreFn,
        x: Tensor,
        process: NoiseProcess | None,
        *,
        generator: torch.Generator | None,
        callback: StepCallback | None,
        progress: bool,
    ) -> Tensor:
        """The sampling loop; ``score_fn`` here counts its own evaluations. Returns x, or ``(x, measurements)`` when
        the sampler declares ``measures`` (only what was measured: a value that does not apply is left out)."""

    def advance(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, generator=None):
        """One interval t → s of :func:`~lit_score.samplers.stepping.sample_on_grid`: (x_s, what the step callback
        reports beside x). A stepper's ``step`` gives (x_s, x_mean); samplers that form more override this."""
        x, x_mean = self.step(score_fn, process, x, t, s, generator)
        return x, {"x_mean": x_mean}

    @property
    def x0_threshold(self) -> Thresholding | None:
        """The thresholding :meth:`denoised` applies: ``thresholding``, else ``StaticThreshold(clip_denoised)`` when
        ``clip_denoised`` is set, else None (what the commands check against the data range)."""
        if self.thresholding is not None or self.clip_denoised is None:
            return self.thresholding
        return StaticThreshold(self.clip_denoised)

    def thresholded(self, x0: Tensor) -> Tensor:
        """x̂₀ through :attr:`x0_threshold` (unchanged without one); :meth:`denoised` applies it."""
        threshold = self.x0_threshold
        return x0 if threshold is None else threshold(x0)

    def denoised(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) at (x, t) for an update: x̂₀ thresholded by :attr:`x0_threshold` when there is one, and then ε̂
        re-derived from it, ε̂ = (x − α_t x̂₀)/σ_t, so that the pair stays consistent with x (as diffusers' DPM-Solver
        does); without thresholding exactly :func:`predict_x0_eps`."""
        x0, eps = predict_x0_eps(score_fn, process, x, t)
        if self.x0_threshold is None:
            return x0, eps
        x0 = self.thresholded(x0)
        alpha, sigma = append_dims(process.alpha(t), x), append_dims(process.sigma(t), x)
        return x0, (x - alpha * x0) / sigma

    def finish(self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t_min: Tensor) -> Tensor:
        """The optional final noise-free step: x̂₀ at t_min (of :meth:`denoised`: thresholded when the sampler is)."""
        if not self.denoise:
            return x
        return self.denoised(score_fn, process, x, full_like_t(x, t_min))[0]

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this sampler: ``type(s)(**s.settings())`` is ``s`` again.

        Read from the attributes named like ``__init__``'s parameters (every lit-score sampler stores them so);
        ``with_settings`` builds a copy with some of them changed.
        """
        import inspect

        names = [n for n, p in inspect.signature(type(self).__init__).parameters.items()
                 if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            raise TypeError(f"{type(self).__name__} does not store {missing}: override settings()")
        return {n: getattr(self, n) for n in names}

    def with_settings(self, **changes: Any) -> Sampler:
        """A new sampler of this class with this one's settings, ``changes`` applied on top."""
        return type(self)(**{**self.settings(), **changes})

    @staticmethod
    def steps(n: int, progress: bool, desc: str) -> Iterable[int]:
        """range(n), with a tqdm bar when ``progress``."""
        return tqdm(range(n), desc=desc, leave=False, dynamic_ncols=True) if progress else range(n)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
