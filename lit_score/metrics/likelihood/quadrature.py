"""EBMs in low dimension: the normalised density p(x) = exp(−E(x)) / Z on a box, with Z by the midpoint rule."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_score.metrics.likelihood.estimate import LikelihoodEstimate


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
