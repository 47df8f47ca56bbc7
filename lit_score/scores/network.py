r"""The one boundary between a network's raw output and the score (dpm-solver's ``model_wrapper`` habit).

With x_t = α x₀ + σ ε, every parameterisation is a linear map of the pair (x̂₀, ε̂):

| target     | network predicts               | recovered as                                              |
|------------|--------------------------------|-----------------------------------------------------------|
| ``eps``    | ε (Ho et al. 2020)             | x̂₀ = (x − σ ε̂)/α                                         |
| ``x0``     | x₀                             | ε̂ = (x − α x̂₀)/σ                                         |
| ``v``      | v = α ε − σ x₀ (Salimans & Ho) | x̂₀ = (α x − σ v)/(α² + σ²),  ε̂ = (σ x + α v)/(α² + σ²)   |
| ``score``  | ∇ log p_t = −ε/σ               | ε̂ = −σ ŝ   (optionally ŝ = out/σ, Song & Ermon 2020)      |
| ``velocity`` | dx/dt = α' x₀ + σ' ε (flow matching) | solve [[α, σ], [α', σ']] [x̂₀, ε̂] = [x, v]          |
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from lit_score.processes import NoiseProcess
from lit_score.utils import append_dims

Target = Literal["eps", "x0", "v", "score", "velocity"]


class NetworkScore(nn.Module):
    """Turns ``network(x, c_noise(t))`` into score(x, t), denoise(x, t) (x̂₀), eps(x, t) and velocity(x, t)."""

    def __init__(self, network: nn.Module, process: NoiseProcess, target: Target = "eps", scale_by_sigma: bool = False):
        super().__init__()
        if target not in ("eps", "x0", "v", "score", "velocity"):
            raise ValueError(f"unknown target {target!r}: use eps, x0, v, score or velocity")
        if scale_by_sigma and target != "score":
            raise ValueError("scale_by_sigma only applies to target='score'")
        self.network, self.process, self.target, self.scale_by_sigma = network, process, target, scale_by_sigma

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's raw output at (x, t)."""
        out = self.network(x, self.process.c_noise(t))
        if self.scale_by_sigma:
            out = out / append_dims(self.process.sigma(t), x)
        return out

    def _coefs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return append_dims(self.process.alpha(t), x), append_dims(self.process.sigma(t), x)

    def predict(self, x: Tensor, t: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) from one network evaluation (or from a given raw output ``out``)."""
        out = self.raw(x, t) if out is None else out
        alpha, sigma = self._coefs(x, t)
        if self.target == "eps":
            return (x - sigma * out) / alpha, out
        if self.target == "x0":
            return out, (x - alpha * out) / sigma
        if self.target == "v":
            norm = alpha**2 + sigma**2
            return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
        if self.target == "score":
            eps = -sigma * out
            return (x - sigma * eps) / alpha, eps
        alpha_dot, sigma_dot = append_dims(self.process.alpha_dot(t), x), append_dims(self.process.sigma_dot(t), x)
        det = alpha * sigma_dot - sigma * alpha_dot
        return (sigma_dot * x - sigma * out) / det, (alpha * out - alpha_dot * x) / det

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the raw output should equal for x_t = α x₀ + σ ε (before any 1/σ output scaling)."""
        alpha, sigma = self._coefs(x0, t)
        if self.target == "eps":
            return noise
        if self.target == "x0":
            return x0
        if self.target == "v":
            return alpha * noise - sigma * x0
        if self.target == "score":
            return -noise / sigma
        return append_dims(self.process.alpha_dot(t), x0) * x0 + append_dims(self.process.sigma_dot(t), x0) * noise

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """∇ₓ log p_t(x) = −ε̂/σ."""
        if self.target == "score":
            return self.raw(x, t)
        return -self.predict(x, t)[1] / append_dims(self.process.sigma(t), x)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """x̂₀ = E[x₀ | x_t] (Tweedie)."""
        return self.predict(x, t)[0]

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """ε̂."""
        return self.predict(x, t)[1]

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity dx/dt = α' x̂₀ + σ' ε̂ (exact at α → 0, unlike the score form)."""
        if self.target == "velocity":
            return self.raw(x, t)
        x0, eps = self.predict(x, t)
        return append_dims(self.process.alpha_dot(t), x) * x0 + append_dims(self.process.sigma_dot(t), x) * eps

    # --- energies: a network that declares ``has_energy`` (NoiseConditionalEnergy) -------------------------------
    @property
    def has_energy(self) -> bool:
        """Whether E(x, t) is available: the network declares an energy Ẽ whose −∇ₓẼ it returns, and the target is
        one of those for which that output is a gradient field of the score (``score``, ``eps``)."""
        return bool(getattr(self.network, "has_energy", False)) and self.target in ("score", "eps")

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        """E(x, t) with −∇ₓE = score(x, t), from the network's Ẽ (raw output −∇ₓẼ): ``score`` → Ẽ, ``score`` with
        ``scale_by_sigma`` → Ẽ/σ, ``eps`` → −Ẽ/σ (since s = −ε̂/σ = ∇Ẽ/σ). This is the one place for that conversion."""
        if not self.has_energy:
            raise ValueError(f"{type(self.network).__name__} with target {self.target!r} defines no energy: use a"
                             " NoiseConditionalEnergy network with target score or eps")
        tilde = self.network.energy(x, self.process.c_noise(t))
        sigma = self.process.sigma(t)
        if self.target == "eps":
            return -tilde / sigma
        return tilde / sigma if self.scale_by_sigma else tilde

    def energy_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(E(x, t), score(x, t)) with one backward pass, for Metropolis–Hastings tests."""
        from lit_score.scores.energy import energy_gradient

        energy, grad = energy_gradient(self.energy, x, t)
        return energy.detach(), -grad

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x, t)
