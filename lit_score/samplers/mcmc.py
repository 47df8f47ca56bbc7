r"""MCMC kernels with a temperature: ULA, MALA and HMC, step sizes adapted toward a target acceptance.

Every kernel samples π_T(x) ∝ exp(−E(x)/T) from a score function s(x) = −∇ₓE(x) (what an EBM's, or a
noise-conditional model's, ``score_fn`` returns); MALA and HMC also need E itself for the Metropolis–Hastings test,
so they run only on models that declare ``has_energy``. With a noise process they run at t_min, as ``Langevin`` does.

| symbol | meaning |
|---|---|
| E(x), s(x) = −∇ₓE(x) | energy and score; ``score_fn.energy_and_score(x, t)`` gives both from one backward pass |
| T (``temperature``) | π_T ∝ exp(−E/T); T = 1 is the model's density |
| η (``step_size``) | Langevin step: drift η·s(x), noise variance 2ηT |
| μ(x) = x + η·s(x) | mean of the Langevin proposal q(x′ \| x) = N(μ(x), 2ηT·I) |
| log α = (E(x) − E(x′))/T + log q(x \| x′) − log q(x′ \| x) | MALA's log acceptance (Roberts & Tweedie 1996) |
| ε, L (``step_size``, ``leapfrog_steps``) | HMC leapfrog step and length; p ~ N(0, I), H = E(x)/T + ½‖p‖² (Neal 2011) |
| δ (``target_accept``) | warm-up target: 0.574 MALA (Roberts & Rosenthal 1998), 0.65 HMC (Beskos et al. 2013) |
| γ, t₀, κ | dual averaging (Hoffman & Gelman 2014, Algorithm 5): 0.05, 10, 0.75, μ = log(10·η₀) |
| r (``snr``) | ULA's ‖η·s‖ / ‖√(2ηT)·z‖: η = 2T(r‖z‖/‖s‖)² per chain (score_sde's corrector rule) |

Decoupled "step η, noise s_z" settings, as EBM papers write them, are ULA at T = s_z²/(2η): Du & Mordatch's step 10 with
noise 0.005 samples π_T at T = 1.25·10⁻⁶, a nearly frozen density; :attr:`Langevin.temperature` reports it.

ULA has no accept/reject: its stationary law differs from π_T by O(η). For E = ½xᵀAx the chain is the AR(1) recursion
x ← (I − ηA)x + √(2ηT)·z, whose stationary covariance is T·A⁻¹(I − ηA/2)⁻¹ (T·Σ only as η → 0). MALA and HMC are
exact for any step; the step only sets how fast they mix.

``bounds`` (lo, hi) make the target π_T restricted to the box: MALA and HMC reject every proposal that leaves it (the
Metropolis–Hastings rule for a truncated density), ULA clamps (the EBM practice; it changes the chain's law).

Warm-up: ``adapt_steps`` iterations adapt one step size shared by all chains by dual averaging on the mean acceptance
over chains; then it is frozen for the ``num_steps`` sampling iterations (so the sampling kernel is a fixed, valid
MH kernel). ``adapted_step_size`` and ``acceptance_rate`` (mean over chains and sampling iterations) hold the last
call's values, like ``nfe``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lit_score.checks import check_number, check_range
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t
from lit_score.utils import append_dims, batch_sum, per_sample_norm, rand, randn_like

EnergyAndScore = Callable[[Tensor], tuple[Tensor, Tensor]]


def energy_and_score(score_fn: ScoreFn, x: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
    """(E(x, t), s(x, t)): from ``score_fn.energy_and_score`` when offered (one backward pass), else two calls."""
    both = getattr(score_fn, "energy_and_score", None)
    if both is not None:
        return both(x, t)
    return score_fn.energy(x, t), score_fn(x, t)


def _inside(x: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """(B,) bool: every coordinate of the sample inside [lo, hi]."""
    if bounds is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    flat = x.reshape(x.shape[0], -1)
    return ((flat >= bounds[0]) & (flat <= bounds[1])).all(dim=1)


def metropolis_accept(log_alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B,) bool: u < α per chain, u ~ U[0, 1) (NaN log α, e.g. from an infinite energy, rejects)."""
    u = rand(log_alpha.shape, generator, device=log_alpha.device, dtype=log_alpha.dtype)
    return torch.nan_to_num(log_alpha, nan=-math.inf) > u.log()


def _where(accept: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(append_dims(accept, new), new, old)


def mala_step(
    fn: EnergyAndScore,
    x: Tensor,
    energy: Tensor,
    score: Tensor,
    step_size: float,
    temperature: float,
    bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One MALA transition on π_T: (x, E, s, accepted (B,) bool, α (B,)); ``fn(x) -> (E, s)`` is one evaluation."""
    variance = 2 * step_size * temperature
    proposal = x + step_size * score + math.sqrt(variance) * randn_like(x, generator)
    energy_new, score_new = fn(proposal)
    forward = batch_sum((proposal - x - step_size * score) ** 2)
    backward = batch_sum((x - proposal - step_size * score_new) ** 2)
    log_alpha = (energy - energy_new) / temperature - (backward - forward) / (2 * variance)
    log_alpha = torch.where(_inside(proposal, bounds), log_alpha, torch.full_like(log_alpha, -math.inf))
    accept = metropolis_accept(log_alpha, generator)
    alpha = log_alpha.clamp(max=0).exp().nan_to_num(0.0)
    return (_where(accept, proposal, x), torch.where(accept, energy_new, energy), _where(accept, score_new, score),
            accept, alpha)


def hmc_step(
    fn: EnergyAndScore,
    x: Tensor,
    energy: Tensor,
    score: Tensor,
    step_size: float,
    leapfrog_steps: int,
    temperature: float,
    bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One HMC transition (L leapfrog steps of size ε, identity mass) on π_T: (x, E, s, accepted, α)."""
    p0 = randn_like(x, generator)
    q, e, s = x, energy, score
    inside = _inside(x, bounds)
    p = p0 + 0.5 * step_size * s / temperature  # −∇U = s/T
    for i in range(leapfrog_steps):
        q = q + step_size * p
        e, s = fn(q)
        inside = inside & _inside(q, bounds)
        p = p + (step_size if i < leapfrog_steps - 1 else 0.5 * step_size) * s / temperature
    h_old = energy / temperature + 0.5 * batch_sum(p0**2)
    h_new = e / temperature + 0.5 * batch_sum(p**2)
    log_alpha = torch.where(inside, h_old - h_new, torch.full_like(h_old, -math.inf))
    accept = metropolis_accept(log_alpha, generator)
    alpha = log_alpha.clamp(max=0).exp().nan_to_num(0.0)
    return _where(accept, q, x), torch.where(accept, e, energy), _where(accept, s, score), accept, alpha


class DualAveraging:
    """Step-size adaptation toward a target acceptance δ (Hoffman & Gelman 2014, Algorithm 5, their constants).

    ``update(alpha)`` takes the mean acceptance of an iteration and returns the next step; ``final`` is the averaged
    step to freeze after the warm-up.
    """

    def __init__(self, step_size: float, target: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.mu, self.target, self.gamma, self.t0, self.kappa = math.log(10 * step_size), target, gamma, t0, kappa
        self.m, self.h_bar, self.log_step_bar, self.step = 0, 0.0, 0.0, step_size

    def update(self, alpha: float) -> float:
        self.m += 1
        m = self.m
        self.h_bar = (1 - 1 / (m + self.t0)) * self.h_bar + (self.target - alpha) / (m + self.t0)
        log_step = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        weight = m ** (-self.kappa)
        self.log_step_bar = weight * log_step + (1 - weight) * self.log_step_bar
        self.step = math.exp(log_step)
        return self.step

    @property
    def final(self) -> float:
        return math.exp(self.log_step_bar) if self.m else self.step


class MCMCSampler(Sampler):
    """Base of the temperature-aware kernels: a warm-up that adapts the step, then ``num_steps`` fixed iterations.

    Args:
        num_steps: sampling iterations after the warm-up.
        step_size: η (ULA, MALA) or ε (HMC); the warm-up's starting value when ``adapt_steps`` > 0.
        temperature: T of the target π_T ∝ exp(−E/T).
        adapt_steps: warm-up iterations adapting the step by dual averaging (0: the step as given).
        target_accept: δ of the warm-up (default: the kernel's optimum).
        bounds: (lo, hi) support of the target (proposals outside are rejected); None: all of ℝᴰ.
    """

    requires_process = False
    traverses_noise_levels = False
    default_target_accept = 0.574
    run_state = ("nfe", "adapted_step_size", "acceptance_rate")

    def __init__(
        self,
        num_steps: int = 100,
        step_size: float = 0.01,
        temperature: float = 1.0,
        adapt_steps: int = 0,
        target_accept: float | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(num_steps, None, denoise=False)
        check_number("step_size", step_size, gt=0.0)
        check_number("temperature", temperature, gt=0.0)
        check_number("adapt_steps", adapt_steps, ge=0, integer=True)
        check_number("target_accept", target_accept, gt=0.0, lt=1.0, allow_none=True)
        self.bounds = check_range("bounds", bounds, allow_none=True)
        self.step_size, self.temperature, self.adapt_steps = float(step_size), float(temperature), adapt_steps
        self.target_accept = target_accept
        self.adapted_step_size: float | None = None
        self.acceptance_rate: float | None = None

    def transition(self, fn: EnergyAndScore, x, energy, score, step_size: float, generator):
        """One iteration of the kernel: (x, E, s, accepted, α)."""
        raise NotImplementedError

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        t = full_like_t(x, process.t_min) if process is not None else None

        def fn(y: Tensor) -> tuple[Tensor, Tensor]:
            return energy_and_score(score_fn, y, t)

        energy, score = fn(x)
        adapt = DualAveraging(self.step_size, self.target_accept or self.default_target_accept)
        step, accepted = self.step_size, torch.zeros((), device=x.device)
        for i in self.steps(self.adapt_steps + self.num_steps, progress, type(self).__name__.lower()):
            warm = i < self.adapt_steps
            x, energy, score, accept, alpha = self.transition(fn, x, energy, score, step, generator)
            if warm:  # the adaptation needs the mean acceptance on the host: one sync per warm-up iteration only
                step = adapt.update(float(alpha.mean()))
                if i == self.adapt_steps - 1:
                    step = adapt.final
            else:
                accepted = accepted + alpha.mean()  # stays on the device while sampling
            if callback is not None:
                callback({"step": i, "t": t, "x": x, "energy": energy, "accepted": accept, "acceptance": alpha.mean(),
                          "step_size": step, "warmup": warm, "grad_norm": per_sample_norm(score)})
        self.adapted_step_size, self.acceptance_rate = step, float(accepted) / max(self.num_steps, 1)
        return x


class MALA(MCMCSampler):
    """Metropolis-adjusted Langevin (Roberts & Tweedie 1996) on π_T, accept/reject per chain; needs the energy.

    NFE: one energy-and-score evaluation per iteration, plus one at the start.
    """

    requires_energy = True

    def transition(self, fn, x, energy, score, step_size, generator):
        return mala_step(fn, x, energy, score, step_size, self.temperature, self.bounds, generator)


class HMC(MCMCSampler):
    """Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) with identity mass and ``leapfrog_steps`` steps ε.

    NFE: ``leapfrog_steps`` evaluations per iteration, plus one at the start.
    """

    requires_energy = True
    default_target_accept = 0.65

    def __init__(
        self,
        num_steps: int = 100,
        step_size: float = 0.05,
        leapfrog_steps: int = 10,
        temperature: float = 1.0,
        adapt_steps: int = 0,
        target_accept: float | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(num_steps, step_size, temperature, adapt_steps, target_accept, bounds)
        self.leapfrog_steps = check_number("leapfrog_steps", leapfrog_steps, ge=1, integer=True)

    def transition(self, fn, x, energy, score, step_size, generator):
        return hmc_step(fn, x, energy, score, step_size, self.leapfrog_steps, self.temperature, self.bounds, generator)


class ULA(MCMCSampler):
    """The unadjusted Langevin algorithm on π_T: x ← x + η·s(x) + √(2ηT)·z, no accept/reject (biased by O(η)).

    With ``snr`` the step is set per chain and iteration so that ‖η·s‖ / ‖√(2ηT)·z‖ = r (then ``step_size`` is not
    used and there is no warm-up). ``grad_clip`` clamps the score elementwise first (EBM practice); ``bounds`` clamp.
    The score is all ULA needs, so it runs on any model (an EBM, or a score model at t_min).
    """

    requires_energy = False

    def __init__(
        self,
        num_steps: int = 100,
        step_size: float = 0.01,
        temperature: float = 1.0,
        snr: float | None = None,
        grad_clip: float | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(num_steps, step_size, temperature, 0, None, bounds)
        self.snr = check_number("snr", snr, gt=0.0, allow_none=True)
        self.grad_clip = check_number("grad_clip", grad_clip, gt=0.0, allow_none=True)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        t = full_like_t(x, process.t_min) if process is not None else None
        if self.bounds is not None:
            x = x.clamp(*self.bounds)
        for i in self.steps(self.num_steps, progress, "ula"):
            score = score_fn(x, t)
            if self.grad_clip is not None:
                score = score.clamp(-self.grad_clip, self.grad_clip)
            z = randn_like(x, generator)
            if self.snr is None:
                step = torch.full((x.shape[0],), self.step_size, device=x.device, dtype=x.dtype)
            else:
                ratio = per_sample_norm(z) / per_sample_norm(score)
                step = 2 * self.temperature * (self.snr * ratio) ** 2
            x = x + append_dims(step, x) * score + append_dims((2 * step * self.temperature).sqrt(), x) * z
            if self.bounds is not None:
                x = x.clamp(*self.bounds)
            if callback is not None:
                callback({"step": i, "t": t, "x": x, "step_size": step,
                          "grad_norm": per_sample_norm(score)})
        self.adapted_step_size, self.acceptance_rate = None, None
        return x
