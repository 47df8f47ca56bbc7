"""The samplers' mixture oracle, shared by their test modules: a 2-D Gaussian mixture whose noised score is exact under
every process, its data-vs-data floor and the distance of samples to it (the statistic of tests/test_samplers_oracle.py:
median energy distance over sets of N against fresh reference draws)."""

from __future__ import annotations

import statistics

import torch

from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.metrics.distances import energy_distance

MIXTURE = GaussianMixtureDistribution(
    torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]]), torch.tensor([0.3, 0.4, 0.25]), torch.tensor([0.3, 0.3, 0.4])
)
N, SETS = 1000, 5


def mixture_floor() -> float:
    """Median energy distance between two independent draws of N, over SETS pairs."""
    generator = torch.Generator().manual_seed(0)
    return statistics.median(float(energy_distance(MIXTURE.sample(N, generator), MIXTURE.sample(N, generator)))
                             for _ in range(SETS))


def distance(samples: torch.Tensor) -> float:
    """Median energy distance of each set of N samples to a fresh reference draw."""
    generator = torch.Generator().manual_seed(3)
    return statistics.median(float(energy_distance(part, MIXTURE.sample(N, generator))) for part in samples.split(N))
