"""DDPM / DDPM++ U-Net for images (B, C, H, W) (Ho et al. 2020; Song et al. 2021, ``ddpm++``).

Layout (as in DDPM's ``diffusion_tf/models/unet.py``):

    conv_in -> [num_res_blocks × (ResBlock [+ Attn]) -> Downsample] per level -> ResBlock, Attn, ResBlock
            -> [(num_res_blocks + 1) × (concat skip, ResBlock [+ Attn]) -> Upsample] per level -> GN, SiLU, conv_out

Every encoder activation (including conv_in's) is a skip, popped in reverse by the decoder. Downsampling
maps H to ceil(H/2); upsampling interpolates (nearest) to the size of the skip it meets next, so odd sizes
such as MNIST's 28 -> 14 -> 7 -> 4 round-trip exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.networks.embeddings import LabelEmbedding, label_features, timestep_embedding
from lit_score.networks.two_time import target_time_embedding, target_time_features


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with gcd(min(num_groups, channels // 4), channels) groups (NCSN++'s min(C // 4, 32), Song et al. 2021).

    Equal to ``num_groups`` for DDPM's widths; for narrow layers it keeps ≥ 4 channels per group, because with
    one channel per group the norm subtracts each channel's mean and erases the additive time embedding.
    """
    return nn.GroupNorm(math.gcd(min(num_groups, max(channels // 4, 1)), channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block GN-SiLU-conv, + Linear(SiLU(temb)), GN-SiLU-dropout-conv, with a 1×1 shortcut if widths differ.

    With ``skip_rescale`` the sum is divided by √2 (Song et al. 2021, DDPM++).
    """

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, num_groups: int, skip_rescale: bool
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, num_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.skip_scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x: (B, in_ch, H, W), temb: (B, temb_dim) -> (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + rearrange(self.temb_proj(F.silu(temb)), "b c -> b c 1 1")
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.shortcut(x) + h) * self.skip_scale


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection (Ho et al. 2020; √2 rescale as in DDPM++)."""

    def __init__(self, channels: int, num_groups: int, skip_rescale: bool) -> None:
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.skip_scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        h = F.scaled_dot_product_attention(q, k, v)
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=x.shape[-2])
        return (x + self.proj_out(h)) * self.skip_scale


class ResAttn(nn.Module):
    """A ResBlock optionally followed by an AttnBlock: one stage of the U-Net, producing one skip in the encoder."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        attention: bool,
        dropout: float,
        num_groups: int,
        skip_rescale: bool,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, temb_dim, dropout, num_groups, skip_rescale)
        self.attn = AttnBlock(out_ch, num_groups, skip_rescale) if attention else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x: (B, in_ch, H, W), temb: (B, temb_dim) -> (B, out_ch, H, W)."""
        return self.attn(self.res(x, temb))


class Downsample(nn.Module):
    """Halve the spatial size (ceil): a stride-2 3×3 conv, or 2×2 average pooling when ``with_conv`` is false."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)); ``temb`` is ignored (uniform stage signature)."""
        if self.conv is not None:
            return self.conv(x)
        return F.avg_pool2d(x, 2, ceil_mode=True)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size, optionally followed by a 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """x: (B, C, h, w) -> (B, C, *size)."""
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNetTrunk(nn.Module):
    """The U-Net's embedding and downsampling half, built once for :class:`UNet` and the classifier's
    :class:`~lit_score.networks.EncoderUNet` (guided-diffusion's ``EncoderUNetModel`` is that half too).

    ``build_trunk`` validates the shared arguments and sets, in this order (so parameter names and initialisation
    order are those of the U-Net): ``time_embed``, ``label_embed``, ``conv_in``, ``down``, ``mid1``, ``mid_attn``,
    ``mid2``. ``trunk`` runs them: (the skips of every encoder stage, the middle block's output). A two-time
    :class:`UNet` adds its ``target_time_embed`` after everything else (:mod:`lit_score.networks.two_time`).
    """

    def build_trunk(
        self,
        in_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...],
        dropout: float,
        resolution: int,
        embedding: str,
        num_groups: int,
        resample_with_conv: bool,
        skip_rescale: bool,
        num_classes: int = 0,
        time_scale: float = 1.0,
    ) -> tuple[list[int], list[int]]:
        """Build the trunk; returns (the skip widths, the resolution of each level) for a decoder."""
        check_number("num_classes", num_classes, ge=0, integer=True)
        for name, value in (("in_channels", in_channels), ("base_channels", base_channels),
                            ("num_res_blocks", num_res_blocks), ("resolution", resolution), ("num_groups", num_groups)):
            check_number(name, value, ge=1, integer=True)
        check_number("dropout", dropout, ge=0.0, lt=1.0)
        if not channel_mult or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of integers >= 1, got {channel_mult!r}")
        self.in_channels = in_channels
        ch, temb_dim = base_channels, 4 * base_channels
        kw = {"dropout": dropout, "num_groups": num_groups, "skip_rescale": skip_rescale}

        embed = timestep_embedding(embedding, ch, time_scale)
        self.time_embed = nn.Sequential(embed, nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.num_classes = num_classes
        self.label_embed = LabelEmbedding(num_classes, temb_dim) if num_classes else None
        self.two_time, self.target_time_embed = False, None  # a two-time UNet builds its s-branch after the decoder
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        # Encoder: every stage yields one skip; record the skip widths for the decoder.
        self.down = nn.ModuleList()
        skip_chs, cur, res, level_res = [ch], ch, resolution, []
        for level, mult in enumerate(channel_mult):
            level_res.append(res)
            for _ in range(num_res_blocks):
                self.down.append(ResAttn(cur, ch * mult, temb_dim, res in attention_resolutions, **kw))
                cur = ch * mult
                skip_chs.append(cur)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(cur, resample_with_conv))
                skip_chs.append(cur)
                res = (res + 1) // 2

        self.mid1 = ResBlock(cur, cur, temb_dim, **kw)
        self.mid_attn = AttnBlock(cur, num_groups, skip_rescale)
        self.mid2 = ResBlock(cur, cur, temb_dim, **kw)
        return skip_chs, level_res

    def trunk(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, s: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """x: (B, C, H, W), t: (B,) or a scalar, y: labels or None, s: a two-time network's target time or None (s = t)
        -> (skips, middle output, time embedding)."""
        temb = self.time_embed(torch.broadcast_to(t, x.shape[:1]))
        label = label_features(self.label_embed, y, x.shape[0], x.device)
        if label is not None:
            temb = temb + label
        target = target_time_features(self.target_time_embed, s, t, x.shape[0])
        if target is not None:
            temb = temb + target
        skips = [self.conv_in(x)]
        for stage in self.down:
            skips.append(stage(skips[-1], temb))
        return skips, self.mid2(self.mid_attn(self.mid1(skips[-1], temb)), temb), temb


class UNet(UNetTrunk):
    """DDPM++ U-Net: forward(x (B, C, H, W), t (B,), y=None, s=None) -> (B, out_channels or C, H, W) (Ho et al. 2020;
    Song et al. 2021).

    The defaults are DDPM's CIFAR-10 network (≈35.7M parameters).

    Args:
        in_channels: image channels C.
        out_channels: output channels; ``None`` means ``in_channels`` (use 2C for a learned variance).
        base_channels: width of the first level; the time embedding has width 4·base_channels.
        channel_mult: width multiplier per level; one level per entry, downsampling between levels.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: spatial sizes (computed from ``resolution``) at which self-attention is added.
        dropout: dropout rate inside residual blocks.
        resolution: nominal input size H = W, used only to place attention.
        embedding: ``positional`` (sinusoidal, DDPM) or ``fourier`` (Gaussian Fourier features, NCSN++).
        num_groups: GroupNorm groups (fewer for narrow layers, see ``group_norm``).
        resample_with_conv: whether down/upsampling use a 3×3 conv (else pooling / plain interpolation).
        skip_rescale: divide residual sums by √2 (DDPM++).
        zero_init_output: zero-initialise the last conv (DDPM: the output starts at 0). Turn it off under a
            ``NoiseConditionalEnergy(head="norm")``: Ẽ = ½‖F‖² with F ≡ 0 is a saddle whose gradient is exactly 0.
        num_classes: K > 0 makes the network class-conditional: a label embedding (with a null row, for
            classifier-free guidance) is added to the time embedding, as guided-diffusion's ``label_emb``.
        two_time: also take a target time s (a flow map's second time), embedded like t through a branch whose last
            layer starts at zero (:mod:`lit_score.networks.two_time`); ``two_time`` is then True on the network.
        time_scale: the factor on c_noise(t) before the time embeddings (``timestep_embedding``; MeanFlow: 1e-3).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        resolution: int = 32,
        embedding: Literal["positional", "fourier"] = "positional",
        num_groups: int = 32,
        resample_with_conv: bool = True,
        skip_rescale: bool = True,
        zero_init_output: bool = True,
        num_classes: int = 0,
        two_time: bool = False,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_number("out_channels", out_channels, ge=1, integer=True, allow_none=True)
        self.zero_init_output = bool(zero_init_output)
        self.out_channels = in_channels if out_channels is None else out_channels
        skip_chs, level_res = self.build_trunk(in_channels, base_channels, channel_mult, num_res_blocks,
                                               attention_resolutions, dropout, resolution, embedding, num_groups,
                                               resample_with_conv, skip_rescale, num_classes, time_scale)
        ch, temb_dim, cur = base_channels, 4 * base_channels, skip_chs[-1]
        kw = {"dropout": dropout, "num_groups": num_groups, "skip_rescale": skip_rescale}

        # Decoder: levels in reverse, num_res_blocks + 1 stages each, concatenating one skip per stage.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            attention = level_res[level] in attention_resolutions
            stages = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stages.append(ResAttn(cur + skip_chs.pop(), ch * mult, temb_dim, attention, **kw))
                cur = ch * mult
            self.up.append(stages)
            self.upsample.append(Upsample(cur, resample_with_conv) if level != 0 else nn.Identity())

        self.norm_out = group_norm(cur, num_groups)
        self.conv_out = nn.Conv2d(cur, self.out_channels, 3, padding=1)
        if zero_init_output:  # DDPM zero-initialises the last layer: the output starts at 0
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)
        if two_time:  # built last: the layers above draw what a one-time UNet draws
            self.two_time = True
            branch = timestep_embedding(embedding, ch, time_scale)
            self.target_time_embed = target_time_embedding(branch, ch, temb_dim, nn.SiLU())

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, s: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), t: (B,) or a scalar, y: class labels (B,) or None, s: a two-time network's target time
        (B,), a scalar or None (s = t) -> (B, out_channels, H, W)."""
        skips, h, temb = self.trunk(x, t, y, s)
        for stages, upsample in zip(self.up, self.upsample):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), temb)
            if skips:
                h = upsample(h, skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))
