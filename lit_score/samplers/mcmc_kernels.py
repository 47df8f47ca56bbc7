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

import torch
from torch import Tensor

from lit_score.checks import check_number, check_range
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t
from lit_score.samplers.mcmc_steps import EnergyAndScore, energy_and_score, hmc_step, mala_step
from lit_score.samplers.step_adaptation import DualAveraging
from lit_score.utils import append_dims, per_sample_norm, randn_like


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
    #: how the step follows a length scale ℓ: ∝ ℓ² for Langevin kernels (noise variance 2η), ∝ ℓ for HMC's ε
    step_scale_power = 2
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

    def transition(self, fn: EnergyAndScore, x, energy, score, step_size, temperature: float, generator):
        """One iteration of the kernel on π_T at ``temperature``: (x, E, s, accepted, α)."""
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
            x, energy, score, accept, alpha = self.transition(fn, x, energy, score, step, self.temperature, generator)
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

    def transition(self, fn, x, energy, score, step_size, temperature, generator):
        return mala_step(fn, x, energy, score, step_size, temperature, self.bounds, generator)


class HMC(MCMCSampler):
    """Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) with identity mass and ``leapfrog_steps`` steps ε.

    NFE: ``leapfrog_steps`` evaluations per iteration, plus one at the start.
    """

    requires_energy = True
    default_target_accept = 0.65
    step_scale_power = 1

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

    def transition(self, fn, x, energy, score, step_size, temperature, generator):
        return hmc_step(fn, x, energy, score, step_size, self.leapfrog_steps, temperature, self.bounds, generator)


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

    def update(self, x: Tensor, score: Tensor, step_size: float, temperature: float, generator):
        """One ULA move from score s(x): (x′, η per chain (B,)); ``snr`` sets η per chain, ``bounds`` clamp x′."""
        if self.grad_clip is not None:
            score = score.clamp(-self.grad_clip, self.grad_clip)
        z = randn_like(x, generator)
        if self.snr is None:
            step = torch.full((x.shape[0],), step_size, device=x.device, dtype=x.dtype)
        else:
            step = 2 * temperature * (self.snr * per_sample_norm(z) / per_sample_norm(score)) ** 2
        x = x + append_dims(step, x) * score + append_dims((2 * step * temperature).sqrt(), x) * z
        return (x.clamp(*self.bounds) if self.bounds is not None else x), step

    def transition(self, fn, x, energy, score, step_size, temperature, generator):
        """The kernel interface of :class:`AnnealedMCMC`: every move is kept (accepted, α = 1)."""
        x, _ = self.update(x, score, step_size, temperature, generator)
        energy, score = fn(x)
        ones = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        return x, energy, score, ones.bool(), ones

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        t = full_like_t(x, process.t_min) if process is not None else None
        if self.bounds is not None:
            x = x.clamp(*self.bounds)
        for i in self.steps(self.num_steps, progress, "ula"):
            score = score_fn(x, t)
            x, step = self.update(x, score, self.step_size, self.temperature, generator)
            if callback is not None:
                callback({"step": i, "t": t, "x": x, "step_size": step, "grad_norm": per_sample_norm(score)})
        self.adapted_step_size, self.acceptance_rate = None, None
        return x

