r"""UniPC (Zhao et al. 2023): the multistep predictor UniP-p and the corrector UniC-p in log-SNR, for any process.

UniPC writes the exponential integrator of DPM-Solver (``dpm_solver.py``: same ρ, c, ĥ and φ functions) with the
model output's Taylor terms replaced by divided differences D_k weighted by coefficients a that solve one small linear
system; the corrector UniC adds the model value at the step's end point, which the next step evaluates anyway, so it
raises the order by one at no extra NFE. For a step t_{i−1} → t_i (the paper's indices; t_i less noisy):

| symbol | meaning |
|---|---|
| λ, h | log-SNR λ = log(α/σ); h = λ_{t_i} − λ_{t_{i−1}} |
| M | the model value: x̂₀ (``predict_x0``, the paper's data prediction, diffusers' ``predict_x0=True``) or ε̂ |
| ρ, c, ĥ | (σ_{t_i}/σ_{t_{i−1}}, α_{t_i}, −h) for x̂₀; (α_{t_i}/α_{t_{i−1}}, σ_{t_i}, h) for ε̂ (``dpm_solver.scales``) |
| φ_k(ĥ) | φ₁ = e^ĥ − 1, φ_{k+1} = φ_k/ĥ − 1/k! (``dpm_solver.phi_1..3``; the paper's h·φ_k(h)) |
| M₀, M₋ₖ | M at t_{i−1} and at the k-th earlier grid point t_{i−1−k} |
| r_k, D_k | r_k = (λ_{t_{i−1−k}} − λ_{t_{i−1}})/h (< 0), D_k = (M₋ₖ − M₀)/r_k |
| r_p, D_p (UniC) | r = 1 and D = M(x̃_{t_i}, t_i) − M₀: the value at the predicted point |
| B(h) | ``bh1``: B₁ = ĥ; ``bh2``: B₂ = e^ĥ − 1 (the paper's two choices; any B(h) = O(h) keeps the order) |
| R, g | R_{jk} = r_k^{j−1}, g_j = j!·φ_{j+1}(ĥ), j, k = 1..K (K terms D_k) |
| a | R a = g / B(h) (Theorem 3.1 of the paper); with K = 1 the paper's choice a = ½ |

| update | x̃_{t_i} |
|---|---|
| UniP-p (K = p − 1 earlier points) | ρ x̃^c_{t_{i−1}} − c φ₁(ĥ) M₀ − c B(h) Σ_k a_k D_k |
| UniC-p (K = p: UniP-p's p − 1 points and the new value) | the same sum from the same x̃^c_{t_{i−1}}, now with D_p |

(Zhao et al. 2023: §3.1 UniC and its order, Theorem 3.1; §3.2 UniP, Corollary 3.2; the multistep UniPC algorithm
for noise and data prediction. Equation numbers are not cited: the paper's text was not at hand to check them.)
Every step matches diffusers' ``UniPCMultistepScheduler`` (``solver_type`` bh1 / bh2, ``predict_x0``,
``lower_order_final``, ``thresholding``) to float64 rounding on one grid (``tests/test_unipc.py``).

Notes.
- B(h) matters only where K = 1 (UniP-2 and UniC-1, a = ½): elsewhere the system is solved exactly and B(h)·a = R⁻¹g
  does not depend on B. UniP-2 with ``bh2`` is DPM-Solver++(2M) (and DPM-Solver-2M for ε̂) to rounding.
- a = ½ (K = 1) is the h → 0 limit of the solved a = φ₂(ĥ)/B(ĥ); on a large first step in ε̂ it is far from it (the
  flow's uniform grid starts with h ≈ 4.7: ½ against 0.2 for ``bh2``). Measured on the mixture at 10 NFE, flow with the
  uniform grid: ε̂ with UniC 18× the data floor, ε̂ without UniC 0.59×, x̂₀ (the default) with UniC 0.56×.
- As diffusers (and the paper's code), the corrector is skipped after the last step (it would need one more NFE),
  the multistep warm-up uses orders 1, 2, … and ``lower_order_final`` lowers the order of the last steps to the
  number of steps left, whatever their number (diffusers' DPM-Solver does so only below 15 steps, lit-score's
  ``DPMSolver`` below 10). The final step is then first order and uncorrected: converged orders are measured with
  ``lower_order_final=False``.
- UniC on the DPM-Solver predictor is ``predictor="dpmsolver"``: the predictor is ``dpm_solver.multistep_update`` (the
  reference 3M, second order), the corrector UniC as above. It is an option of this sampler rather than a
  ``corrector`` argument of ``DPMSolver`` because the corrector owns the loop (the history of model values at the
  uncorrected points, the order schedule, the skipped last correction), which ``UniPC`` already has; ``DPMSolver``
  stays unchanged. diffusers' ``solver_p`` differs here: its predictor converts the model output with the *corrected*
  sample (x̂₀ = (x̃^c − σ ε̂(x̃))/α), a value at no point of the trajectory; this module keeps M at the evaluated point.
- φ_{k+1} = φ_k/ĥ − 1/k! loses digits for small ĥ (as in diffusers and the paper's code); order 3 needs φ₄.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers.base import Sampler, ScoreFn, full_like_t, require_process
from lit_score.samplers.dpm_solver import multistep_update, phi_1, phi_2, phi_3, scales
from lit_score.samplers.thresholding import Thresholding
from lit_score.utils import append_dims


def b_of_h(h_hat: Tensor, variant: str) -> Tensor:
    """B(h): B₁ = ĥ (``bh1``) or B₂ = e^ĥ − 1 (``bh2``)."""
    return h_hat if variant == "bh1" else phi_1(h_hat)


def weights(h_hat: Tensor, rs: list[Tensor], variant: str) -> Tensor:
    """B(h)·a of the K = len(rs) differences, shape (B, K): a = ½ for K = 1, else B(h)·a = R⁻¹g (Theorem 3.1)."""
    if len(rs) == 1:
        return (0.5 * b_of_h(h_hat, variant)).unsqueeze(-1)
    phis = [phi_2(h_hat), phi_3(h_hat)]
    phis.append(phis[-1] / h_hat - 1 / 6)  # φ₄ (UniC-3)
    g = torch.stack([math.factorial(j + 1) * phis[j] for j in range(len(rs))], -1)
    r = torch.stack(rs, -1)
    R = torch.stack([r**j for j in range(len(rs))], -2)  # (B, K, K): row j holds r_k^j
    return torch.linalg.solve_ex(R, g)[0]  # solve_ex: no host sync for the singularity check


def unipc_update(
    process: NoiseProcess, x: Tensor, ts: list[Tensor], ms: list[Tensor], s: Tensor, predict_x0: bool,
    variant: str, m_s: Tensor | None = None,
) -> Tensor:
    """UniP-p from ts[-1] to s with p = len(ms) model values ``ms`` at ``ts``, or with ``m_s`` = M(x̃_s, s) UniC-p
    (``x`` then is the corrected x at ts[-1], the point the predictor started from); 0 NFE."""
    lam = [process.log_snr(t) for t in ts]
    h = process.log_snr(s) - lam[-1]
    h_hat = -h if predict_x0 else h
    rho, c = scales(process, ts[-1], s, predict_x0)
    m0 = ms[-1]
    rs = [(lam_k - lam[-1]) / h for lam_k in lam[-2::-1]]
    ds = [(m_k - m0) / append_dims(r_k, x) for m_k, r_k in zip(ms[-2::-1], rs)]
    if m_s is not None:
        rs, ds = rs + [torch.ones_like(h)], ds + [m_s - m0]
    x_s = append_dims(rho, x) * x - append_dims(c * phi_1(h_hat), x) * m0
    if not ds:
        return x_s
    w = c.unsqueeze(-1) * weights(h_hat, rs, variant)  # c·B(h)·a, (B, K)
    return x_s - sum(append_dims(w[:, k], x) * d_k for k, d_k in enumerate(ds))


class UniPC(Sampler):
    """UniPC-p (Zhao et al. 2023): multistep UniP-p with the UniC corrector, order 1–3; NFE = num_steps.

    Args:
        num_steps: NFE (with ``denoise`` the last is the final Tweedie step at t_min).
        order: p of UniP-p, 1–3; with the corrector the order of accuracy is p + 1.
        variant: B(h), ``bh1`` (ĥ; the paper's choice for unconditional sampling below 10 steps) or ``bh2`` (e^ĥ − 1,
            diffusers' default).
        predict_x0: update on x̂₀ (data prediction, default) or on ε̂ (noise prediction).
        use_corrector: apply UniC after every step but the last, with the model value the next step evaluates.
        predictor: ``unip`` (UniP-p) or ``dpmsolver`` (DPM-Solver(++) multistep of the same order, corrected by UniC).
        spacing: time spacing (default uniform in log-SNR).
        denoise: finish with x̂₀ at t_min.
        lower_order_final: lower the order of the last steps to the number of steps left (as diffusers' UniPC).
        thresholding: x̂₀ thresholding of every model value (``StaticThreshold``, ``DynamicThreshold``); on ε̂ the
            ε̂ re-derived from the thresholded x̂₀ (diffusers' UniPC thresholds only with ``predict_x0``).

    One interval of the grid (``interval()``) is the first step of a run: UniP-1 = DDIM (η = 0), uncorrected.
    """

    steps_on_grid = True

    @property
    def reversible(self) -> bool:
        """Without thresholding: the updates are exact integrals of the linear part in λ (as DPM-Solver's), so they
        hold for h < 0 too (encoding inside a reversed window); a thresholded x̂₀ is not the ODE's."""
        return self.thresholding is None

    def __init__(
        self,
        num_steps: int = 10,
        order: Literal[1, 2, 3] = 2,
        variant: Literal["bh1", "bh2"] = "bh2",
        predict_x0: bool = True,
        use_corrector: bool = True,
        predictor: Literal["unip", "dpmsolver"] = "unip",
        spacing: Spacing | None = "logsnr",
        denoise: bool = False,
        lower_order_final: bool = True,
        thresholding: Thresholding | None = None,
    ) -> None:
        super().__init__(num_steps, spacing, denoise)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unknown variant {variant!r}: use bh1 (B(h) = h) or bh2 (B(h) = e^h - 1)")
        if predictor not in ("unip", "dpmsolver"):
            raise ValueError(f"unknown predictor {predictor!r}: use unip or dpmsolver")
        self.order, self.variant, self.predict_x0 = order, variant, predict_x0
        self.use_corrector, self.predictor, self.lower_order_final = use_corrector, predictor, lower_order_final
        self.thresholding = thresholding

    def step_order(self, i: int, n: int) -> int:
        """Order of step i of n: warm-up i + 1, then ``order``, with ``lower_order_final`` at most n − i."""
        order = min(self.order, i + 1)
        return min(order, n - i) if self.lower_order_final else order

    def sample(self, score_fn: ScoreFn, x: Tensor, process: NoiseProcess | None, *, generator, callback, progress):
        process = require_process(process, self)

        def model(y: Tensor, t: Tensor) -> Tensor:
            x0, eps = self.denoised(score_fn, process, y, t)
            return x0 if self.predict_x0 else eps

        grid = self.grid(process, x.device)
        n = len(grid) - 1
        ts, ms, x_start, order = [], [], x, 0
        for i in self.steps(n, progress, "unipc"):
            t = full_like_t(x, grid[i])
            m = model(x, t)
            if self.use_corrector and i > 0:  # UniC-p of the last step, with M at the point it predicted
                x = unipc_update(process, x_start, ts[-order:], ms[-order:], t, self.predict_x0, self.variant, m)
            ts, ms = (ts + [t])[-self.order:], (ms + [m])[-self.order:]
            order, x_start, s = self.step_order(i, n), x, full_like_t(x, grid[i + 1])
            if self.predictor == "unip":
                x = unipc_update(process, x, ts[-order:], ms[-order:], s, self.predict_x0, self.variant)
            else:
                x = multistep_update(process, x, ts[-order:], ms[-order:], s, self.predict_x0)
            if callback is not None:
                callback({"step": i, "t": t, "x": x})
        return self.finish(score_fn, process, x, grid[-1])


__all__ = ["UniPC", "unipc_update"]
