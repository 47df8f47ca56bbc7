r"""VDM's learned noise schedule (Kingma, Salimans, Poole & Ho 2021, sec. 3.2, 5.3 and Appendix H), as a process.

| symbol | meaning |
|---|---|
| γ(t) = −log SNR(t) | increasing in t ∈ [0, 1]; this codebase's log-SNR is λ = −γ/2 |
| α² = sigmoid(−γ), σ² = sigmoid(γ) | variance preserving (eq. 4) |
| γ̃(t) = l₁(t) + l₃(φ(l₂(l₁(t)))) | the monotone network: l₁, l₂, l₃ with weights ≥ 0 (|w|), φ = sigmoid |
| ν(t) = (γ̃(t) − γ̃(0))/(γ̃(1) − γ̃(0)) | its shape, ν(0) = 0, ν(1) = 1 |
| γ(t) = γ₀ + (γ₁ − γ₀)·ν(t) | with learnable end points γ₀ (init −13.3), γ₁ (init 5) |

Every sampler and the likelihood code use it through the NoiseProcess interface (α, σ, the inverse log-SNR by
bisection, f and g² by the base's forward-mode derivatives). Unlike the other processes it holds parameters; the
family's optimiser trains them with the network. :class:`~lit_score.losses.VDMLoss` trains the end points by the
VLB and the shape ν by the variance of the VLB's estimator (sec. 5.3); ``learn_shape=False`` is the fixed linear
schedule γ(t) = γ₀ + (γ₁ − γ₀)t, ``learn_endpoints=False`` keeps γ₀, γ₁ fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.processes.base import NoiseProcess


class LearnedVP(NoiseProcess):
    """Variance-preserving process with VDM's learned γ(t) on t ∈ [0, 1].

    Args:
        gamma_0, gamma_1: initial end points γ(0), γ(1) (VDM: −13.3, 5.0).
        learn_endpoints: train γ₀ and γ₁.
        learn_shape: a monotone network for ν(t) (else ν(t) = t, the fixed linear schedule).
        hidden: width of the monotone network's hidden layer (VDM: 1024).
    """

    learnable_schedule = True

    def __init__(
        self,
        gamma_0: float = -13.3,
        gamma_1: float = 5.0,
        learn_endpoints: bool = True,
        learn_shape: bool = True,
        hidden: int = 1024,
    ) -> None:
        check_number("gamma_0", gamma_0)
        check_number("gamma_1", gamma_1)
        check_number("hidden", hidden, ge=1, integer=True)
        if not gamma_0 < gamma_1:
            raise ValueError(f"need gamma_0 < gamma_1 (SNR decreasing in t), got {gamma_0} and {gamma_1}")
        super().__init__(0.0, 1.0)
        self.learn_endpoints, self.learn_shape = bool(learn_endpoints), bool(learn_shape)
        ends = torch.tensor([float(gamma_0), float(gamma_1)])
        self.ends = nn.Parameter(ends, requires_grad=self.learn_endpoints)
        # l₁: 1 → 1, l₂: 1 → hidden, l₃: hidden → 1; weights are used as |w| (monotone increasing γ̃)
        self.w1, self.b1 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
        self.w2, self.b2 = nn.Parameter(torch.randn(hidden) * 0.01 + 0.01), nn.Parameter(torch.zeros(hidden))
        self.w3 = nn.Parameter(torch.randn(hidden) * 0.01 + 0.01)
        for p in (self.w1, self.b1, self.w2, self.b2, self.w3):
            p.requires_grad_(self.learn_shape)

    # --- the schedule ---------------------------------------------------------------------------------------------
    def _raw(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(γ̃(t), dγ̃/dt) of the monotone network, elementwise in t."""
        w1, w2, w3 = self.w1.abs(), self.w2.abs(), self.w3.abs()
        h = w1 * t + self.b1  # l₁
        pre = h[..., None] * w2 + self.b2  # l₂
        act = torch.sigmoid(pre)
        raw = h + (act * w3).sum(-1)
        dh = w1.expand_as(t)
        draw = dh + (act * (1 - act) * w2 * w3).sum(-1) * dh
        return raw, draw

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(ν(t), ν'(t)): the normalised shape and its derivative (ν(t) = t without a learned shape), shaped like t."""
        t = torch.as_tensor(t, device=self.w1.device).to(self.w1.dtype)
        if not self.learn_shape:
            return t, torch.ones_like(t)
        raw, draw = self._raw(t.reshape(-1))
        ends, _ = self._raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        span = ends[1] - ends[0]
        return ((raw - ends[0]) / span).reshape(t.shape), (draw / span).reshape(t.shape)

    def gamma_from_shape(self, nu: Tensor, dnu: Tensor) -> tuple[Tensor, Tensor]:
        """(γ(t), γ'(t)) from the shape (ν, ν'): γ₀ + (γ₁ − γ₀)ν and (γ₁ − γ₀)ν'."""
        g0, g1 = self.ends[0], self.ends[1]
        return g0 + (g1 - g0) * nu, (g1 - g0) * dnu

    def gamma(self, t: Tensor) -> Tensor:
        """γ(t) = −log SNR(t)."""
        return self.gamma_from_shape(*self.shape(t))[0].to(t.dtype)

    @property
    def gamma_ends(self) -> tuple[float, float]:
        """(γ₀, γ₁) now."""
        return float(self.ends[0].detach()), float(self.ends[1].detach())

    # --- NoiseProcess ---------------------------------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.gamma(t)).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.gamma(t)).sqrt()

    def log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * torch.nn.functional.logsigmoid(-self.gamma(t))

    def log_snr(self, t: Tensor) -> Tensor:
        return -0.5 * self.gamma(t)

    def f(self, t: Tensor) -> Tensor:
        """d log α/dt = −½ γ' sigmoid(γ) (from log α = ½ log sigmoid(−γ))."""
        gamma, dgamma = self.gamma_from_shape(*self.shape(t))
        return (-0.5 * dgamma * torch.sigmoid(gamma)).to(t.dtype)

    def g2(self, t: Tensor) -> Tensor:
        """dσ²/dt − 2fσ² = γ' sigmoid(γ) (σ² = sigmoid(γ), so dσ²/dt = γ' σ²α² and −2fσ² = γ' σ⁴)."""
        gamma, dgamma = self.gamma_from_shape(*self.shape(t))
        return (dgamma * torch.sigmoid(gamma)).to(t.dtype)

    def c_noise(self, t: Tensor) -> Tensor:
        """999·ν(t): the normalised γ, so the network is conditioned on the SNR as VDM's is (not on t)."""
        return 999.0 * self.shape(t)[0].to(t.dtype)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """t with −γ(t)/2 = λ, by bisection on [0, 1] (γ is increasing), 60 halvings in float64; clamped to [0, 1]."""
        target = (-2 * log_snr).detach().to(torch.float64)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        with torch.no_grad():
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                above = self.gamma(mid.to(self.w1.dtype)).to(torch.float64) > target
                hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        return (0.5 * (lo + hi)).to(log_snr.dtype)

    def extra_repr(self) -> str:
        g0, g1 = self.gamma_ends
        return (f"gamma_0={g0:.4g}, gamma_1={g1:.4g}, learn_endpoints={self.learn_endpoints}, "
                f"learn_shape={self.learn_shape}, hidden={self.w2.numel()}")
