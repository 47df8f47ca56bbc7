"""Energy networks E(x) -> (B,) for EBMs, with p(x) ∝ exp(−E(x)).

The score −∇ₓE is used inside training losses, so E is differentiated twice: every activation is smooth
(SiLU / Swish, as in Du & Mordatch 2019 and Nijkamp et al. 2019), never ReLU.

**Class-conditional energies** E(x, y) (``num_classes`` K > 0) use a projection head (Miyato & Koyama 2018, the
projection discriminator; JEM's E(x, y) = −f(x)[y] is its special case without the shared term): with φ(x) the
features before the last linear layer ψ,

    E(x, y) = ψ(φ(x)) + ⟨v_y, φ(x)⟩,

v_y a row of a :class:`~lit_score.networks.embeddings.LabelEmbedding` (K rows and a learned null row v_∅ for y < 0 or
y = None, all zero at initialisation). Every class shares φ and differs by a linear read-out, so E(x, ∅) is the
unconditional energy the same network learns under label dropout, and classifier-free guidance
E_w = (1 + w)·E(x, y) − w·E(x, ∅) is a difference of two read-outs of one feature vector. An unconditional network
(K = 0) has no embedding, computes exactly what it did before and refuses labels in one line.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from lit_score.checks import check_number
from lit_score.networks.embeddings import LabelEmbedding, label_features
from lit_score.scores.declarations import declared_classes, declares_zero_init_output
from lit_score.scores.energy import energy_gradient


def _maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    """Wrap a Linear / Conv2d in spectral normalisation (Miyato et al. 2018) when ``enabled``."""
    return _spectral_norm(layer) if enabled else layer


def _projection(embed: LabelEmbedding | None, features: Tensor, y: Tensor | None) -> Tensor | None:
    """⟨v_y, φ(x)⟩ (B,) of the projection head (None for an unconditional network, which refuses labels)."""
    v = label_features(embed, y, features.shape[0], features.device)
    return None if v is None else (v * features).sum(dim=1)


class EnergyCNN(nn.Module):
    """Convolutional energy: 3×3 convs (stride 2 after the first) with SiLU, then a linear layer to a scalar.

    forward(x (B, C, H, W), t=None, y=None) -> (B,); ``t`` is accepted for the common network signature and ignored.

    Args:
        in_channels: image channels C.
        channels: widths of the conv layers; every layer after the first halves the spatial size (ceil).
        resolution: input size H = W, which fixes the width of the final linear layer.
        spectral_norm: spectrally normalise every conv and linear layer (Miyato et al. 2018).
        num_classes: K > 0 makes the energy class-conditional, E(x, y), by a projection head on the flattened conv
            features (module docstring); the label embedding is not spectrally normalised.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (32, 64, 64),
        resolution: int = 16,
        spectral_norm: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        check_number("in_channels", in_channels, ge=1, integer=True)
        check_number("resolution", resolution, ge=1, integer=True)
        check_number("num_classes", num_classes, ge=0, integer=True)
        if not channels or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in channels):
            raise ValueError(f"channels must be a non-empty tuple of integers >= 1, got {channels!r}")
        layers: list[nn.Module] = []
        cur, res = in_channels, resolution
        for i, width in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [_maybe_sn(nn.Conv2d(cur, width, 3, stride=stride, padding=1), spectral_norm), nn.SiLU()]
            cur, res = width, (res + stride - 1) // stride
        self.features = nn.Sequential(*layers)
        self.head = _maybe_sn(nn.Linear(cur * res * res, 1), spectral_norm)
        self.num_classes = num_classes
        self.label_embed = LabelEmbedding(num_classes, cur * res * res, init="zeros") if num_classes else None

    def forward(self, x: Tensor, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), y: class labels (B,) or None (the null label) -> energies (B,)."""
        h = rearrange(self.features(x), "b c h w -> b (c h w)")
        energy = rearrange(self.head(h), "b 1 -> b")
        projection = _projection(self.label_embed, h, y)
        return energy if projection is None else energy + projection


class EnergyMLP(nn.Module):
    """Fully connected energy for flat data: ``depth`` SiLU hidden layers, then a linear layer to a scalar.

    forward(x (B, D), t=None, y=None) -> (B,); ``t`` is accepted for the common network signature and ignored.

    Args:
        data_dim: D, the width of the data.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        spectral_norm: spectrally normalise every linear layer (Miyato et al. 2018).
        num_classes: K > 0 makes the energy class-conditional, E(x, y), by a projection head on the last hidden
            layer (module docstring); the label embedding is not spectrally normalised.
    """

    def __init__(
        self, data_dim: int, hidden: int = 128, depth: int = 3, spectral_norm: bool = False, num_classes: int = 0
    ) -> None:
        super().__init__()
        check_number("data_dim", data_dim, ge=1, integer=True)
        check_number("hidden", hidden, ge=1, integer=True)
        check_number("depth", depth, ge=0, integer=True)
        check_number("num_classes", num_classes, ge=0, integer=True)
        layers: list[nn.Module] = []
        cur = data_dim
        for _ in range(depth):
            layers += [_maybe_sn(nn.Linear(cur, hidden), spectral_norm), nn.SiLU()]
            cur = hidden
        layers.append(_maybe_sn(nn.Linear(cur, 1), spectral_norm))
        self.net = nn.Sequential(*layers)  # hidden layers φ, then the read-out ψ = net[-1]
        self.num_classes = num_classes
        self.label_embed = LabelEmbedding(num_classes, cur, init="zeros") if num_classes else None

    def forward(self, x: Tensor, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """x: (B, D), y: class labels (B,) or None (the null label) -> energies (B,)."""
        if self.label_embed is None:
            if y is not None:
                label_features(None, y, x.shape[0], x.device)  # refuses in one line
            return rearrange(self.net(x), "b 1 -> b")
        h = self.net[:-1](x)
        return rearrange(self.net[-1](h), "b 1 -> b") + _projection(self.label_embed, h, y)


class NoiseConditionalEnergy(nn.Module):
    """A noise-conditional energy on any backbone: Ẽ(x, c) from ``backbone(x, c)``, and forward = −∇ₓẼ(x, c).

    Used as the network of a diffusion family (target ``score`` or ``eps``), its output is a gradient field, so the
    model's score is exactly −∇ₓE(x, t) of an energy (:meth:`NetworkScore.energy` converts Ẽ to E per target), every
    sampler and the likelihood code run unchanged, and MALA / HMC / ``MALACorrector`` can use E for their
    accept/reject test. The ordinary denoising loss trains it by double backpropagation (the gradient is taken with
    ``create_graph`` whenever autograd records). Salimans & Ho (2021) compare this parameterisation with a free score.

    Args:
        backbone: ``backbone(x, c)`` returning (B,) (``head="sum"``; e.g. an energy CNN/MLP taking ``t``) or an
            output shaped like x (``head="norm"``: Ẽ = ½‖F(x, c)‖², e.g. the MLP or U-Net).
        head: how the backbone's output becomes the scalar Ẽ.
    """

    has_energy = True

    def __init__(self, backbone: nn.Module, head: Literal["norm", "sum"] = "norm") -> None:
        super().__init__()
        if head not in ("norm", "sum"):
            raise ValueError(f"unknown energy head {head!r}: use norm or sum")
        if head == "norm" and declares_zero_init_output(backbone):
            raise ValueError(f"head='norm' on a {type(backbone).__name__} whose output starts at zero never trains"
                             " (E = 1/2 |F|^2 has zero gradient at F = 0): build it with zero_init_output false")
        self.backbone, self.head = backbone, head

    @property
    def num_classes(self) -> int:
        """The backbone's number of classes (0: unconditional); labels y pass through to ``backbone(x, c, y)``."""
        return declared_classes(self.backbone)

    def energy(self, x: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        """Ẽ(x, c) (or Ẽ(x, c, y) with class labels), shape (B,)."""
        out = self.backbone(x, c) if y is None else self.backbone(x, c, y)
        if self.head == "norm":
            return 0.5 * out.reshape(out.shape[0], -1).pow(2).sum(dim=1)
        return out.reshape(out.shape[0], -1).sum(dim=1)

    def forward(self, x: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        """−∇ₓẼ(x, c[, y]); differentiable while autograd records and either the module trains (a graph to θ, for the
        loss's double backpropagation) or the caller's x requires grad (a graph to x: the likelihood ODE's divergence
        ∇ₓ·s needs the Hessian of Ẽ). Detached otherwise (sampling)."""
        recording = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        keep_x = recording and x.requires_grad
        train = recording and self.training
        if train and not keep_x:  # x_t is data, not a parameter: differentiate w.r.t. a detached copy, keep θ's graph
            x = x.detach().requires_grad_(True)
        energy = self.energy if y is None else (lambda z, s: self.energy(z, s, y))
        return -energy_gradient(energy, x, c, create_graph=train or keep_x)[1]
