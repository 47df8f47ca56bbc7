"""LightningDataModules and samplers of the built-in data: toy 2-D sets, analytic mixtures, digits, images."""

from lit_score.data.base import GenerativeDataModule
from lit_score.data.digits import Digits
from lit_score.data.images import ImageData
from lit_score.data.mixture import GaussianMixture, GaussianMixtureDistribution, NoisedMixture
from lit_score.data.reflow import Coupling, ReflowPairs
from lit_score.data.toy import (
    TOY_DISTRIBUTIONS,
    Toy2D,
    checkerboard,
    eight_gaussians,
    moons,
    pinwheel,
    rings,
    swiss_roll,
)

__all__ = [
    "TOY_DISTRIBUTIONS",
    "Coupling",
    "Digits",
    "GaussianMixture",
    "GaussianMixtureDistribution",
    "GenerativeDataModule",
    "ImageData",
    "NoisedMixture",
    "ReflowPairs",
    "Toy2D",
    "checkerboard",
    "eight_gaussians",
    "moons",
    "pinwheel",
    "rings",
    "swiss_roll",
]
