"""Tests of the two-sample distances and the data-vs-data floor helpers."""

from __future__ import annotations

import functools

import pytest
import torch

from lit_score.data import GaussianMixtureDistribution, moons
from lit_score.metrics import data_floor, energy_distance, median_distance, mmd, sliced_wasserstein

biased_mmd = functools.partial(mmd, unbiased=False)
DISTANCES = [mmd, biased_mmd, energy_distance, sliced_wasserstein]
IDS = ["mmd", "biased_mmd", "energy", "sliced_w2"]


def _gaussian(n, generator, shift=0.0):
    return torch.randn(n, 2, generator=generator) + shift


@pytest.mark.parametrize("distance", DISTANCES, ids=IDS)
def test_same_distribution_is_much_closer_than_shifted(distance):
    g = torch.Generator().manual_seed(0)
    x, y, shifted = _gaussian(400, g), _gaussian(400, g), _gaussian(400, g, shift=1.0)
    same, far = float(distance(x, y)), float(distance(x, shifted))
    # Squared distances (MMD^2, energy) shrink like 1/n between same-distribution draws, SW like 1/sqrt(n).
    ratio = 3 if distance is sliced_wasserstein else 10
    assert far > 0.1 and abs(same) < far / ratio


@pytest.mark.parametrize("distance", [biased_mmd, energy_distance, sliced_wasserstein], ids=IDS[1:])
def test_distance_of_a_set_to_itself_is_zero(distance):
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    assert float(distance(x, x)) == pytest.approx(0.0, abs=1e-12)


def test_flattens_inputs_and_accepts_different_sizes():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 1, 2, 2, generator=g), torch.randn(150, 4, generator=g)
    for distance in DISTANCES:
        assert torch.isfinite(distance(x, y))


def test_sliced_wasserstein_of_a_1d_shift_is_the_shift():
    # In 1-D every unit direction is +-1, so W2 between x and x + c is exactly |c|, also for unequal sizes.
    x = torch.randn(300, 1, generator=torch.Generator().manual_seed(0))
    assert float(sliced_wasserstein(x, x + 0.7, num_projections=8)) == pytest.approx(0.7)
    # Quantile interpolation: a set and the same set with every point repeated have the same distribution.
    grid = torch.linspace(0, 1, 101)[:, None]
    assert float(sliced_wasserstein(grid, grid.repeat(2, 1), num_projections=4)) < 0.01


def test_unbiased_mmd_is_centred_and_biased_is_nonnegative():
    g = torch.Generator().manual_seed(1)
    values = torch.stack([mmd(_gaussian(100, g), _gaussian(100, g)) for _ in range(20)])
    assert values.min() < 0 < values.max() and values.mean().abs() < 0.01
    assert all(float(biased_mmd(_gaussian(100, g), _gaussian(100, g))) >= 0 for _ in range(5))


def test_data_floor_and_median_distance():
    g = torch.Generator().manual_seed(0)
    floor = data_floor(moons, 300, energy_distance, num_draws=5, generator=g)
    assert floor > 0
    same = median_distance(moons(300, g), moons, 300, energy_distance, num_draws=5, generator=g)
    shifted = median_distance(moons(300, g) + 0.5, moons, 300, energy_distance, num_draws=5, generator=g)
    assert same < 2 * floor < shifted


def test_floor_with_mixture_reference_and_sliced_wasserstein():
    dist = GaussianMixtureDistribution.ring()
    g = torch.Generator().manual_seed(0)
    distance = functools.partial(sliced_wasserstein, num_projections=64)
    floor = data_floor(dist.sample, 1000, distance, num_draws=5, generator=g)
    wrong = GaussianMixtureDistribution.ring(radius=2.5).sample(1000, g)
    assert median_distance(dist.sample(1000, g), dist.sample, 1000, distance, 5, g) < 2 * floor
    assert median_distance(wrong, dist.sample, 1000, distance, 5, g) > 2 * floor
