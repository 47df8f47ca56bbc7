"""Two-dimensional toy distributions (FFJORD / sklearn style) and the ``Toy2D`` datamodule.

Every sampler is ``(n, generator) -> (n, 2)`` float32, uses torch's RNG only (so torch seeds fix it), and
is centred with mean per-coordinate variance 1. The centring and scaling constants are the exact
moments of each construction, derived in the comments, not estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.data.base import GenerativeDataModule, TensorData

ToyName = Literal["swissroll", "moons", "rings", "checkerboard", "8gaussians", "pinwheel"]


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator)


def _randn(*shape: int, generator: torch.Generator | None) -> Tensor:
    return torch.randn(*shape, generator=generator)


def _standardise(x: Tensor, mean: tuple[float, float], var: float) -> Tensor:
    """Centre ``x`` (n, 2) and divide by the square root of its mean per-coordinate variance."""
    return ((x - torch.tensor(mean, dtype=x.dtype)) / math.sqrt(var)).float()


def swiss_roll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Swiss roll: (t cos t, t sin t) + N(0, 0.5^2), t ~ U[1.5 pi, 4.5 pi] (sklearn's ``make_swiss_roll``)."""
    a, b, noise = 1.5 * math.pi, 4.5 * math.pi, 0.5
    t = a + (b - a) * _rand(n, generator)
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + noise * _randn(n, 2, generator=generator)
    # E[t cos t] = [t sin t + cos t]_a^b / (b - a) = 2,  E[t sin t] = [sin t - t cos t]_a^b / (b - a) = 2 / (3 pi),
    # E[|x|^2] = E[t^2] + 2 noise^2 with E[t^2] = (b^3 - a^3) / (3 (b - a)).
    mean = (2.0, 2.0 / (3 * math.pi))
    second_moment = (b**3 - a**3) / (3 * (b - a)) + 2 * noise**2
    return _standardise(x, mean, (second_moment - mean[0] ** 2 - mean[1] ** 2) / 2)


def moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles + N(0, 0.1^2) (sklearn's ``make_moons``), each moon with probability 1/2."""
    noise = 0.1
    theta = math.pi * _rand(n, generator)
    inner = _rand(n, generator) < 0.5
    outer_xy = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    inner_xy = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(inner[:, None], inner_xy, outer_xy) + noise * _randn(n, 2, generator=generator)
    # With E[cos] = 0, E[cos^2] = E[sin^2] = 1/2, E[sin] = 2/pi over theta ~ U[0, pi]:
    # mean (1/2, 1/4), Var x = 3/4 + noise^2, Var y = 9/16 - 1/pi + noise^2.
    return _standardise(x, (0.5, 0.25), (0.75 + 0.5625 - 1 / math.pi) / 2 + noise**2)


def rings(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Four concentric circles of radii 1, 2, 3, 4 (equally likely) + N(0, 0.1^2)."""
    noise, num_rings = 0.1, 4
    radius = 1 + torch.randint(num_rings, (n,), generator=generator).float()
    theta = 2 * math.pi * _rand(n, generator)
    x = radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    x = x + noise * _randn(n, 2, generator=generator)
    # Mean 0; E[|x|^2] = E[r^2] + 2 noise^2 with E[r^2] = (1 + 4 + 9 + 16) / 4.
    mean_r2 = sum(r**2 for r in range(1, num_rings + 1)) / num_rings
    return _standardise(x, (0.0, 0.0), mean_r2 / 2 + noise**2)


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform density on the 8 black squares of a 4 x 4 checkerboard over [-2, 2]^2 (FFJORD)."""
    x1 = 4 * _rand(n, generator) - 2
    x2 = _rand(n, generator) - 2 * torch.randint(2, (n,), generator=generator).float()
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    # Both marginals are U[-2, 2]: mean 0, variance 4^2 / 12.
    return _standardise(torch.stack([x1, x2], dim=1), (0.0, 0.0), 4.0 / 3.0)


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Eight equally weighted Gaussians of std 0.125 with means on the unit circle at angles k pi / 4."""
    return eight_gaussians_with_modes(n, generator)[0]


def eight_gaussians_with_modes(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """:func:`eight_gaussians` and the mode k (0 … 7, at angle k pi / 4) each sample came from (the same draws)."""
    std, k = 0.125, 8
    mode = torch.randint(k, (n,), generator=generator)
    angle = 2 * math.pi * mode.float() / k
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) + std * _randn(n, 2, generator=generator)
    # Mean 0 by symmetry; E[|x|^2] = 1 + 2 std^2.
    return _standardise(x, (0.0, 0.0), 0.5 + std**2), mode


def pinwheel(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Five spiralling arms (FFJORD): radial std 0.3, tangential std 0.1, rate 0.25."""
    radial_std, tangential_std, arms, rate = 0.3, 0.1, 5, 0.25
    arm = torch.randint(arms, (n,), generator=generator).float()
    f = _randn(n, 2, generator=generator) * torch.tensor([radial_std, tangential_std])
    f[:, 0] += 1
    angle = 2 * math.pi * arm / arms + rate * torch.exp(f[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = torch.stack([cos * f[:, 0] - sin * f[:, 1], sin * f[:, 0] + cos * f[:, 1]], dim=1)
    # A rotation keeps |x|^2 = f0^2 + f1^2; the 5-fold symmetry gives mean 0 and isotropic covariance.
    return _standardise(x, (0.0, 0.0), (1 + radial_std**2 + tangential_std**2) / 2)


TOY_DISTRIBUTIONS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "swissroll": swiss_roll,
    "moons": moons,
    "rings": rings,
    "checkerboard": checkerboard,
    "8gaussians": eight_gaussians,
    "pinwheel": pinwheel,
}


#: the toy distributions whose samples have a class (``labels: true``): the mode each came from
TOY_LABELLED: dict[str, tuple[int, Callable[[int, torch.Generator | None], tuple[Tensor, Tensor]]]] = {
    "8gaussians": (8, eight_gaussians_with_modes),
}


class Toy2D(GenerativeDataModule):
    """A fixed training set and a separate validation set drawn from one named 2-D toy distribution (with
    ``labels: true``, for ``8gaussians``, the mode of each sample as its class)."""

    def __init__(
        self,
        name: ToyName = "moons",
        num_samples: int = 20000,
        val_size: int = 2000,
        batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_size=val_size, seed=seed, labels=labels)
        if name not in TOY_DISTRIBUTIONS:
            raise ValueError(f"unknown toy distribution {name!r}; choose one of {sorted(TOY_DISTRIBUTIONS)}")
        check_number("num_samples", num_samples, ge=1, integer=True)
        self.save_hyperparameters()
        self.name = name
        self.num_samples = num_samples
        self.sample_fn = TOY_DISTRIBUTIONS[name]
        self.check_labels()

    @property
    def num_classes(self) -> int:
        """The number of modes of a labelled toy distribution (8 Gaussians: 8), else 0."""
        return TOY_LABELLED[self.name][0] if self.name in TOY_LABELLED else 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Always (2,)."""
        return (2,)

    def setup(self, stage: str | None = None) -> None:
        """Draw the training set, then the validation set, from one generator seeded with ``seed``."""
        generator = self._generator()
        if self.labels:  # the same draws as the unlabelled sampler, with their modes
            labelled = TOY_LABELLED[self.name][1]
            (train, self.train_labels), (val, self.val_labels) = (labelled(self.num_samples, generator),
                                                                  labelled(self.val_size, generator))
        else:
            train = self.sample_fn(self.num_samples, generator)
            val = self.sample_fn(self.val_size, generator)
        self.train_dataset, self.val_dataset = TensorData(train), TensorData(val)
        self.reference_dataset = self.train_dataset

    @property
    def can_classify(self) -> bool:
        return self.name == "8gaussians"

    def class_log_probs(self, x: Tensor) -> Tensor | None:
        """For the 8 Gaussians, the exact posterior over the modes (equal weights and widths): log-softmax of
        −|x − μ_k|²/(2 s²) in the standardised coordinates; None for the distributions without classes."""
        if self.name != "8gaussians":
            return None
        scale = math.sqrt(0.5 + 0.125**2)  # eight_gaussians' standardisation
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        means = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) / scale
        logits = -torch.cdist(x.double().cpu(), means) ** 2 / (2 * (0.125 / scale) ** 2)
        return logits.log_softmax(1)

    @property
    def has_exact_sampler(self) -> bool:
        return True

    @property
    def label(self) -> str:
        return f"Toy2D-{self.name}"

    def reference_samples(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh draws (n, 2) from the distribution itself (independent of the training set)."""
        return self.sample_fn(n, generator)
