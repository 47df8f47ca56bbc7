r"""DPM-Solver++ SDE (Lu et al. 2022b, "DPM-Solver++", §5 and appendix; Gonzalez et al. 2023, "SEEDS"): the
multistep 2M / 3M SDE solvers and the 2-stage singlestep SDE solver, in log-SNR, for any process.

The reverse SDEs with the marginals of the forward process x_t = α_t x₀ + σ_t ε form a family in η ≥ 0,

    dx = [f x − ½(1 + η) g² ∇log p_t(x)] dt + √η g dw̄,

η = 0 the probability-flow ODE, η = 1 the reverse SDE of Song et al. (2021). With λ = log(α/σ), g² = −2σ² dλ/dt and
∇log p_t = (α_t x̂₀ − x)/σ_t², the linear part integrates exactly; for a step t → s with h = λ_s − λ_t > 0,

    x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s ∫ (1 + η) e^{−(1+η)(λ_s − λ)} x̂₀(λ) dλ + σ_s √(1 − e^{−2ηh}) z,

the integral over [λ_t, λ_s]. It is the DPM-Solver++ ODE update with ρ = σ_s/σ_t scaled by e^{−ηh} and ĥ = −h replaced
by −(1 + η)h: the polynomial terms of x̂₀ in (λ − λ_t)/h integrate to the same φ functions of ĥ (substitute
v = (1 + η)(λ − λ_t)), so one update, ``dpm_solver.multistep_update(..., eta_h=ηh)``, serves the ODE and the SDE.

| symbol | meaning |
|---|---|
| λ, h | log-SNR log(α/σ); h = λ_s − λ_t |
| M, x̂₀ | the data prediction from :meth:`Sampler.denoised` (thresholded when the sampler has thresholding) |
| η | the SDE's noise weight, ``eta``; η = 0 is DPM-Solver++ (ODE) |
| ηh | the extra decay of x: ρ = (σ_s/σ_t) e^{−ηh}, ĥ = −(h + ηh), noise std σ_s √(1 − e^{−2ηh}) |
| τ | the Brownian time of the noise source: σ/α = e^{−λ} (k-diffusion's σ) |
| z | one draw of ``noise(τ_t, τ_s)`` (noise.py), scaled by ``s_noise`` |

| update | x_s (data terms as in ``dpm_solver.py`` with the ĥ above) |
|---|---|
| 1 (= DDPM's ancestral step at η = 1) | ρ x − α_s φ₁(ĥ) M₀ + σ_s √(1 − e^{−2ηh}) z |
| 2M midpoint / heun | order 1 − ½ α_s φ₁(ĥ) D₁ / − α_s φ₂(ĥ) D₁, D₁ = (M₀ − M₋₁)/r₀ |
| 3M | order 1 − α_s φ₂(ĥ)(D₁ + r₀D₂) − α_s φ₃(ĥ) D₂ (the reference's D₂: second order in h, see dpm_solver.py) |
| singlestep 2 (u at λ_t + h/2) | x_u by order 1 over t → u, then order 1 over t → s − α_s φ₁(ĥ)(M_u − M_t) |

Multistep: k-diffusion's ``sample_dpmpp_2m_sde`` (solver_type midpoint / heun) and ``sample_dpmpp_3m_sde`` (whose
order-2 warm-up step is the heun form: ``solver_type="heun"`` reproduces it), and diffusers'
``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`` (η = 1, order 2: its order-3 SDE update has −½ where
the φ₃ term needs +½, so it differs from this one and k-diffusion's by α_s D₂ — see the tests); k-diffusion works in σ
with α = 1, the updates here carry α_s and hold for VP, sub-VP, VE, EDM and flow processes. Singlestep: k-diffusion's
``sample_dpmpp_sde`` (r = ½), which adds noise as an ancestral step: σ̃_up = η σ̃_s √(1 − e^{−2h}) in σ̃ = σ/α. That
is the update above with ηh replaced by −½ log(1 − η²(1 − e^{−2h})) — the same at η = 0 and η = 1, not in between; its
second stage draws the noise of the whole step, ``noise(τ_t, τ_s)``, which a Brownian tree correlates with the
stage's.
Both sample the same marginals; η of the singlestep sampler is k-diffusion's, not the SDE's. The singlestep sampler
wants ``noise="brownian_tree"`` (k-diffusion's default for it): the second stage's draw then contains the first
stage's increment; with i.i.d. draws it needs about twice the NFE (on the test mixture at 31 NFE, η = 1: 2.7× the
sampling floor on VP, 2.5× on EDM, against 1.1× and 0.8× with the tree).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.dpm_solver import multistep_update, singlestep_orders
from lit_score.samplers.noise import NOISE_KINDS, Noise, NoiseKind, noise_source
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims


def ancestral_eta_h(eta: float, h: Tensor) -> Tensor:
    """ηh of the SDE update equal to k-diffusion's ancestral step with ``eta`` over a log-SNR step h (module notes)."""
    return -0.5 * torch.log1p(eta**2 * torch.expm1(-2 * h))


def sde_noise(process: NoiseProcess, x: Tensor, s: Tensor, eta_h: Tensor, z: Tensor, s_noise: float) -> Tensor:
    """The noise term σ_s √(1 − e^{−2ηh}) · s_noise · z of an SDE step ending at s."""
    return append_dims(process.sigma(s) * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise, x) * z


class DPMSolverSDE(Sampler):
    """DPM-Solver++ SDE (module docstring): multistep order 1–3 (2M, 3M SDE) or the 2-stage singlestep; NFE = num_steps.

    Args:
        num_steps: NFE; with ``denoise`` the last is the final x̂₀ step (k-diffusion's last step to σ = 0).
        order: multistep order 1, 2 or 3 (warm-up with lower orders); the singlestep sampler is order 2.
        multistep: multistep (``sample_dpmpp_2m_sde`` / ``3m_sde``) or singlestep (``sample_dpmpp_sde``; an odd
            number of steps ends with one first-order step).
        eta: η ∈ [0, 1]; 0 is the ODE (DPM-Solver++), 1 the reverse SDE.
        s_noise: scale of the added noise (k-diffusion's ``s_noise``; 1 is the exact SDE).
        solver_type: the order-2 multistep update, ``midpoint`` or ``heun`` (3M's warm-up step in k-diffusion: heun).
        noise: ``gaussian`` (i.i.d. draws from the call's generator) or ``brownian_tree`` (one Brownian path fixed
            by the generator, the same for every step count; see ``noise.py``).
        spacing: time spacing (default uniform in log-SNR, as DPMSolver: on the mixture it beats Karras at 15–31 NFE).
        denoise: finish with x̂₀ at t_min.
        thresholding: x̂₀ thresholding (``StaticThreshold``, ``DynamicThreshold``) wherever x̂₀ is formed.
    """

    def __init__(
        self,
        num_steps: int = 20,
        order: Literal[1, 2, 3] = 2,
        multistep: bool = True,
        eta: float = 1.0,
        s_noise: float = 1.0,
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        noise: NoiseKind = "gaussian",
        spacing: Spacing | None = "logsnr",
        denoise: bool = True,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        if not multistep and order != 2:
            raise ValueError(f"the singlestep SDE sampler is order 2, got order={order}: use order=2 or multistep")
        check_number("eta", eta, ge=0.0, le=1.0)
        check_number("s_noise", s_noise, ge=0.0)
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"unknown solver_type {solver_type!r}: use midpoint or heun")
        if noise not in NOISE_KINDS:
            raise ValueError(f"unknown noise {noise!r}: use one of {', '.join(NOISE_KINDS)}")
        self.order, self.multistep, self.eta, self.s_noise = order, multistep, eta, s_noise
        self.solver_type, self.noise, self.thresholding = solver_type, noise, thresholding

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)
        steps = self.num_steps - int(self.denoise)
        orders = singlestep_orders(steps, 2, fast=True)  # singlestep: [2, …, 2] (+ [1] for an odd count)
        grid = self.grid(process, x.device) if self.multistep else process.time_grid(len(orders), self.spacing,
                                                                                     device=x.device)
        lam = process.log_snr(grid)
        mid = lam[:-1] + 0.5 * (lam[1:] - lam[:-1])  # the singlestep stage u at r = ½
        taus = (-torch.cat([lam, mid])).exp().tolist()  # Brownian times, read once before the loop
        noise = noise_source(self.noise, x, generator, taus) if self.eta > 0 else None
        if self.multistep:
            x = self._multistep(score_fn, process, x, grid, taus, noise, callback, progress)
        else:
            mids = process.t_from_log_snr(mid)
            x = self._singlestep(score_fn, process, x, grid, orders, mids, taus, noise, callback, progress)
        return self.finish(score_fn, process, x, grid[-1])

    def _noised(self, process: NoiseProcess, x: Tensor, s: Tensor, eta_h: Tensor, noise: Noise | None,
                tau_t: float, tau_s: float) -> Tensor:
        """x plus the SDE step's noise (nothing at η = 0)."""
        return x if noise is None else x + sde_noise(process, x, s, eta_h, noise(tau_t, tau_s), self.s_noise)

    def _multistep(self, score_fn, process, x, grid, taus, noise, callback, progress) -> Tensor:
        """The 2M / 3M SDE loop: one x̂₀ per grid point but the last."""
        ts, ms, heun = [], [], self.solver_type == "heun"
        for i in self.steps(len(grid) - 1, progress, "dpm-solver++ sde"):
            t, s = full_like_t(x, grid[i]), full_like_t(x, grid[i + 1])
            ts, ms = (ts + [t])[-self.order:], (ms + [self.denoised(score_fn, process, x, t)[0]])[-self.order:]
            eta_h = self.eta * (process.log_snr(s) - process.log_snr(t))
            x = multistep_update(process, x, ts, ms, s, True, eta_h=eta_h, heun=heun)
            x = self._noised(process, x, s, eta_h, noise, taus[i], taus[i + 1])
            _report(callback, i, s, x)
        return x

    def _singlestep(self, score_fn, process, x, grid, orders, mids, taus, noise, callback, progress) -> Tensor:
        """k-diffusion's ``sample_dpmpp_sde``: two x̂₀ per interval (one for a trailing first-order step)."""
        n = len(grid) - 1
        for i in self.steps(n, progress, "dpm-solver++ sde"):
            t, s = full_like_t(x, grid[i]), full_like_t(x, grid[i + 1])
            lam_t, lam_s = process.log_snr(t), process.log_snr(s)
            m_t = self.denoised(score_fn, process, x, t)[0]
            eta_h = ancestral_eta_h(self.eta, lam_s - lam_t)
            if orders[i] == 2:
                u = full_like_t(x, mids[i])
                eta_h_u = ancestral_eta_h(self.eta, process.log_snr(u) - lam_t)
                x_u = multistep_update(process, x, [t], [m_t], u, True, eta_h=eta_h_u)
                x_u = self._noised(process, x_u, u, eta_h_u, noise, taus[i], taus[n + 1 + i])
                m_u = self.denoised(score_fn, process, x_u, u)[0]
                x = multistep_update(process, x, [u, t], [m_u, m_t], s, True, eta_h=eta_h)
            else:
                x = multistep_update(process, x, [t], [m_t], s, True, eta_h=eta_h)
            x = self._noised(process, x, s, eta_h, noise, taus[i], taus[i + 1])
            _report(callback, i, s, x)
        return x


def _report(callback, i: int, t: Tensor, x: Tensor) -> None:
    if callback is not None:
        callback({"step": i, "t": t, "x": x})


__all__ = ["DPMSolverSDE", "ancestral_eta_h", "sde_noise"]
