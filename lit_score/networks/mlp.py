"""Time-conditioned residual MLP for flat data (B, D): toy 2-D, tabular and analytic mixtures."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.networks.embeddings import LabelEmbedding, label_features, timestep_embedding
from lit_score.networks.two_time import target_time_embedding, target_time_features

Activation = Literal["silu", "gelu", "relu"]


def make_activation(kind: Activation) -> nn.Module:
    """The activation module named by ``kind`` (SiLU / GELU are smooth; ReLU is not twice differentiable)."""
    if kind == "silu":
        return nn.SiLU()
    if kind == "gelu":
        return nn.GELU()
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {kind!r}; expected 'silu', 'gelu' or 'relu'")


class ResidualBlock(nn.Module):
    """Pre-norm residual block ``x + W₂ act(W₁ act(LN x) + W_t temb)``; the time embedding enters every block."""

    def __init__(self, hidden: int, activation: Activation) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.time_proj = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = make_activation(activation)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x: (B, hidden), temb: (B, hidden) -> (B, hidden)."""
        h = self.fc1(self.act(self.norm(x))) + self.time_proj(self.act(temb))
        return x + self.fc2(self.act(h))


class MLP(nn.Module):
    """Time-conditioned residual MLP: forward(x (B, D), t (B,), y=None, s=None) -> (B, out_dim or D).

    Args:
        data_dim: D, the width of the data.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_embed_dim: width of the raw time embedding, before its two-layer MLP.
        embedding: ``positional`` (sinusoidal, DDPM) or ``fourier`` (Gaussian Fourier features, NCSN++).
        activation: non-linearity used throughout.
        out_dim: output width; ``None`` means ``data_dim`` (ε, score or velocity outputs).
        num_classes: K > 0 makes the network class-conditional: a label embedding (with a null row for "no
            label", :class:`~lit_score.networks.embeddings.LabelEmbedding`) is added to the time embedding.
        two_time: also take a target time s (a flow map's second time), embedded like t through a branch whose last
            layer starts at zero (:mod:`lit_score.networks.two_time`); ``two_time`` is then True on the network.
        time_scale: the factor on the time input before its embedding
            (:func:`~lit_score.networks.embeddings.timestep_embedding`; 1e-3 on the interpolant for MeanFlow).
    """

    def __init__(
        self,
        data_dim: int,
        hidden: int = 256,
        depth: int = 4,
        time_embed_dim: int = 128,
        embedding: Literal["positional", "fourier"] = "positional",
        activation: Activation = "silu",
        out_dim: int | None = None,
        num_classes: int = 0,
        two_time: bool = False,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_number("data_dim", data_dim, ge=1, integer=True)
        check_number("hidden", hidden, ge=1, integer=True)
        check_number("depth", depth, ge=0, integer=True)
        check_number("time_embed_dim", time_embed_dim, ge=2, integer=True)
        check_number("out_dim", out_dim, ge=1, integer=True, allow_none=True)
        check_number("num_classes", num_classes, ge=0, integer=True)
        self.data_dim = data_dim
        self.out_dim = data_dim if out_dim is None else out_dim
        self.time_embed = nn.Sequential(
            timestep_embedding(embedding, time_embed_dim, time_scale),
            nn.Linear(time_embed_dim, hidden),
            make_activation(activation),
            nn.Linear(hidden, hidden),
        )
        self.num_classes = num_classes
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes else None
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden, activation) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), make_activation(activation), nn.Linear(hidden, self.out_dim))
        self.two_time = bool(two_time)  # the s-branch is built last: the layers above draw what a one-time MLP draws
        self.target_time_embed = target_time_embedding(
            timestep_embedding(embedding, time_embed_dim, time_scale), time_embed_dim, hidden,
            make_activation(activation)
        ) if self.two_time else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, s: Tensor | None = None) -> Tensor:
        """x: (B, D), t: (B,) or a scalar, y: class labels (B,) or None, s: a two-time network's target time (B,),
        a scalar or None (s = t) -> (B, out_dim)."""
        temb = self.time_embed(torch.broadcast_to(t, x.shape[:1]))
        label = label_features(self.label_embed, y, x.shape[0], x.device)
        if label is not None:
            temb = temb + label
        target = target_time_features(self.target_time_embed, s, t, x.shape[0])
        if target is not None:
            temb = temb + target
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h)
