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
MH kernel). A call's ``adapted_step_size`` and ``acceptance_rate`` (mean over chains and sampling iterations) are in
the measurements of its :class:`~lit_score.samplers.base.Draw`, beside its NFE.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lit_score.checks import check_number, check_range
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
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
    #: how the step follows a length scale ℓ: ∝ ℓ² for Langevin kernels (noise variance 2η), ∝ ℓ for HMC's ε
    step_scale_power = 2
    measures = ("adapted_step_size", "acceptance_rate")

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
        return x, {"adapted_step_size": step, "acceptance_rate": float(accepted) / max(self.num_steps, 1)}


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
        return x, {}  # no accept/reject test and no adaptation: nothing measured


def _ess_fraction(log_w: Tensor) -> float:
    """ESS / B of importance weights exp(log w): (Σw)² / (B·Σw²), read on the host."""
    w = (log_w - log_w.max()).exp()
    return float(w.sum() ** 2 / (w.numel() * (w**2).sum()))


def systematic_resample(log_w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(B,) indices of systematic resampling (Kitagawa 1996): one uniform u, points (u + i)/B on the weights' CDF."""
    n = log_w.shape[0]
    cdf = torch.softmax(log_w.double(), dim=0).cumsum(0)
    u = rand((1,), generator, device=log_w.device, dtype=torch.float64)
    points = (u + torch.arange(n, device=log_w.device, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, points).clamp(max=n - 1)


class AnnealedMCMC(Sampler):
    r"""Any kernel above run down a ladder of noise levels or of temperatures: annealed MALA / HMC / ULA.

    ``ladder="noise"`` (a noise-conditional model; needs a process): for each of L levels t₁ … t_L of the process's
    grid (σ decreasing) ``steps_per_level`` transitions target p_{t_i} ∝ exp(−E(x, t_i)/T), with the step
    η_i = c·σ_i² (HMC's leapfrog ε_i = c·σ_i: ``step_scale_power``), c = the kernel's ``step_size`` (Song & Ermon
    2019's η_i ∝ σ_i², written relative to σ_i² rather than to the last level, so c does not depend on σ_min: their
    ε = 2·10⁻⁵ at σ_L = 0.01 is c = 0.2). With MALA or HMC every level's chain is an exact MH chain for p_{t_i}:
    Annealed Langevin with an accept/reject test.

    ``ladder="temperature"`` (any model with an energy, e.g. an EBM): L temperatures T_i geometric from
    ``temperature_max`` down to the kernel's ``temperature``, all at t_min (simulated tempering of the chain from
    noise: the hot levels cross between modes that a chain at T cannot leave).

    ``resample`` (temperature ladder only) makes it a tempered sequential Monte Carlo sampler (Del Moral et al.
    2006): each chain carries the log weight Σ −E(x)·(1/T_{i+1} − 1/T_i) of the moves between levels, and the batch
    is resampled systematically whenever the weights' ESS falls below ``resample_threshold``·B, and once at the end.
    Without it, annealing hands every mode the mass it had at T₁: components of different widths end with wrong
    weights (a hot chain favours the wide ones; measured on the test mixture, 0.42 instead of 0.30). The weights are
    exact given chains distributed as π_{T₁} at the first level (hot levels mix fast; an EBM's uniform start on its
    box is π_∞). A noise ladder cannot be reweighted (a learned E(x, t) carries an unknown constant per t).

    With the kernel's ``adapt_steps`` > 0 (MALA, HMC) each level first adapts its step by dual averaging toward the
    kernel's target acceptance, starting from the previous level's step (times its ladder ratio on a noise ladder), then
    freezes it for ``steps_per_level`` transitions. A call measures ``level_acceptance`` and ``level_step_sizes``, each
    level's mean acceptance and step, and ``acceptance_rate``, their mean. NFE: one evaluation per transition
    (HMC: ``leapfrog_steps``) plus one per level; the ladder's kernel needs the energy where the kernel does.

    Args:
        kernel: the transition (its ``step_size``, ``temperature``, ``adapt_steps``, ``target_accept``, ``bounds``
            and own settings apply; its ``num_steps`` is not used). Default: ``MALA(step_size=0.2, adapt_steps=20)``.
        ladder: ``noise`` or ``temperature``.
        num_levels: L; for ``noise`` a discrete process's own number of levels is the grid's limit.
        steps_per_level: transitions per level after its warm-up.
        temperature_max: T₁ of the temperature ladder.
        spacing: time spacing of the noise ladder (default: the process's own).
        denoise: end a noise ladder with the Tweedie step x + σ_L²·s(x, t_L) (as ``AnnealedLangevin``).
        resample: reweight and resample between temperature levels (needs the energy: MALA or HMC kernels).
        resample_threshold: resample when ESS < threshold·B (1: at every level).
    """

    measures = ("acceptance_rate", "adapted_step_size", "num_resamples", "level_acceptance", "level_step_sizes")

    def __init__(
        self,
        kernel: MCMCSampler | None = None,
        ladder: str = "noise",
        num_levels: int = 10,
        steps_per_level: int = 10,
        temperature_max: float = 10.0,
        spacing: Spacing | None = None,
        denoise: bool = False,
        resample: bool = False,
        resample_threshold: float = 0.5,
    ) -> None:
        super().__init__(steps_per_level, spacing, denoise=False)
        if ladder not in ("noise", "temperature"):
            raise ValueError(f"unknown ladder {ladder!r}: use noise or temperature")
        check_number("num_levels", num_levels, ge=2, integer=True)
        check_number("steps_per_level", steps_per_level, ge=1, integer=True)
        check_number("temperature_max", temperature_max, gt=0.0)
        if denoise and ladder != "noise":
            raise ValueError("denoise ends a noise ladder: set denoise false for ladder temperature")
        self.kernel = kernel if kernel is not None else MALA(step_size=0.2, adapt_steps=20)
        if ladder == "temperature" and temperature_max < self.kernel.temperature:
            raise ValueError(f"temperature_max ({temperature_max}) is below the kernel's temperature"
                             f" ({self.kernel.temperature}): the ladder cools from temperature_max to it")
        self.ladder, self.num_levels, self.steps_per_level = ladder, num_levels, steps_per_level
        self.temperature_max, self.denoise = float(temperature_max), denoise
        check_number("resample_threshold", resample_threshold, gt=0.0, le=1.0)
        if resample and ladder != "temperature":
            raise ValueError("resample reweights between temperature levels: use ladder temperature (a learned E(x, t)"
                             " has an unknown constant per noise level, so a noise ladder cannot be reweighted)")
        if resample and not self.kernel.requires_energy:
            raise ValueError("resample weighs chains by their energy: use a MALA or HMC kernel")
        self.resample, self.resample_threshold = resample, float(resample_threshold)

    @property
    def requires_process(self) -> bool:
        return self.ladder == "noise"

    @property
    def traverses_noise_levels(self) -> bool:
        return self.ladder == "noise"

    @property
    def requires_energy(self) -> bool:
        return self.kernel.requires_energy

    def levels(self, process: NoiseProcess | None, device) -> tuple[Tensor | None, Tensor, Tensor]:
        """(times (L,) or None, temperatures (L,), initial steps (L,)) of the ladder, float64."""
        k = self.kernel
        if self.ladder == "temperature":
            ratio = torch.linspace(0.0, 1.0, self.num_levels, dtype=torch.float64, device=device)
            temps = self.temperature_max * (k.temperature / self.temperature_max) ** ratio
            times = None if process is None else torch.full_like(temps, process.t_min)
            return times, temps, torch.full_like(temps, k.step_size)
        process = require_process(process, self)
        times = process.time_grid(self.num_levels - 1, self.spacing, device=device)
        sigma2 = process.sigma(times).double() ** 2
        return times, torch.full_like(times, k.temperature), k.step_size * sigma2 ** (k.step_scale_power / 2)

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        k = self.kernel
        times, temps, steps = self.levels(process, x.device)
        mh = k.requires_energy
        if k.bounds is not None:
            x = x.clamp(*k.bounds)
        acceptance, step_sizes, step, total = [], [], None, 0
        log_w, resamples = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64), 0
        for level in self.steps(len(temps), progress, f"annealed {type(k).__name__.lower()}"):
            t = full_like_t(x, times[level]) if times is not None else None
            temperature = float(temps[level])

            def fn(y: Tensor, t=t) -> tuple[Tensor, Tensor]:
                if mh:
                    return energy_and_score(score_fn, y, t)
                return torch.zeros(y.shape[0], device=y.device, dtype=y.dtype), score_fn(y, t)

            energy, score = fn(x)
            if self.resample and level > 0:  # the move from π_{T_{i−1}} to π_{T_i}, then resample on low ESS
                log_w = log_w - energy.double() * (1 / temperature - 1 / float(temps[level - 1]))
                if _ess_fraction(log_w) < self.resample_threshold:
                    index = systematic_resample(log_w, generator)
                    x, energy, score = x[index], energy[index], score[index]
                    log_w, resamples = torch.zeros_like(log_w), resamples + 1
            if step is None:
                step = float(steps[0])
            elif self.ladder == "noise":  # the ladder's (σ_i/σ_{i−1})^power on the step the previous level used
                step = step * float(steps[level] / steps[level - 1])
            start = step
            if mh and k.adapt_steps:
                adapt = DualAveraging(start, k.target_accept or k.default_target_accept)
                for _ in range(k.adapt_steps):
                    x, energy, score, _, alpha = k.transition(fn, x, energy, score, step, temperature, generator)
                    step = adapt.update(float(alpha.mean()))
                step = adapt.final
            accepted = torch.zeros((), device=x.device)
            for _ in range(self.steps_per_level):
                x, energy, score, accept, alpha = k.transition(fn, x, energy, score, step, temperature, generator)
                accepted = accepted + alpha.mean()
                if callback is not None:
                    callback({"step": total, "level": level, "t": t, "x": x, "energy": energy, "accepted": accept,
                              "acceptance": alpha.mean(), "step_size": step, "temperature": temperature,
                              "grad_norm": per_sample_norm(score)})
                total += 1
            acceptance.append(accepted / self.steps_per_level)
            step_sizes.append(step)
        if self.resample and bool((log_w != 0).any()):
            x, resamples = x[systematic_resample(log_w, generator)], resamples + 1
        if self.denoise:
            x = self.finish(score_fn, process, x, times[-1])
            x = x.clamp(*k.bounds) if k.bounds is not None else x
        return x, self._measurements(acceptance if mh else None, step_sizes, resamples)

    def _measurements(self, acceptance: list[Tensor] | None, step_sizes: list[float], resamples: int) -> dict:
        """What a call measured (:attr:`measures`): the levels' acceptance (an MH kernel's only) and steps, and the
        number of resamplings (with ``resample`` only)."""
        out = {}
        if acceptance is not None:
            level_acceptance = [float(a) for a in torch.stack(acceptance).cpu()]  # one host read per call
            out["acceptance_rate"] = sum(level_acceptance) / len(level_acceptance)
        out["adapted_step_size"] = step_sizes[-1]
        if self.resample:
            out["num_resamples"] = resamples
        if acceptance is not None:
            out["level_acceptance"] = level_acceptance
        out["level_step_sizes"] = step_sizes
        return out
