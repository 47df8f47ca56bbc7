"""Small shared helpers: widening per-sample tensors, seeded noise, full precision inside mixed-precision runs."""

from __future__ import annotations

import contextlib
import hashlib

import torch
from torch import Tensor


def append_dims(v: Tensor, x: Tensor) -> Tensor:
    """Widen a per-sample tensor of shape (B,) (or a scalar) to broadcast against ``x``.

    This is the one place where (B,) becomes (B, 1, ..., 1); nothing else assumes 4-D data.
    """
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` when given."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def rand(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None, dtype=None) -> Tensor:
    """Uniform [0, 1) noise drawn from ``generator`` when given."""
    return torch.rand(shape, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())


def batch_mean(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def per_sample_norm(x: Tensor) -> Tensor:
    """Euclidean norm of every sample, (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).norm(dim=1)


def batch_sum(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


@contextlib.contextmanager
def full_precision():
    """Switch autocast off (CPU and CUDA) for numerically sensitive work inside a ``bf16-mixed`` / ``16-mixed`` run:
    the likelihood ODE and its divergence, variational bounds. Inputs should be float32 already."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights and reference statistics are named by it in every protocol)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
