"""Tests of lit_score.data: toy samplers, the Gaussian-mixture oracle and the datamodules."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lit_score.data import (
    TOY_DISTRIBUTIONS,
    Digits,
    GaussianMixture,
    GaussianMixtureDistribution,
    ImageData,
    Toy2D,
)


class VPLinear:
    """VP SDE with linear beta 0.1 -> 20: log alpha = -t^2 (b1 - b0) / 4 - t b0 / 2, sigma = sqrt(1 - alpha^2)."""

    def alpha(self, t):
        return torch.exp(-0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1)

    def sigma(self, t):
        return torch.sqrt(1 - self.alpha(t) ** 2)


class VE:
    """VE SDE with geometric sigma 0.01 -> 50."""

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return 0.01 * (50 / 0.01) ** t


class Clean:
    """alpha = 1, sigma = 0: the noised marginal is the clean distribution."""

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return torch.zeros_like(t)


# ----------------------------------------------------------------------------- toy samplers


@pytest.mark.parametrize("name", sorted(TOY_DISTRIBUTIONS))
def test_toy_sampler_shape_determinism_and_scale(name):
    fn = TOY_DISTRIBUTIONS[name]
    x = fn(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32
    assert torch.equal(x, fn(20000, torch.Generator().manual_seed(0)))
    assert not torch.equal(x[:100], fn(100, torch.Generator().manual_seed(1)))
    # Centred with mean per-coordinate variance 1 (the constants are exact moments; 20k samples here).
    assert x.mean(0).abs().max() < 0.05
    assert abs(x.var(0).mean().item() - 1) < 0.05


# ----------------------------------------------------------------------------- mixture oracle


def test_mixture_log_prob_integrates_to_one_2d():
    grid = torch.linspace(-8, 8, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    cell = (grid[1] - grid[0]) ** 2
    for dist in (GaussianMixtureDistribution.ring(8, 2.0, 0.3),
                 GaussianMixtureDistribution.random(4, 2, torch.Generator().manual_seed(0), scale=1.5)):
        total = dist.log_prob(points).exp().sum() * cell
        assert total.item() == pytest.approx(1.0, abs=1e-3)


def test_mixture_log_prob_integrates_to_one_1d():
    dist = GaussianMixtureDistribution(torch.tensor([[-1.0], [0.5], [3.0]]), torch.tensor([0.3, 1.0, 0.5]),
                                       torch.tensor([1.0, 2.0, 1.0]))
    x = torch.linspace(-12, 14, 20001, dtype=torch.float64)[:, None]
    assert (dist.log_prob(x).exp().sum() * (x[1, 0] - x[0, 0])).item() == pytest.approx(1.0, abs=1e-6)


def test_single_gaussian_log_prob_matches_torch_normal():
    dist = GaussianMixtureDistribution(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]]), torch.ones(1))
    x = torch.randn(7, 2, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor([1.0, -2.0]).double(), torch.tensor([0.5, 2.0]).double())
    torch.testing.assert_close(dist.log_prob(x), normal.log_prob(x).sum(1))


def _autograd_score(log_prob, x):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(log_prob(x).sum(), x)[0]


@pytest.mark.parametrize("shape", [(5, 2), (5, 3), (5, 1, 2, 2)])
@pytest.mark.parametrize("process", [VPLinear(), VE()], ids=["vp", "ve"])
def test_noised_score_is_gradient_of_log_prob(shape, process):
    dim = math.prod(shape[1:])
    dist = GaussianMixtureDistribution.random(3, dim, torch.Generator().manual_seed(1))
    noised = dist.noised(process)
    for t_value in (1e-3, 0.1, 0.5, 1.0):
        t = torch.full((shape[0],), t_value, dtype=torch.float64)
        x = process.alpha(t)[:, None] * dist.sample(shape[0], torch.Generator().manual_seed(2)).double()
        x = (x + process.sigma(t)[:, None] * torch.randn(shape[0], dim, dtype=torch.float64)).reshape(shape)
        score = noised(x, t)
        assert score.shape == x.shape and score.dtype == torch.float64
        torch.testing.assert_close(score, _autograd_score(functools.partial(noised.log_prob, t=t), x))
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(dist.score(x), _autograd_score(dist.log_prob, x))


def test_noised_with_zero_noise_equals_clean():
    dist = GaussianMixtureDistribution.ring(5, 1.5, 0.4)
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    noised = dist.noised(Clean())
    torch.testing.assert_close(noised.log_prob(x, t), dist.log_prob(x))
    torch.testing.assert_close(noised.score(x, t), dist.score(x))
    torch.testing.assert_close(noised.denoise(x, t), x)


def test_denoise_and_eps_match_single_gaussian_posterior():
    # For one component, E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x - alpha mu).
    mu, s = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.7, 1.3], dtype=torch.float64)
    dist = GaussianMixtureDistribution(mu[None], s[None], torch.ones(1))
    process, t = VPLinear(), torch.tensor([0.05, 0.3, 0.7], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
    expected = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x - alpha * mu)
    noised = dist.noised(process)
    torch.testing.assert_close(noised.denoise(x, t), expected)
    torch.testing.assert_close(alpha * noised.denoise(x, t) + sigma * noised.eps(x, t), x)


def test_noised_accepts_scalar_time_and_float32():
    noised = GaussianMixtureDistribution.ring().noised(VE())
    x = torch.randn(4, 1, 1, 2)
    score = noised(x, 0.3)
    assert score.shape == x.shape and score.dtype == torch.float32
    torch.testing.assert_close(score, noised(x, torch.full((4,), 0.3)))


def test_mixture_samples_and_noised_samples_have_exact_moments():
    dist = GaussianMixtureDistribution(torch.tensor([[2.0, -1.0]]), torch.tensor([0.5]), torch.ones(1))
    g = torch.Generator().manual_seed(0)
    x = dist.sample(20000, g)
    assert x.shape == (20000, 2)
    torch.testing.assert_close(x.mean(0), torch.tensor([2.0, -1.0]), atol=0.02, rtol=0)
    process, t = VPLinear(), torch.tensor(0.3)
    xt = dist.noised(process).sample(20000, t, g)
    alpha, sigma = process.alpha(t), process.sigma(t)
    torch.testing.assert_close(xt.mean(0), alpha * torch.tensor([2.0, -1.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(xt.var(0), (alpha**2 * 0.25 + sigma**2).expand(2), atol=0.03, rtol=0)


def test_mixture_factories():
    ring = GaussianMixtureDistribution.ring(k=6, radius=3.0, std=0.1, dim=4)
    assert ring.means.shape == (6, 4) and ring.num_components == 6 and ring.dim == 4
    torch.testing.assert_close(ring.means[:, :2].norm(dim=1), torch.full((6,), 3.0))
    assert torch.all(ring.means[:, 2:] == 0)
    a = GaussianMixtureDistribution.random(3, 5, torch.Generator().manual_seed(0))
    b = GaussianMixtureDistribution.random(3, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a.means, b.means) and a.stds.shape == (3, 5)
    assert a.weights.sum().item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- datamodules


def test_toy2d_datamodule():
    dm = Toy2D("rings", num_samples=1000, val_size=200, batch_size=128)
    assert dm.sample_shape == (2,) and not dm.is_image and dm.data_range == (-math.inf, math.inf)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (128, 2) and batch.dtype == torch.float32
    assert len(dm.val_dataloader().dataset) == 200
    other = Toy2D("rings", num_samples=1000, val_size=200)
    other.setup()
    assert torch.equal(dm.train_dataset.data, other.train_dataset.data)
    assert not torch.equal(dm.train_dataset.data[:200], dm.val_dataset.data)
    assert dm.reference_samples(50, torch.Generator().manual_seed(0)).shape == (50, 2)
    with pytest.raises(ValueError, match="unknown toy"):
        Toy2D("spirals")


def test_gaussian_mixture_datamodule():
    dm = GaussianMixture(num_components=4, dim=3, radius=2.0, std=0.2, num_samples=500, val_size=100, batch_size=64)
    assert dm.sample_shape == (3,) and isinstance(dm.distribution, GaussianMixtureDistribution)
    assert next(iter(dm.train_dataloader())).shape == (64, 3)
    assert dm.reference_samples(10).shape == (10, 3)


@pytest.mark.parametrize("image_size", [8, 16])
def test_digits(image_size):
    dm = Digits(image_size=image_size, batch_size=32)
    assert dm.sample_shape == (1, image_size, image_size) and dm.is_image and dm.data_range == (-1.0, 1.0)
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 1797
    assert len(dm.val_dataset) == round(0.1 * 1797)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (32, 1, image_size, image_size) and batch.dtype == torch.float32
    data = dm.train_dataset.data
    assert data.min() >= -1 and data.max() <= 1 and data.min() == -1 and data.max() > 0.9
    assert not dm.train_dataset.flip
    assert dm.reference_samples(5, torch.Generator().manual_seed(0)).shape == (5, 1, image_size, image_size)


def _write_pngs(folder, count, size, mode):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1)])
def test_image_folder(tmp_path, mode, channels):
    _write_pngs(tmp_path / "nested" / "deeper", 6, (12, 10), mode)
    dm = ImageData(str(tmp_path), dataset="folder", batch_size=4, num_workers=0)
    assert dm.sample_shape == (channels, 10, 10) and dm.random_flip  # native: shorter side, first image's mode
    dm = ImageData(str(tmp_path), dataset="folder", image_size=8, batch_size=4, num_workers=0, val_size=2)
    assert dm.sample_shape == (channels, 8, 8)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, channels, 8, 8) and batch.min() >= -1 and batch.max() <= 1
    assert next(iter(dm.val_dataloader())).shape == (2, channels, 8, 8)
    assert dm.reference_samples(3).shape == (3, channels, 8, 8)


def test_image_folder_converts_channels(tmp_path):
    _write_pngs(tmp_path, 3, (8, 8), "L")
    dm = ImageData(str(tmp_path), channels=3, num_workers=0, batch_size=2)
    assert dm.sample_shape == (3, 8, 8)
    assert next(iter(dm.train_dataloader())).shape == (2, 3, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageData(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageData(str(tmp_path / "empty"))


def test_torchvision_dataset_shapes_and_missing_root(tmp_path):
    assert ImageData(str(tmp_path), dataset="mnist").sample_shape == (1, 28, 28)
    assert not ImageData(str(tmp_path), dataset="fashion_mnist").random_flip
    assert ImageData(str(tmp_path), dataset="celeba").sample_shape == (3, 64, 64)
    dm = ImageData(str(tmp_path), dataset="cifar10", num_workers=0)
    assert dm.sample_shape == (3, 32, 32) and dm.random_flip
    with pytest.raises(FileNotFoundError, match=f"no CIFAR-10 found under {re.escape(str(tmp_path))}.*download true"):
        dm.setup("fit")
