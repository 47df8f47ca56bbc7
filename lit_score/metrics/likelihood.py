r"""Likelihoods: the probability-flow ODE (exact change of variables) and DDPM's discrete variational bound.

PF-ODE (Song et al. 2021, Appendix D.2; Chen et al. 2018; Grathwohl et al. 2019, FFJORD): integrate
dx/dt = v(x, t) and d/dt ∫div = ∇·v(x, t) jointly from t_min to t_max, then

    log p_{t_min}(x) = log p_T(x_T) + ∫_{t_min}^{t_max} ∇·v(x_t, t) dt,

with log p_T the process prior. ∇·v is exact (one backward pass per dimension) or the Hutchinson–Skilling
estimate E_ε[εᵀ(∂v/∂x)ε] with probes drawn once per call (so the integral estimate is unbiased).

Bits per dimension (D values per sample):

| ``dequantize`` | data | NLL in nats | bits/dim |
|---|---|---|---|
| ``none`` | continuous x | −log p(x) | −log p(x) / (D ln 2) |
| ``uniform8bit`` | x = 2u/255 − 1, u ∈ {0..255} | −log p(x̃) + D ln 128 | −log p(x̃)/(D ln 2) + 7 |

For 8-bit data the model density is evaluated at x̃ = 2(u + w)/256 − 1, w ~ U[0, 1)^D, the image of the
dequantised ũ = u + w ∈ [0, 256) under the affine map onto [−1, 1) with Jacobian 2/256 = 1/128 per
dimension; so p_ũ(ũ) = p(x̃)/128^D and, by Jensen, −log P(u) ≤ E_w[−log p(x̃)] + D ln 128 (Theis et al.
2016; the same offset of 7 bits that score_sde adds for data centred on [−1, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_score.losses.vlb import normal_kl, vlb_step_bpd, wide
from lit_score.processes import DiscreteVP, NoiseProcess
from lit_score.samplers.base import ScoreFn, full_like_t, predict_x0_eps, probability_flow_velocity
from lit_score.samplers.ode import solve_ode, solve_ode_fixed
from lit_score.utils import batch_sum, randn_like


@dataclass
class LikelihoodResult:
    """Per-sample NLL ``nats`` (B,) and ``bits_per_dim`` (B,), ``log_prob`` (B,) = log p at the evaluated point
    (the dequantised x̃ for 8-bit data), the solver's ``nfe``, and the protocol that produced them."""

    nats: Tensor
    bits_per_dim: Tensor
    log_prob: Tensor
    nfe: int
    divergence: str
    probe: str | None
    num_probes: int
    dequantize: str
    solver: str
    rtol: float | None
    atol: float | None
    fixed_steps: int | None

    @property
    def protocol(self) -> dict[str, object]:
        """How the numbers were obtained (log it beside them)."""
        names = ("divergence", "probe", "num_probes", "dequantize", "solver", "rtol", "atol", "fixed_steps", "nfe")
        return {n: getattr(self, n) for n in names}

    def estimate(self) -> LikelihoodEstimate:
        """The common record of every likelihood estimator."""
        settings = {k: v for k, v in self.protocol.items() if k not in ("dequantize", "nfe")}
        return LikelihoodEstimate("pf_ode", self.nats, self.bits_per_dim, self.dequantize, self.nfe, settings)


@dataclass
class LikelihoodEstimate:
    """One JSON shape for every family's likelihood: per-sample ``nats`` and ``bits_per_dim`` (B,), labelled with the
    ``estimator`` (``pf_ode``: exact change of variables along the probability-flow ODE; ``vlb``: DDPM's variational
    bound, an upper bound on the NLL; ``quadrature``: an EBM's density normalised by a grid sum), the dequantisation,
    the number of network evaluations and the estimator's own settings."""

    estimator: str
    nats: Tensor
    bits_per_dim: Tensor
    dequantize: str
    nfe: int
    settings: dict[str, object]

    @staticmethod
    def concatenate(parts: list[LikelihoodEstimate]) -> LikelihoodEstimate:
        """One estimate from estimates of consecutive chunks of data (the largest NFE of any chunk)."""
        first = parts[0]
        return LikelihoodEstimate(first.estimator, torch.cat([p.nats for p in parts]),
                                  torch.cat([p.bits_per_dim for p in parts]), first.dequantize,
                                  max(p.nfe for p in parts), first.settings)

    def to_dict(self) -> dict[str, object]:
        """Means with standard errors, and how they were obtained."""
        n = int(self.nats.numel())
        bpd, nats = self.bits_per_dim.double(), self.nats.double()
        sem = (lambda v: float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else None)
        return {
            "estimator": self.estimator,
            "num_samples": n,
            "bits_per_dim": float(bpd.mean()),
            "bits_per_dim_sem": sem(bpd),
            "nats": float(nats.mean()),
            "nats_sem": sem(nats),
            "dequantize": self.dequantize,
            "nfe": self.nfe,
            **self.settings,
        }


def exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """∇·v = Σ_d ∂v_d/∂x_d by one backward pass per dimension, shape (B,)."""
    flat = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    for d in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)
        div = div + grad.reshape(flat.shape)[:, d]
    return div


def hutchinson_divergence(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson–Skilling estimate mean_k ε_kᵀ(∂v/∂x)ε_k for probes (K, *x.shape), shape (B,)."""
    total = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    for k, eps in enumerate(probes):
        (grad,) = torch.autograd.grad(batch_sum(v * eps).sum(), x, retain_graph=k < len(probes) - 1)
        total = total + batch_sum(grad * eps)
    return total / len(probes)


def draw_probes(x: Tensor, kind: str, num: int, generator: torch.Generator | None) -> Tensor:
    """``num`` probes shaped like x with E[εεᵀ] = I (gaussian or rademacher), drawn once, on x's device."""
    device = generator.device if generator is not None else x.device
    eps = torch.randn((num, *x.shape), generator=generator, device=device, dtype=x.dtype).to(x.device)
    if kind == "rademacher":
        return 2 * (eps >= 0).to(x.dtype) - 1
    if kind != "gaussian":
        raise ValueError(f"unknown probe {kind!r}: use gaussian or rademacher")
    return eps


def dequantize_8bit(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x = 2u/255 − 1 on the 8-bit grid ↦ x̃ = 2(u + w)/256 − 1, w ~ U[0, 1) (see the module notes)."""
    u = torch.round((x + 1) * 127.5).clamp(0, 255)
    device = generator.device if generator is not None else x.device
    w = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return (u + w) / 128 - 1


def log_likelihood(
    score_fn: ScoreFn,
    process: NoiseProcess,
    x: Tensor,
    *,
    divergence: Literal["exact", "hutchinson"] = "hutchinson",
    probe: Literal["gaussian", "rademacher"] = "rademacher",
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    fixed_steps: int | None = None,
    fixed_method: Literal["euler", "heun", "rk4"] = "rk4",
    dequantize: Literal["none", "uniform8bit"] = "none",
    generator: torch.Generator | None = None,
) -> LikelihoodResult:
    """NLL by the probability-flow ODE (Song et al. 2021, App. D.2): adaptive (rtol, atol) or ``fixed_steps`` of
    ``fixed_method`` on the process's time grid (the same work on every DDP rank); any data shape; inference-safe."""
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"unknown divergence {divergence!r}: use exact or hutchinson")
    if dequantize not in ("none", "uniform8bit"):
        raise ValueError(f"unknown dequantize {dequantize!r}: use none or uniform8bit")
    if num_probes < 1 or (fixed_steps is not None and fixed_steps < 1):
        raise ValueError(f"need num_probes >= 1 and fixed_steps >= 1 (or None), got {num_probes}, {fixed_steps}")
    batch, dim = x.shape[0], x[0].numel()
    with torch.inference_mode(False), torch.no_grad():
        x = x.detach().clone()
        if dequantize == "uniform8bit":
            x = dequantize_8bit(x, generator)
        probes = draw_probes(x, probe, num_probes, generator) if divergence == "hutchinson" else None

        nfe = 0

        def dynamics(t: Tensor, y: Tensor) -> Tensor:
            """d/dt [x, ∫div] = [v(x, t), ∇·v(x, t)] on the flat state (B, D + 1)."""
            nonlocal nfe
            nfe += 1
            with torch.enable_grad():
                x_t = y[:, :dim].reshape(x.shape).detach().requires_grad_(True)
                v = probability_flow_velocity(score_fn, process, x_t, full_like_t(x_t, t))
                div = exact_divergence(v, x_t) if probes is None else hutchinson_divergence(v, x_t, probes)
            return torch.cat([v.detach().reshape(batch, dim), div.detach()[:, None]], dim=1)

        y0 = torch.cat([x.reshape(batch, dim), torch.zeros(batch, 1, device=x.device, dtype=x.dtype)], dim=1)
        if fixed_steps is None:
            y1, _ = solve_ode(dynamics, y0, process.t_min, process.t_max, rtol=rtol, atol=atol)
        else:
            ts = process.time_grid(fixed_steps, device=x.device).flip(0)  # the process's spacing, t_min → t_max
            y1 = solve_ode_fixed(dynamics, y0, ts, fixed_method)
        log_prob = process.prior_log_prob(y1[:, :dim].reshape(x.shape)) + y1[:, dim]
    offset = dim * math.log(128) if dequantize == "uniform8bit" else 0.0
    nats = -log_prob + offset
    return LikelihoodResult(
        nats=nats,
        bits_per_dim=nats / (dim * math.log(2)),
        log_prob=log_prob,
        nfe=nfe,
        divergence=divergence,
        probe=probe if divergence == "hutchinson" else None,
        num_probes=num_probes if divergence == "hutchinson" else 0,
        dequantize=dequantize,
        solver="dopri5" if fixed_steps is None else fixed_method,
        rtol=rtol if fixed_steps is None else None,
        atol=atol if fixed_steps is None else None,
        fixed_steps=fixed_steps,
    )


# --- DDPM's discrete variational bound ---------------------------------------------------------------


@dataclass
class VLBResult:
    """DDPM's bound in bits/dim: total (B,), the prior term L_N (B,), and ``terms`` (B, N) whose column n − 1
    is L_{n−1} (column 0 the decoder −log p(x₀ | x₁), the others KL(q(x_{n−1} | x_n, x₀) ‖ p(x_{n−1} | x_n)))."""

    bits_per_dim: Tensor
    prior_bpd: Tensor
    terms: Tensor

    def estimate(self, num_dims: int, variance: str = "beta_tilde") -> LikelihoodEstimate:
        """The common record for data of ``num_dims`` values per sample (one network evaluation per step; the
        decoder is the discretised Gaussian, so the bound is on the 8-bit data itself)."""
        settings = {"bound": "upper (NLL <= VLB)", "variance": variance, "decoder": "discretised Gaussian"}
        nats = self.bits_per_dim * num_dims * math.log(2)
        return LikelihoodEstimate("vlb", nats, self.bits_per_dim, "discrete8bit", self.terms.shape[1], settings)


def ddpm_vlb(
    score_model: ScoreFn,
    process: DiscreteVP,
    x0: Tensor,
    *,
    variance: Literal["beta_tilde", "beta", "learned"] = "beta_tilde",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
) -> VLBResult:
    """DDPM's variational bound L_N + Σ_{n≥2} L_{n−1} + L_0 in bits/dim (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021).

    ``process`` is a DiscreteVP (step n at t = n/N). Each KL term uses one draw of x_n ~ q(x_n | x₀) (drawn
    from ``generator`` for n = N, …, 1) and the model posterior mean μ̃(x_n, x̂₀) with the fixed variance
    β̃_n (``beta_tilde``) or β_n (``beta``), or the model's own (``learned``: a model with a learned variance,
    whose network evaluation gives mean and variance together); the decoder is the discretised Gaussian at x̂₀ with
    variance β̃₂ (improved-diffusion's clipped β̃₁) or the learned one (:func:`vlb_step_bpd`). The prior term is
    KL(q(x_N | x₀) ‖ N(0, σ_N² I)), the process prior that the samplers start from (DDPM's N(0, I) differs by < 1e-5
    bits/dim on its linear schedule).
    """
    if variance not in ("beta_tilde", "beta", "learned"):
        raise ValueError(f"unknown variance {variance!r}: use beta_tilde, beta or learned")
    if variance == "learned" and not getattr(score_model, "learned_variance", False):
        raise ValueError("ddpm_vlb(variance='learned') needs a model with a learned variance: use beta_tilde or beta")
    num_steps = process.num_timesteps
    if num_steps is None or num_steps < 2:
        raise ValueError(f"ddpm_vlb needs a discrete VP process (DiscreteVP, N >= 2), got {process!r}")
    batch, scale = x0.shape[0], x0[0].numel() * math.log(2)

    def step(n: int) -> Tensor:
        return torch.full((batch,), n / num_steps, device=x0.device, dtype=x0.dtype)

    terms = torch.zeros(batch, num_steps, device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        for n in range(num_steps, 0, -1):
            t = step(n)
            x_t = process.perturb(x0, t, randn_like(x0, generator))
            frac = None
            if variance == "learned":
                x0_hat, _, frac = score_model.predict_with_variance(x_t, t)
            else:
                x0_hat = predict_x0_eps(score_model, process, x_t, t)[0]
            x0_hat = x0_hat.clamp(-1, 1) if clip_denoised else x0_hat
            index = torch.full((batch,), n, device=x0.device)
            terms[:, n - 1] = vlb_step_bpd(process, x0, x_t, x0_hat, index, num_steps, variance=variance, frac=frac)
        t_max = step(num_steps)
        prior_var = torch.full_like(x0, process.prior_std**2)
        mean_n = wide(process.alpha(t_max), x0) * x0
        prior = batch_sum(normal_kl(mean_n, wide(process.sigma(t_max) ** 2, x0), torch.zeros_like(x0), prior_var))
    prior_bpd = prior / scale
    return VLBResult(bits_per_dim=prior_bpd + terms.sum(dim=1), prior_bpd=prior_bpd, terms=terms)


# --- EBMs in low dimension: the normalised density by quadrature ---------------------------------------------------


def quadrature_log_partition(
    energy_fn, bounds: tuple[float, float], dim: int, resolution: int = 512, chunk: int = 65536, device=None
) -> tuple[float, int]:
    """log Z = log ∫_{[lo, hi]^D} exp(−E(x)) dx by the midpoint rule on ``resolution``^D cells (D = 1 or 2), with
    the sum done as a logsumexp in float64; returns (log Z, number of energy evaluations)."""
    if dim not in (1, 2):
        raise ValueError(f"quadrature normalisation works in 1 or 2 dimensions, not {dim}: use AIS for more")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"quadrature needs a finite box (lo, hi), got {bounds}: set the EBM's data_range")
    h = (hi - lo) / resolution
    axis = lo + h * (torch.arange(resolution, dtype=torch.float64, device=device) + 0.5)
    grid = torch.cartesian_prod(axis, axis) if dim == 2 else axis[:, None]
    log_terms = []
    with torch.no_grad():
        for start in range(0, grid.shape[0], chunk):
            points = grid[start : start + chunk].float()
            log_terms.append(-energy_fn(points).double())
    log_z = torch.logsumexp(torch.cat(log_terms), dim=0) + dim * math.log(h)
    return float(log_z), grid.shape[0]


def energy_nll(
    energy_fn, x: Tensor, bounds: tuple[float, float], resolution: int = 512, device=None
) -> LikelihoodEstimate:
    """Exact NLL of an EBM p(x) = exp(−E(x)) / Z on the box [lo, hi]^D (D ≤ 2), Z by :func:`quadrature_log_partition`.

    The model's sampler clamps chains to the box, so its density is taken as zero outside: a point outside gets an
    infinite NLL (and is counted in ``outside``). The midpoint rule's error is O(h²) for a smooth energy.
    """
    flat = x.reshape(x.shape[0], -1)
    dim = flat.shape[1]
    log_z, evaluations = quadrature_log_partition(energy_fn, bounds, dim, resolution, device=device or x.device)
    with torch.no_grad():
        nats = energy_fn(x).double() + log_z
    outside = ((flat < bounds[0]) | (flat > bounds[1])).any(dim=1)
    nats = torch.where(outside, torch.full_like(nats, math.inf), nats)
    settings = {"log_partition": log_z, "bounds": [float(bounds[0]), float(bounds[1])], "resolution": resolution,
                "rule": "midpoint", "outside": int(outside.sum())}
    return LikelihoodEstimate("quadrature", nats, nats / (dim * math.log(2)), "none", evaluations, settings)
