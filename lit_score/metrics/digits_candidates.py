"""Candidate digits feature spaces for Fréchet distances (issue 23), each a small network on (B, 1, 16, 16) in [-1, 1].

Every candidate maps images to a feature vector; :func:`features` names how. The benchmark
``benchmarks/digits_features.py`` trains each (``python -m lit_score.metrics.train_digits_features --candidate``)
and compares their disturbance curves; the winner is shipped as the ``digits-v2`` extractor.

| candidate | network | training | features |
|---|---|---|---|
| ``classifier`` | the v1 :class:`DigitsClassifier` | 10 classes | penultimate 64-d (v1's FID layer) |
| ``classifier_layers`` | the v1 classifier | 10 classes | mean-pooled conv blocks 1–3 and penultimate, concatenated |
| ``autoencoder`` | the classifier's body + a decoder | reconstruct x | the 64-d code |
| ``denoiser`` | the same autoencoder | reconstruct x from x + σ·ε | the 64-d code |
| ``corrupt_class`` | an 11-class classifier | 10 digits + "corrupted" | penultimate 64-d |
| ``corrupt_class_layers`` | the 11-class classifier | 10 digits + "corrupted" | layers concatenated as above |
"""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor, nn

from lit_score.metrics.digits_extractor import FEATURE_DIM, IMAGE_SIZE, NUM_CLASSES, DigitsClassifier, _conv_block

CANDIDATES = ("classifier", "classifier_layers", "autoencoder", "denoiser", "corrupt_class", "corrupt_class_layers")


class DigitsAutoencoder(nn.Module):
    """The classifier's conv body as encoder (64-d code after SiLU) and a mirrored decoder back to 16×16."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = DigitsClassifier().body  # (B, 64)
        self.decoder = nn.Sequential(
            nn.Linear(FEATURE_DIM, 64 * (IMAGE_SIZE // 4) ** 2),
            nn.Unflatten(1, (64, IMAGE_SIZE // 4, IMAGE_SIZE // 4)),  # (B, 64, 4, 4)
            nn.Upsample(scale_factor=2), _conv_block(64, 64, stride=1),  # (B, 64, 8, 8)
            nn.Upsample(scale_factor=2), _conv_block(64, 32, stride=1),  # (B, 32, 16, 16)
            nn.Conv2d(32, 1, kernel_size=3, padding=1), nn.Tanh(),  # (B, 1, 16, 16)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def classifier_layers(classifier: DigitsClassifier, x: Tensor) -> Tensor:
    """Mean-pooled activations of the three conv blocks (32 + 64 + 64) and the penultimate 64: (B, 224)."""
    pooled, h = [], x
    for i, layer in enumerate(classifier.body):
        h = layer(h)
        if i < 3:  # the conv blocks
            pooled.append(reduce(h, "b c h w -> b c", "mean"))
    return torch.cat([*pooled, h], dim=1)


def build(candidate: str) -> nn.Module:
    """The untrained network of a candidate."""
    if candidate in ("classifier", "classifier_layers"):
        return DigitsClassifier()
    if candidate in ("autoencoder", "denoiser"):
        return DigitsAutoencoder()
    if candidate in ("corrupt_class", "corrupt_class_layers"):
        return DigitsClassifier(NUM_CLASSES + 1)
    raise ValueError(f"unknown candidate {candidate!r}: choose from {', '.join(CANDIDATES)}")


def features(candidate: str, model: nn.Module, x: Tensor) -> Tensor:
    """The candidate's feature vectors of images x (B, 1, 16, 16) in [-1, 1]."""
    if candidate.endswith("_layers"):
        return classifier_layers(model, x)
    if candidate in ("autoencoder", "denoiser"):
        return model.encoder(x)
    return model.body(x)
