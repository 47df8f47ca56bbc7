"""Image disturbances of Heusel et al. 2017 (FID paper, Sec. 4 / Fig. 1), at increasing levels, for testing metrics.

A feature space is fit for Fréchet distances when FID rises monotonically with each disturbance's level. Every
function takes images ``x`` (B, C, H, W) in [-1, 1] (the data range), a ``level`` (0 leaves x unchanged) and an
explicit ``generator``, and returns disturbed images in [-1, 1]; none touches the global RNG.

| name | level | what it does |
|---|---|---|
| ``gaussian_noise`` | σ | x + σ·ε on every image |
| ``salt_and_pepper`` | p | a fraction p of the pixels of every image set to −1 or +1 |
| ``speckle`` | f | a fraction f of the images replaced by the same digits under heavy pixel noise (σ = 0.5) |
| ``blur`` | σ_px | Gaussian blur of width σ_px pixels on every image |
| ``swirl`` | s | skimage-style swirl: rotation by s·exp(−r / ρ) around the centre, ρ = H/2 |
| ``elastic`` | α | Simard et al. 2003 elastic warp: a random displacement field (std α pixels), smoothed |
| ``pure_noise`` | f | a fraction f of the images replaced by uniform noise images |
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

Disturbance = Callable[[Tensor, float, torch.Generator], Tensor]

SPECKLE_SIGMA = 0.5  # the "heavy pixel noise" of a broken sample


def _fraction_mask(n: int, fraction: float, generator: torch.Generator) -> Tensor:
    """A (n,) bool mask with exactly round(fraction · n) True entries at random places."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: round(fraction * n)]] = True
    return mask


def gaussian_noise(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    return (x + level * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


def salt_and_pepper(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    hit = torch.rand(x.shape, generator=generator) < level
    value = torch.where(torch.rand(x.shape, generator=generator) < 0.5, -1.0, 1.0)
    return torch.where(hit, value, x)


def speckle(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    mask = rearrange(_fraction_mask(len(x), level, generator), "b -> b 1 1 1")
    return torch.where(mask, gaussian_noise(x, SPECKLE_SIGMA, generator), x)


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def _smooth(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian filter of (B, C, H, W), reflecting at the border."""
    k = _gaussian_kernel(sigma)
    r, c = len(k) // 2, x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect" if r < x.shape[-1] else "replicate"),
                 k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect" if r < x.shape[-2] else "replicate"),
                    k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    return x if level <= 0 else _smooth(x, level)


def _identity_grid(x: Tensor) -> Tensor:
    """(B, H, W, 2) sampling grid of ``grid_sample`` (align_corners=False) that returns x unchanged."""
    b, _, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(b, 2, 3)
    return F.affine_grid(theta, [b, 1, h, w], align_corners=False)


def _warp(x: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1  # background −1


def swirl(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    grid = _identity_grid(x)  # coordinates in [-1, 1]: radius 1 is half the image
    gx, gy = grid[..., 0], grid[..., 1]
    r = torch.sqrt(gx**2 + gy**2)
    theta = torch.atan2(gy, gx) + level * torch.exp(-r / 1.0)  # rho = H/2 in pixels, 1 in grid units
    return _warp(x, torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1))


def elastic(x: Tensor, level: float, generator: torch.Generator, smoothness: float = 2.0) -> Tensor:
    b, _, h, w = x.shape
    field = _smooth(torch.randn(b, 2, h, w, generator=generator), smoothness)
    field = field / field.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) * level  # std of `level` pixels
    field = field * torch.tensor([2 / w, 2 / h]).view(1, 2, 1, 1)  # pixels → grid units
    return _warp(x, _identity_grid(x) + rearrange(field, "b two h w -> b h w two"))


def pure_noise(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    mask = rearrange(_fraction_mask(len(x), level, generator), "b -> b 1 1 1")
    return torch.where(mask, torch.rand(x.shape, generator=generator) * 2 - 1, x)


#: every disturbance with the levels the benchmark and the tests sweep (increasing; 0 is the clean split)
DISTURBANCES: dict[str, tuple[Disturbance, tuple[float, ...]]] = {
    "gaussian_noise": (gaussian_noise, (0.05, 0.1, 0.2, 0.4)),
    "salt_and_pepper": (salt_and_pepper, (0.01, 0.03, 0.1, 0.25)),
    "speckle": (speckle, (0.05, 0.1, 0.25, 0.5)),
    "blur": (blur, (0.5, 0.75, 1.0, 1.5)),
    "swirl": (swirl, (0.1, 0.2, 0.4, 0.8)),
    "elastic": (elastic, (0.25, 0.5, 1.0, 2.0)),
    "pure_noise": (pure_noise, (0.05, 0.1, 0.25, 0.5)),
}


def disturb(x: Tensor, name: str, level: float, seed: int = 0) -> Tensor:
    """``DISTURBANCES[name]`` at ``level`` with a generator seeded ``seed`` (level 0: x itself)."""
    if level == 0:
        return x
    return DISTURBANCES[name][0](x, level, torch.Generator().manual_seed(seed))
