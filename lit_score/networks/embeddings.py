"""Time embeddings: (B,) float times -> (B, dim) features.

Networks receive the noise conditioning ``process.c_noise(t)`` chosen by the score boundary
(999·t for VP, DDPM's step index, log σ for VE, ¼ ln σ for EDM); each embedding documents the range it suits.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lit_score.checks import check_number


class SinusoidalEmbedding(nn.Module):
    """Transformer positional embedding of a real time (Vaswani et al. 2017; as used by Ho et al. 2020).

    ``[sin(κ·t·ω_k), cos(κ·t·ω_k)]`` with ω_k = max_period^(-k / (dim/2)), k = 0 … dim/2 − 1, and κ = ``time_scale``.
    The networks receive the process's noise conditioning ``c_noise(t)`` (999·t for VP, DDPM's integer
    step for the discrete chain, log σ for VE), which is already on the scale the frequencies were chosen
    for, so the default κ is 1.

    Args:
        dim: output width (even).
        max_period: longest period of the geometric frequency ladder.
        time_scale: factor κ > 0 applied to ``t`` before embedding.
    """

    freqs: Tensor

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1.0) -> None:
        super().__init__()
        check_number("time_scale", time_scale, gt=0.0)
        if dim % 2:
            raise ValueError(f"SinusoidalEmbedding needs an even dim, got {dim}")
        self.dim = dim
        self.max_period = max_period
        self.time_scale = time_scale
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed times ``t`` of shape (B,) into (B, dim)."""
        args = torch.outer(t.to(self.freqs.dtype) * self.time_scale, self.freqs)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class FourierEmbedding(nn.Module):
    """Random Gaussian Fourier features ``[sin(2π W κ·t), cos(2π W κ·t)]``, W ~ N(0, scale²) (Song et al. 2021,
    NCSN++), κ = ``time_scale``.

    W is drawn once at construction and kept as a (persistent, non-trainable) buffer so that checkpoints
    restore it; following Tancik et al. 2020 / NCSN++, it suits inputs of order one (t ∈ [0, 1] or log σ).

    Args:
        dim: output width (even); dim/2 random frequencies.
        scale: standard deviation of the frequencies W.
        time_scale: factor κ > 0 applied to ``t`` before embedding.
    """

    W: Tensor

    def __init__(self, dim: int, scale: float = 16.0, time_scale: float = 1.0) -> None:
        super().__init__()
        check_number("time_scale", time_scale, gt=0.0)
        if dim % 2:
            raise ValueError(f"FourierEmbedding needs an even dim, got {dim}")
        self.dim = dim
        self.scale = scale
        self.time_scale = time_scale
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """Embed times ``t`` of shape (B,) into (B, dim)."""
        args = 2 * math.pi * torch.outer(t.to(self.W.dtype) * self.time_scale, self.W)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class LabelEmbedding(nn.Module):
    """Class labels (B,) -> (B, dim) features, with one extra learned "no label" row (the null condition).

    A label < 0 (``NULL_LABEL``) or a missing label (``y=None``) selects the null row, which is what classifier-free
    guidance (Ho & Salimans 2022) evaluates as the unconditional model; training drops labels to it with some
    probability.

    Args:
        num_classes: K; labels are 0 … K − 1.
        dim: output width (the width of the time embedding it is added to).
        init: ``normal`` (N(0, 1), ``nn.Embedding``'s default, as guided-diffusion's ``label_emb`` added to the time
            embedding: every class is distinct from the first step) or ``zeros`` (the conditional network starts as
            its unconditional counterpart, as a projection head of an energy wants). A digits DDPM with zero rows
            still sampled at chance class accuracy after 650 steps (rows of magnitude 0.07 against a time embedding of
            order 1); with N(0, 1) rows the labels act from the start.
    """

    def __init__(self, num_classes: int, dim: int, init: str = "normal") -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if init not in ("normal", "zeros"):
            raise ValueError(f"unknown init {init!r}: use normal or zeros")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)  # N(0, 1) rows
        if init == "zeros":
            nn.init.zeros_(self.table.weight)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """(B, dim) features of labels ``y`` (B,) (None: all null)."""
        if y is None:
            index = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            # labels ≥ K are refused where they enter (set_condition, the data's classes at setup), not here: a check
            # per forward would sync the host at every network evaluation
            y = torch.broadcast_to(torch.as_tensor(y, device=device), (batch,)).long()
            index = torch.where(y < 0, torch.full_like(y, self.num_classes), y)
        return self.table(index)


def label_features(embed: LabelEmbedding | None, y: Tensor | None, batch: int, device) -> Tensor | None:
    """The label embedding of ``y`` for a network with ``embed`` (None for an unconditional network, which refuses
    labels in one line)."""
    if embed is None:
        if y is not None:
            raise ValueError("this network is unconditional (num_classes 0): build it with num_classes > 0 to take"
                             " class labels")
        return None
    return embed(y, batch, device)


#: the label that means "no condition" (the null token of classifier-free guidance)
NULL_LABEL = -1


def timestep_embedding(kind: Literal["positional", "fourier"], dim: int, time_scale: float = 1.0) -> nn.Module:
    """Build the time embedding named by ``kind`` with each class's paper defaults, applied to κ·t, κ = ``time_scale``.

    A network's ``time_scale`` κ (MLP, UNet) scales the conditioning value c_noise(t) it receives (default 1: as it
    is; a one-time network's weights loaded into a two-time one, :func:`~lit_score.networks.load_one_time_weights`,
    give its outputs only with the same κ, which the weights do not record). 1e-3 turns the interpolant's 1000·t into
    t itself, the time MeanFlow's reference embeds: MeanFlow's target differentiates the network in t (a JVP), and
    frequencies a thousand times faster in t make that derivative, and the target, noise (measured in
    lit_score/losses/meanflow.py)."""
    if kind == "positional":
        return SinusoidalEmbedding(dim, time_scale=time_scale)
    if kind == "fourier":
        return FourierEmbedding(dim, time_scale=time_scale)
    raise ValueError(f"unknown time embedding {kind!r}; expected 'positional' or 'fourier'")
