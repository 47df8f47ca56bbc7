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

import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.networks.unet import UNetTrunk, group_norm


class EncoderUNet(UNetTrunk):
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
        check_number("out_dim", out_dim, ge=1, integer=True)
        self.out_dim = out_dim
        skip_chs, _ = self.build_trunk(in_channels, base_channels, channel_mult, num_res_blocks, attention_resolutions,
                                       dropout, resolution, embedding, num_groups, resample_with_conv, skip_rescale)
        cur = skip_chs[-1]
        self.norm_out = group_norm(cur, num_groups)
        self.head = nn.Linear(cur, out_dim)
        if zero_init_output:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, C, H, W), t: (B,) or a scalar (the process's ``c_noise``) -> (B, out_dim) logits."""
        h = self.trunk(x, t)[1]
        pooled = reduce(F.silu(self.norm_out(h)), "b c h w -> b c", "mean")
        return self.head(pooled)
