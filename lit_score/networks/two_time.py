r"""The second time input of a two-time network (x, t, s) -> F, for flow maps X_{t→s} (DESIGN.md §3d).

A two-time network is an ordinary time-conditioned network (:class:`~lit_score.networks.MLP`,
:class:`~lit_score.networks.UNet`) built with ``two_time=True``: a second branch embeds the *target* time s exactly as
the first embeds t and adds its features to the time embedding,

    temb = T(c_noise(t)) [+ label] + S(c_noise(s)),      S's last linear layer initialised to zero,

so a two-time network holding a trained one-time network's weights (:func:`load_one_time_weights`) gives exactly the
one-time network's output for every s (S ≡ 0 until it is trained). The branch is built after every other layer, so
with the same seed the other parameters are those of the one-time network too.

| symbol | meaning |
|---|---|
| t | the time the input x is at (the network's usual time input) |
| s ≤ t | the time the flow map jumps to; ``s=None`` means s = t (the ordinary denoiser / velocity) |
| c_noise | the process's noise conditioning (999·t for VP, DDPM's step index, log σ for VE, ¼ ln σ for EDM) |
| T, S | the embeddings of t and of s: positional or Fourier features, then a two-layer MLP |

**Why s and not the step t − s.** Consistency trajectory models condition G_θ(x_t, t, s) on both times through the
same noise embedding (Kim et al. 2023); shortcut models condition on the step size d (Frans et al. 2024) and
MeanFlow on (t, t − r) or (t, r), reporting little difference between the two (Geng et al. 2025, Table 1). Here
the network receives what the score boundary hands it, the process's c_noise, and c_noise(s) is in exactly t's units
on every process, on the range the embedding's frequencies were chosen for; a step c_noise(t) − c_noise(s) has no
common unit (a log-σ difference is a ratio of noise levels, DDPM's an index difference) and no fixed range. At s = t
both branches see the same value, so "s = t" is one point of the input space, not a special input.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

#: the name every two-time network gives its s-branch (what :func:`load_one_time_weights` allows to be missing)
TARGET_TIME_BRANCH = "target_time_embed"


def target_time_embedding(embedding: nn.Module, embed_dim: int, width: int, activation: nn.Module) -> nn.Sequential:
    """S: ``embedding`` (B,) -> (B, embed_dim), then Linear → activation → Linear to ``width``, the last layer zero
    (weight and bias), so S(s) = 0 for every s until trained."""
    first, out = nn.Linear(embed_dim, width), nn.Linear(width, width)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(embedding, first, activation, out)


def target_time_features(branch: nn.Module | None, s: Tensor | None, t: Tensor, batch: int) -> Tensor | None:
    """S(c_noise(s)) (B, width) for a two-time network's ``branch`` (s = None: s = t), None for a one-time network,
    which refuses an ``s`` in one line."""
    if branch is None:
        if s is not None:
            raise ValueError("this network takes one time: build it with two_time=True to give it a target time s")
        return None
    return branch(torch.broadcast_to(t if s is None else s, (batch,)))


def load_one_time_weights(network: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load a one-time network's weights into the two-time ``network`` of the same architecture; its s-branch keeps
    its zero initialisation, so ``network`` then gives the one-time network's outputs (module docstring). Refuses
    weights that miss anything else or hold anything the network lacks (a different architecture), in one line."""
    if not network.two_time:
        raise ValueError(f"{type(network).__name__} is a one-time network: build it with two_time=True")
    result = network.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(TARGET_TIME_BRANCH + ".")]
    if missing or result.unexpected_keys:
        raise ValueError(f"the one-time weights do not fit this two-time {type(network).__name__}: missing {missing},"
                         f" unexpected {list(result.unexpected_keys)} (build it with the one-time network's arguments)")
    return network


__all__ = ["TARGET_TIME_BRANCH", "load_one_time_weights", "target_time_embedding", "target_time_features"]
