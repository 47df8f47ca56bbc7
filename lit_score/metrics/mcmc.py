r"""Convergence diagnostics of MCMC traces: split-R̂ and the effective sample size (Vehtari et al. 2021, as Stan).

A trace has shape (M, N): M chains of N draws of one scalar (for EBM chains, the energy of each chain's state).

| symbol | meaning |
|---|---|
| W | mean of the within-chain variances s²_m |
| B/N | variance of the chain means |
| var⁺ = (N − 1)/N · W + B/N | pooled variance estimate |
| R̂ = √(var⁺ / W) | over chains split in halves (split-R̂); ≈ 1 when the chains agree, > 1.01 is a warning |
| ρ̂_t = 1 − (W − mean_m γ̂_{m,t}) / var⁺ | autocorrelation at lag t, γ̂ the biased within-chain autocovariance |
| τ̂ = −1 + 2 Σ_k P̂_k, P̂_k = ρ̂_{2k} + ρ̂_{2k+1} | integrated autocorrelation time (Geyer's initial monotone sequence) |
| ESS = M·N / τ̂ | effective sample size (τ̂ ≥ 1/log₁₀(M·N), as Stan) |
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _as_trace(trace: Tensor) -> Tensor:
    trace = torch.as_tensor(trace, dtype=torch.float64)
    if trace.ndim == 1:
        trace = trace[None]
    if trace.ndim != 2 or trace.shape[1] < 4:
        raise ValueError(f"a trace is (chains, draws) with at least 4 draws, got shape {tuple(trace.shape)}")
    return trace


def _split(trace: Tensor) -> Tensor:
    half = trace.shape[1] // 2
    return torch.cat([trace[:, :half], trace[:, trace.shape[1] - half :]])


def split_rhat(trace: Tensor) -> float:
    """Split-R̂ of a (chains, draws) trace (Vehtari et al. 2021, eq. 4, without rank normalisation)."""
    chains = _split(_as_trace(trace))
    n = chains.shape[1]
    w = chains.var(dim=1).mean()
    b_over_n = chains.mean(dim=1).var() if chains.shape[0] > 1 else torch.tensor(0.0, dtype=chains.dtype)
    var_plus = (n - 1) / n * w + b_over_n
    return float((var_plus / w).sqrt()) if w > 0 else math.nan


def autocovariance(chains: Tensor) -> Tensor:
    """Biased autocovariance γ̂_t (divisor N) of each chain, lags 0 … N − 1, by FFT: (M, N)."""
    n = chains.shape[1]
    centred = chains - chains.mean(dim=1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = torch.fft.rfft(centred, n=size)
    return torch.fft.irfft(spectrum * spectrum.conj(), n=size)[:, :n] / n


def effective_sample_size(trace: Tensor) -> float:
    """ESS of a (chains, draws) trace, over chains split in halves (Stan's estimator)."""
    chains = _split(_as_trace(trace))
    m, n = chains.shape
    acov = autocovariance(chains)
    w = acov[:, 0].mean() * n / (n - 1)
    var_plus = w * (n - 1) / n + (chains.mean(dim=1).var() if m > 1 else 0.0)
    if var_plus <= 0:
        return math.nan
    rho = 1 - (w - acov.mean(dim=0)) / var_plus
    rho[0] = 1.0
    pairs = []
    for k in range(n // 2):
        p = float(rho[2 * k] + rho[2 * k + 1])
        if p < 0:
            break
        pairs.append(min(p, pairs[-1]) if pairs else p)  # initial monotone sequence
    tau = max(-1 + 2 * sum(pairs), 1 / math.log10(m * n)) if pairs else 1.0
    return m * n / tau
