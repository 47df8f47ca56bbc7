r"""Noise sources for the stochastic samplers: a callable ``noise(t, s) -> Tensor`` shaped like x, one standard-normal
draw for the step t → s.

| source | ``noise(t, s)`` | as k-diffusion's |
|---|---|---|
| :class:`GaussianNoise` | a fresh i.i.d. N(0, I) draw from the call's ``generator`` | ``default_noise_sampler`` |
| :class:`BrownianTreeNoise` | (W(s) − W(t))/√\|s − t\| of one path W | ``BrownianTreeNoiseSampler`` |

t and s are points of the source's own Brownian time τ (a sampler chooses it: the SDE samplers of
``dpm_solver_sde.py`` use the EDM noise level τ = σ/α = e^{−λ}, as k-diffusion). With the Brownian tree the draws of a
run are increments of one path fixed by the seed, whatever the grid: the draw of a coarse step is the normalised sum
of the draws of the fine steps inside it, so runs with N and 2N steps are driven by the same Brownian motion.

Notes on torchsde's ``BrownianTree`` (Li et al. 2020), which the tree wraps:

- Seeding: the path is fixed by an integer entropy (numpy ``SeedSequence``); here it is drawn from the call's
  ``generator`` (from torch's global generator without one), so a run is deterministic by seed. Each node of the tree
  draws its normals with ``torch.Generator(device).manual_seed(...)`` on x's device and in x's dtype, so one seed gives
  different paths on CPU and CUDA, and in float32 and float64.
- Times are Python floats rounded to ``tol``'s decimals (torchsde's default 1e-6, absolute; ``noise_source`` lowers it
  to 1e-3·τ_lo when τ_lo < 1e-3, so that the first decimals of the smallest τ are kept), and a query descends
  log₂((τ_hi − τ_lo)/tol) levels (≈ 27 for EDM's σ ∈ [0.002, 80]), each a randn shaped like x (cached). One path
  serves the whole batch, so a sample's noise depends on the batch it is drawn in (k-diffusion can take one seed per
  sample instead).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torchsde
from torch import Tensor

NoiseKind = Literal["gaussian", "brownian_tree"]
NOISE_KINDS: tuple[str, ...] = ("gaussian", "brownian_tree")


class Noise(Protocol):
    """A noise source: one N(0, I) draw shaped like x for the step t → s."""

    def __call__(self, t: float, s: float) -> Tensor: ...


class GaussianNoise:
    """i.i.d. N(0, I) draws shaped like ``x`` from ``generator``, one per call (the times are not used)."""

    def __init__(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        self.shape, self.dtype, self.device, self.generator = x.shape, x.dtype, x.device, generator

    def __call__(self, t: float, s: float) -> Tensor:
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype, device=self.device)


def entropy_from(generator: torch.Generator | None) -> int:
    """An integer seed for torchsde drawn from ``generator`` (torch's global generator when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


class BrownianTreeNoise:
    """(W(s) − W(t))/√|s − t| for one Brownian path W shaped like ``x`` on [τ_lo, τ_hi] (module notes).

    Args:
        x: the shape, dtype and device of the draws.
        tau_lo, tau_hi: the ends of the Brownian time the queries stay in.
        generator: the seed of the path (see the module notes).
        tol: torchsde's resolution of the time axis.
    """

    def __init__(self, x: Tensor, tau_lo: float, tau_hi: float, generator: torch.Generator | None = None,
                 tol: float = 1e-6) -> None:
        if not tau_lo < tau_hi:
            raise ValueError(f"a Brownian tree needs tau_lo < tau_hi, got {tau_lo:g} and {tau_hi:g}")
        self.entropy, self.digits = entropy_from(generator), -int(math.log10(tol))
        self.tree = torchsde.BrownianTree(float(tau_lo), torch.zeros_like(x), float(tau_hi), entropy=self.entropy,
                                          tol=tol)

    def __call__(self, t: float, s: float) -> Tensor:
        sign = 1.0 if t < s else -1.0
        lo, hi = min(t, s), max(t, s)
        # torchsde rounds times (its ends too) to tol's decimals: rounded here first, a query at an end stays inside
        return sign * self.tree(round(lo, self.digits), round(hi, self.digits)) / math.sqrt(hi - lo)


def noise_source(kind: NoiseKind, x: Tensor, generator: torch.Generator | None, taus: list[float]) -> Noise:
    """The ``kind`` noise source for a run whose steps query the Brownian times ``taus``."""
    if kind == "gaussian":
        return GaussianNoise(x, generator)
    if kind == "brownian_tree":
        lo, hi = min(taus), max(taus)
        return BrownianTreeNoise(x, lo, hi, generator, tol=min(1e-6, 1e-3 * lo))
    raise ValueError(f"unknown noise {kind!r}: use one of {', '.join(NOISE_KINDS)}")


__all__ = ["NOISE_KINDS", "BrownianTreeNoise", "GaussianNoise", "Noise", "NoiseKind", "entropy_from", "noise_source"]
