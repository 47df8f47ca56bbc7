"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), scaled to [-1, 1]."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from lit_score.checks import check_number
from lit_score.data.base import GenerativeDataModule, TensorData, num_held_out
from lit_score.metrics.digits_extractor import DigitsClassifier, default_weights_path, preprocess


def load_digit_labels() -> Tensor:
    """The class (0 … 9) of each of the 1,797 digits, in the order of :func:`load_digit_images`."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target).long()


def load_digit_images(image_size: int = 8) -> Tensor:
    """All 1,797 digits as (N, 1, image_size, image_size) float32 in [-1, 1], bilinearly resized if needed."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()  # (N, 8, 8), values 0..16
    x = rearrange(images / 16 * 2 - 1, "n h w -> n 1 h w")
    if image_size != x.shape[-1]:
        antialias = image_size < x.shape[-1]  # only downsampling needs a low-pass filter
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=antialias)
    return x.clamp(-1, 1)


@functools.cache
def _digits_classifier():
    """The shipped digits classifier, loaded once per process (eval mode)."""

    classifier = DigitsClassifier()
    classifier.load_state_dict(torch.load(default_weights_path(), map_location="cpu", weights_only=True))
    return classifier.eval()


class Digits(GenerativeDataModule):
    """The sklearn 8x8 digits as (1, image_size, image_size) images in [-1, 1] with a random held-out split;
    ``labels: true`` yields (x, digit) batches (10 classes)."""

    def __init__(
        self,
        image_size: int = 8,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        flip: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_size=float(val_fraction), seed=seed,
                         labels=labels)
        check_number("image_size", image_size, ge=1, integer=True)
        self.save_hyperparameters()
        self.image_size = image_size
        self.flip = flip

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(1, image_size, image_size)."""
        return (1, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and split off ``val_fraction`` of them at random (fixed by ``seed``)."""
        if self.train_dataset is not None:
            return
        x = load_digit_images(self.image_size)
        order = torch.randperm(x.shape[0], generator=self._generator())
        n_val = num_held_out(self.val_size, x.shape[0])
        train, val = x[order[n_val:]], x[order[:n_val]]
        if self.labels:
            y = load_digit_labels()
            self.train_labels, self.val_labels = y[order[n_val:]], y[order[:n_val]]
        self.train_dataset = TensorData(train, flip=self.flip)
        self.val_dataset = TensorData(val)
        self.reference_dataset = TensorData(train)

    @property
    def num_classes(self) -> int:
        """The ten digits."""
        return 10

    @property
    def can_classify(self) -> bool:
        return True

    def class_log_probs(self, x: Tensor) -> Tensor:
        """log-softmax of the shipped digits classifier (:mod:`lit_score.metrics.digits_extractor`: the network behind
        the ``digits`` FID features) on images in [-1, 1], resized to its 16×16 as the extractor does."""

        classifier = _digits_classifier()
        u8 = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # as FID sees them
        with torch.no_grad():
            return torch.cat([classifier(preprocess(chunk)).log_softmax(1) for chunk in u8.split(1000)])

    @property
    def default_feature_extractor(self) -> str:
        """``digits-v2``, shipped with lit-score (:mod:`lit_score.metrics.digits_extractor`): a digits classifier with
        an extra "corrupted" class, whose features see broken samples (issue 23); ``digits`` (v1) stays loadable."""
        return "digits-v2"

    @property
    def label(self) -> str:
        return f"Digits-{self.image_size}px-seed{self.seed}-val{self.val_size:g}"
