"""Noise-conditional classifier network for images: the U-Net's encoder half with a pooled linear head.

guided-diffusion's ``EncoderUNetModel`` (Dhariwal & Nichol 2021, sec. 4: "the downsampling trunk of the UNet model
with an attention pool at the 8×8 layer"), here with the global average pool (its ``pool="adaptive"``):

    conv_in -> [num_res_blocks × (ResBlock [+ Attn]) -> Downsample] per level -> ResBlock, Attn, ResBlock
            -> GN, SiLU, mean over H, W -> Linear -> (B, out_dim) logits

The stages are :mod:`lit_score.networks.unet`'s own blocks, so a classifier built with a generative U-Net's settings
has that U-Net's encoder. Flat data needs no new network: ``MLP(data_dim, out_dim=K)`` maps (x, c_noise) to K logits.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.networks.embeddings import timestep_embedding
from lit_score.networks.unet import AttnBlock, Downsample, ResAttn, ResBlock, group_norm


class EncoderUNet(nn.Module):
    """The U-Net's downsampling half + pooling + a linear head: forward(x (B, C, H, W), t (B,)) -> (B, out_dim) logits
    (guided-diffusion's ``EncoderUNetModel``, Dhariwal & Nichol 2021).

    The arguments shared with :class:`~lit_score.networks.UNet` mean the same; a classifier for a model's process
    takes the same noise conditioning ``c_noise(t)`` as that model's U-Net.

    Args:
        out_dim: K, the number of classes (one logit each).
        in_channels: image channels C.
        base_channels: width of the first level; the time embedding has width 4·base_channels.
        channel_mult: width multiplier per level; one level per entry, downsampling between levels.
        num_res_blocks: residual blocks per level.
        attention_resolutions: spatial sizes (computed from ``resolution``) at which self-attention is added.
        dropout: dropout rate inside residual blocks.
        resolution: nominal input size H = W, used only to place attention.
        embedding: ``positional`` (sinusoidal, DDPM) or ``fourier`` (Gaussian Fourier features, NCSN++).
        num_groups: GroupNorm groups (fewer for narrow layers, see ``group_norm``).
        resample_with_conv: whether downsampling uses a strided 3×3 conv (else average pooling).
        skip_rescale: divide residual sums by √2 (DDPM++).
        zero_init_output: zero-initialise the head (guided-diffusion's ``zero_module``): the classifier starts at the
            uniform p(y | x_t), whose guidance gradient is 0.
    """

    def __init__(
        self,
        out_dim: int,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.0,
        resolution: int = 32,
        embedding: Literal["positional", "fourier"] = "positional",
        num_groups: int = 32,
        resample_with_conv: bool = True,
        skip_rescale: bool = True,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("out_dim", out_dim), ("in_channels", in_channels), ("base_channels", base_channels),
                            ("num_res_blocks", num_res_blocks), ("resolution", resolution), ("num_groups", num_groups)):
            check_number(name, value, ge=1, integer=True)
        check_number("dropout", dropout, ge=0.0, lt=1.0)
        if not channel_mult or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of integers >= 1, got {channel_mult!r}")
        self.in_channels, self.out_dim = in_channels, out_dim
        ch, temb_dim = base_channels, 4 * base_channels
        kw = {"dropout": dropout, "num_groups": num_groups, "skip_rescale": skip_rescale}

        self.time_embed = nn.Sequential(
            timestep_embedding(embedding, ch), nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cur, res = ch, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResAttn(cur, ch * mult, temb_dim, res in attention_resolutions, **kw))
                cur = ch * mult
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(cur, resample_with_conv))
                res = (res + 1) // 2
        self.mid1 = ResBlock(cur, cur, temb_dim, **kw)
        self.mid_attn = AttnBlock(cur, num_groups, skip_rescale)
        self.mid2 = ResBlock(cur, cur, temb_dim, **kw)
        self.norm_out = group_norm(cur, num_groups)
        self.head = nn.Linear(cur, out_dim)
        if zero_init_output:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, C, H, W), t: (B,) or a scalar (the process's ``c_noise``) -> (B, out_dim) logits."""
        temb = self.time_embed(torch.broadcast_to(t, x.shape[:1]))
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h, temb)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        pooled = reduce(F.silu(self.norm_out(h)), "b c h w -> b c", "mean")
        return self.head(pooled)
