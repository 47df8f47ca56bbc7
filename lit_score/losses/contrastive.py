"""Contrastive divergence for energy-based models (Hinton 2002), with the energy regulariser of Du & Mordatch 2019."""

from __future__ import annotations

from torch import Tensor

from lit_score.checks import check_number


class ContrastiveDivergence:
    """Per-sample CD loss E(x⁺) − E(x⁻) + α·(E(x⁺)² + E(x⁻)²) (Du & Mordatch 2019, eq. 3 and §3.3).

    Its mean is the usual objective ``mean E(real) − mean E(fake) + α·mean(E_real² + E_fake²)``; the squared
    terms keep energies near zero. Real and fake batches pair up by index, so they must have the same size.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        check_number("alpha", alpha, ge=0.0)
        self.alpha = float(alpha)

    def __call__(self, energy_real: Tensor, energy_fake: Tensor) -> Tensor:
        """energy_real, energy_fake: (B,) -> per-sample loss (B,)."""
        if energy_real.shape != energy_fake.shape:
            raise ValueError(
                f"real and fake energies must pair up, got {tuple(energy_real.shape)} and {tuple(energy_fake.shape)}"
            )
        return energy_real - energy_fake + self.alpha * (energy_real**2 + energy_fake**2)

    def __repr__(self) -> str:
        return f"ContrastiveDivergence(alpha={self.alpha})"
