"""Conditional flow matching with an optional minibatch optimal-transport coupling of data and noise."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_score.losses.denoising import DenoisingLoss


def ot_permutation(x0: Tensor, noise: Tensor) -> Tensor:
    """Indices π minimising Σ_i ‖x0_i − noise_π(i)‖² (exact, Hungarian; one host sync, O(B³) on the CPU)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.reshape(x0.shape[0], -1).double(), noise.reshape(noise.shape[0], -1).double()) ** 2
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols, device=x0.device, dtype=torch.long)


class FlowMatchingLoss(DenoisingLoss):
    """‖v_θ(x_t, t) − (ε − x₀)‖² per sample (Lipman et al. 2023; Liu et al. 2023) on the process's interpolant.

    With ``ot_coupling`` the batch's noise is re-paired with the data by exact minibatch optimal transport on
    squared distances (Tong et al. 2024, OT-CFM; Pooladian et al. 2023). Without it this equals
    :class:`DenoisingLoss` draw for draw (t first, then ε, from the same generator).
    """

    def __init__(
        self,
        ot_coupling: bool = False,
        weighting: Literal["none", "sigma2"] = "none",
        reduce: Literal["mean", "sum"] = "mean",
    ) -> None:
        super().__init__(weighting, reduce)
        self.ot_coupling = ot_coupling

    @property
    def takes_coupling(self) -> bool:
        """A given coupling is taken unless ``ot_coupling`` would re-pair it."""
        return not self.ot_coupling

    def couple(self, x0: Tensor, noise: Tensor) -> Tensor:
        """Independent pairs, or the exact minibatch OT pairing of data and noise."""
        return noise[ot_permutation(x0, noise)] if self.ot_coupling else noise

    def __repr__(self) -> str:
        return f"FlowMatchingLoss(ot_coupling={self.ot_coupling}, weighting={self.weighting!r}, reduce={self.reduce!r})"
