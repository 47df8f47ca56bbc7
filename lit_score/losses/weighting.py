r"""Loss weightings on one scale: the weight w(λ) on the ε-MSE ‖ε̂ − ε‖² as a function of the log-SNR λ.

Every denoising objective with x_t = α x₀ + σ ε is E_t[w · ‖ε̂ − ε‖²] for some weight, whatever the network
predicts: an x₀ error is an ε error times σ̃² (x̂₀ − x₀ = −σ̃ (ε̂ − ε), σ̃ = σ/α = e^{−λ}), so a weight W on ‖x̂₀ − x₀‖²
is w = W·σ̃² = W/SNR on ε-MSE, with SNR = α²/σ² = e^{2λ}. :meth:`~lit_score.scores.NetworkScore.eps_error_scale`
turns w into the weight on any target's regression. Symbols: λ = log(α/σ) (this codebase's log-SNR), SNR = e^{2λ},
σ̃ = e^{−λ}, σ_d the data's standard deviation, γ the SNR cap.

| name            | w on ε-MSE        | on x₀-MSE            | source                                              |
|-----------------|-------------------|----------------------|-----------------------------------------------------|
| ``snr``         | 1                 | SNR                  | L_simple (Ho et al. 2020); = DSM with λ(σ) = σ²     |
| ``snr_plus_one``| 1 + 1/SNR         | SNR + 1              | v-prediction's MSE on VP (Salimans & Ho 2022)       |
| ``min_snr``     | min(SNR, γ)/SNR   | min(SNR, γ)          | min-SNR-γ (Hang et al. 2023, γ = 5)                 |
| ``soft_min_snr``| γ/(SNR + γ)       | 1/(1/SNR + 1/γ)      | Crowson et al. 2024; k-diffusion's is γ = 1/σ_d²    |
| ``edm``         | (σ̃² + σ_d²)/σ_d²  | (σ̃² + σ_d²)/(σ̃σ_d)²  | EDM's λ(σ) (Karras et al. 2022, eq. 8, Table 1)     |
| ``likelihood``  | g²/σ² = −2 dλ/dt  | −2 (dλ/dt)·SNR       | Song et al. 2021b (g² on the score error); 2× VDM's |
|                 |                   |                      | continuous diffusion loss (Kingma et al. 2021)      |

The last one is not a function of λ alone: it depends on how fast the schedule moves λ. The common ground is the
weight *per unit of log-SNR* that training sees, W(λ) = p(λ)·w(λ), with p(λ) the density of λ under the training
time distribution (Kingma & Gao 2023): for ``likelihood`` under uniform t, p(λ) = 1/(T·|dλ/dt|), so W = 2/T is flat —
the ELBO weights every log-SNR equally, and every other weighting is a reweighting of it. ``docs/weightings.py``
plots w(λ) and W(λ) for a process.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Weighting = Literal["snr", "snr_plus_one", "min_snr", "soft_min_snr", "edm"]
#: the weightings that are functions of the log-SNR alone (``likelihood`` needs the schedule's dλ/dt)
LOG_SNR_WEIGHTINGS = ("snr", "snr_plus_one", "min_snr", "soft_min_snr", "edm")


def eps_weight(name: str, log_snr: Tensor, gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor:
    """w(λ) on ε-MSE for a weighting of the table, elementwise in λ = log(α/σ)."""
    snr = (2 * log_snr).exp()
    if name == "snr":
        return torch.ones_like(snr)
    if name == "snr_plus_one":
        return 1 + 1 / snr
    if name == "min_snr":
        return (gamma / snr).clamp(max=1.0)  # = min(SNR, γ)/SNR, finite at SNR = 0
    if name == "soft_min_snr":
        return gamma / (snr + gamma)
    if name == "edm":
        return ((-2 * log_snr).exp() + sigma_data**2) / sigma_data**2
    raise ValueError(f"unknown weighting {name!r}: use {', '.join(LOG_SNR_WEIGHTINGS)}")


__all__ = ["LOG_SNR_WEIGHTINGS", "Weighting", "eps_weight"]
