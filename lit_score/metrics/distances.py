"""Two-sample distances between sample sets, and the data-vs-data floor they are judged against.

Inputs are (n, ...) sample sets, flattened to (n, D) and compared in float64. A generative model (or a
sampler given the exact score) reproduces a distribution when its median distance to fresh reference draws
is within a small factor (2x in the tests) of the median distance between two reference draws.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from torch import Tensor

SampleFn = Callable[[int, torch.Generator | None], Tensor]
Distance = Callable[[Tensor, Tensor], Tensor]


def _flat(x: Tensor) -> Tensor:
    return rearrange(x, "n ... -> n (...)").double()


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 1000) -> Tensor:
    """Median pairwise Euclidean distance in the pooled sample (at most ``max_points`` from each set)."""
    z = torch.cat([_flat(x)[:max_points], _flat(y)[:max_points].to(x.device)])
    d = torch.cdist(z, z)
    i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    return d[i, j].median()


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None, unbiased: bool = True) -> Tensor:
    """MMD^2 (Gretton et al. 2012, eq. 3 unbiased / eq. 5 biased) with a sum of RBF kernels exp(-|a-b|^2 / (2 h^2)).

    Default bandwidths: the median heuristic h_med times (0.5, 1, 2). The unbiased estimate is centred on
    the true MMD^2 (so it can be negative and its data-vs-data floor is ~0); the biased V-statistic is >= 0,
    is 0 for y = x and has a positive floor, which is what a "within 2x the floor" comparison needs.
    """
    x, y = _flat(x), _flat(y).to(x.device)
    n, m = len(x), len(y)
    if unbiased and (n < 2 or m < 2):
        raise ValueError("the unbiased MMD needs at least two samples in each set")
    if bandwidths is None:
        h_med = median_bandwidth(x, y)
        h = h_med * torch.tensor([0.5, 1.0, 2.0], dtype=x.dtype, device=x.device)
    else:
        h = torch.as_tensor(bandwidths, dtype=x.dtype, device=x.device)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = rearrange(torch.cdist(a, b) ** 2, "n m -> n m 1")
        return torch.exp(-d2 / (2 * h**2)).sum(dim=-1)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    if not unbiased:
        return k_xx.mean() + k_yy.mean() - 2 * k_xy.mean()
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return term_xx + term_yy - 2 * k_xy.mean()


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013), V-statistic: 0 for y = x."""
    x, y = _flat(x), _flat(y).to(x.device)
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Linearly interpolated quantiles of sorted columns (n, P) at ``levels`` in (0, 1): (L, P)."""
    n = sorted_values.shape[0]
    position = (levels * n - 0.5).clamp(0, n - 1)
    lo = position.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = rearrange(position - lo, "l -> l 1")
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def sliced_wasserstein(
    x: Tensor, y: Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> Tensor:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random unit directions of W2^2 of the projections.

    W2 in 1-D compares sorted samples; for n != m both quantile functions are interpolated at the
    max(n, m) mid-point levels (i + 1/2) / max(n, m).
    """
    x, y = _flat(x), _flat(y).to(x.device)
    device = generator.device if generator is not None else x.device
    theta = torch.randn(x.shape[1], num_projections, generator=generator, device=device, dtype=x.dtype)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, py = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
    if len(x) != len(y):
        size = max(len(x), len(y))
        levels = (torch.arange(size, dtype=x.dtype, device=x.device) + 0.5) / size
        px, py = _quantiles(px, levels), _quantiles(py, levels)
    return ((px - py) ** 2).mean().sqrt()


def data_floor(
    sample_fn: SampleFn,
    n: int,
    distance: Distance,
    num_draws: int = 5,
    generator: torch.Generator | None = None,
) -> float:
    """Median ``distance`` between two independent draws of ``n`` samples from ``sample_fn(n, generator)``."""
    values = [float(distance(sample_fn(n, generator), sample_fn(n, generator))) for _ in range(num_draws)]
    return statistics.median(values)


def median_distance(
    samples: Tensor,
    reference_fn: SampleFn,
    n: int,
    distance: Distance,
    num_draws: int = 5,
    generator: torch.Generator | None = None,
) -> float:
    """Median ``distance`` from ``samples`` to ``num_draws`` independent reference draws of ``n`` samples each."""
    values = [float(distance(samples, reference_fn(n, generator))) for _ in range(num_draws)]
    return statistics.median(values)


def _sliced_w2_fixed(x: Tensor, y: Tensor) -> Tensor:
    """Sliced W2 with the same 256 projections every call (seed 0), so a distance and its floor see one metric."""
    return sliced_wasserstein(x, y, num_projections=256, generator=torch.Generator().manual_seed(0))


#: the two-sample distances reported for toy / tabular data (MMD as the biased V-statistic: its floor is positive)
DISTANCES: dict[str, Distance] = {
    "energy_distance": energy_distance,
    "mmd": lambda x, y: mmd(x, y, unbiased=False),
    "sliced_wasserstein": _sliced_w2_fixed,
}


def distance_floors(
    reference_fn: SampleFn, n: int, num_draws: int = 5, seed: int = 1, distances: dict[str, Distance] | None = None
) -> dict[str, float]:
    """The data-vs-data floor of every distance at n: the median distance between two independent reference draws of
    n samples, over ``num_draws`` pairs drawn from a generator seeded ``seed`` (so it can be computed once, cached)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: data_floor(reference_fn, n, distance, num_draws, generator)
            for name, distance in (distances or DISTANCES).items()}


def distance_report(
    samples: Tensor,
    reference_fn: SampleFn,
    num_draws: int = 5,
    seed: int = 0,
    distances: dict[str, Distance] | None = None,
    floors: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Every distance from ``samples`` (n, ...) to fresh reference draws of the same n (median over ``num_draws``
    draws from a generator seeded ``seed``), beside its floor (:func:`distance_floors` with seed ``seed + 1``, or the
    ``floors`` given, e.g. cached from an earlier call) and their ratio."""
    n = samples.shape[0]
    distances = distances or DISTANCES
    floors = floors if floors is not None else distance_floors(reference_fn, n, num_draws, seed + 1, distances)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, distance in distances.items():
        value = median_distance(samples, reference_fn, n, distance, num_draws, generator)
        floor = floors[name]
        ratio = value / floor if floor > 0 and math.isfinite(value) else math.nan
        out[name] = {"value": value, "floor": floor, "ratio": ratio}
    return out
