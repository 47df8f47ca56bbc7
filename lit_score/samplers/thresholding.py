r"""x̂₀ thresholding: the map a sampler applies to its x₀ estimate before an update (``Sampler.denoised``), keeping it
inside the data range.

| symbol | meaning |
|---|---|
| c | ``StaticThreshold.max_value``: x̂₀ ↦ clamp(x̂₀, −c, c) (DDPM's ``clip_denoised``; Imagen's static: c = 1) |
| p | ``DynamicThreshold.percentile``: the quantile of \|x̂₀\| taken per sample (Imagen: 0.995) |
| s | clamp(quantile_p(\|x̂₀\|), 1, ``max_value``) per sample; x̂₀ ↦ clamp(x̂₀, −s, s)/s ∈ [−1, 1] |

Dynamic thresholding is Saharia et al. 2022 (Imagen), §2.3 and its Appendix; with ``percentile`` = diffusers'
``dynamic_thresholding_ratio`` and ``max_value`` = its ``sample_max_value`` it is diffusers' ``_threshold_sample``
(``tests/test_thresholding.py`` compares them). Since s ≥ 1, an x̂₀ already inside [−1, 1] is returned unchanged.

Both assume data in a known range centred at 0: :meth:`Thresholding.range_problem` says why a data range does not
fit (unknown or unbounded, as toy 2-D data; wider than what the threshold keeps), which the commands check before
sampling (``lit_score.loading.sampler``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from einops import rearrange
from torch import Tensor

from lit_score.checks import check_number


class Thresholding(ABC):
    """x̂₀ ↦ x̂₀ inside [−``bound``, ``bound``], configured by its typed ``__init__`` (``class_path`` / ``init_args``)."""

    @property
    @abstractmethod
    def bound(self) -> float:
        """The largest |x̂₀| it returns."""

    #: whether it shrinks x̂₀ towards 0 (so the data must be centred there, not only inside the bound)
    centred: bool = False

    @abstractmethod
    def __call__(self, x0: Tensor) -> Tensor:
        """The thresholded x̂₀, of x0's shape and dtype."""

    def range_problem(self, data_range: tuple[float, float] | None) -> str | None:
        """Why it cannot serve data in ``data_range`` (None: unknown), in words; None when it can."""
        if data_range is None or not all(math.isfinite(v) for v in data_range):
            known = "unknown" if data_range is None else f"unbounded {tuple(data_range)} (toy / 2-D data)"
            return f"{self!r} keeps x0 in [-{self.bound:g}, {self.bound:g}] but the data range is {known}"
        lo, hi = data_range
        if lo < -self.bound or hi > self.bound:
            return f"{self!r} keeps x0 in [-{self.bound:g}, {self.bound:g}], which cuts the data range ({lo:g}, {hi:g})"
        if self.centred and lo != -hi:
            return f"{self!r} shrinks x0 towards 0 but the data range ({lo:g}, {hi:g}) is not centred there"
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(vars(self).items())))


class StaticThreshold(Thresholding):
    """Static thresholding: x̂₀ clamped to [−c, c] (Ho et al. 2020's clipping; Saharia et al. 2022, §2.3).

    Args:
        max_value: c (1 for data in [−1, 1]).
    """

    def __init__(self, max_value: float = 1.0) -> None:
        check_number("max_value", max_value, gt=0.0)
        self.max_value = float(max_value)

    @property
    def bound(self) -> float:
        return self.max_value

    def __call__(self, x0: Tensor) -> Tensor:
        return x0.clamp(-self.max_value, self.max_value)


class DynamicThreshold(Thresholding):
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): s = clamp(quantile_p(|x̂₀|), 1, max_value) per
    sample, x̂₀ ↦ clamp(x̂₀, −s, s)/s, so x̂₀ ends in [−1, 1] (data in [−1, 1]).

    Args:
        percentile: p ∈ (0, 1], the quantile of |x̂₀| over each sample's elements (Imagen 0.995; diffusers'
            ``dynamic_thresholding_ratio``).
        max_value: the largest s (diffusers' ``sample_max_value``; ≥ 1, and 1 is static thresholding at 1).
    """

    centred = True
    bound = 1.0

    def __init__(self, percentile: float = 0.995, max_value: float = 1.0) -> None:
        check_number("percentile", percentile, gt=0.0, le=1.0)
        check_number("max_value", max_value, ge=1.0)
        self.percentile, self.max_value = float(percentile), float(max_value)

    def __call__(self, x0: Tensor) -> Tensor:
        flat = rearrange(x0, "b ... -> b (...)")
        # torch.quantile takes float32 / float64 only (diffusers upcasts half precision likewise)
        work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(work.abs(), self.percentile, dim=1, keepdim=True).clamp(1.0, self.max_value)
        return (torch.maximum(torch.minimum(work, s), -s) / s).to(x0.dtype).reshape(x0.shape)


__all__ = ["DynamicThreshold", "StaticThreshold", "Thresholding"]
