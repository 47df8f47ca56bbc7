"""Range checks for constructor arguments: one wording, NaN-safe, in one place.

Every public constructor that takes a number checks it here, so a bad value in a config fails when the config is
instantiated (before any data is read or any step is taken) with one line that names the argument, the range it must
lie in and the value given. The CLI prints that line as ``lit-score: error: ...``.

The comparisons are written so that NaN fails every one of them (``not value > 0`` rather than ``value <= 0``), and
floats must be finite unless a bound says otherwise (``allow_inf``; EDM's ``S_max`` is ``inf`` by default).

>>> check_number("num_steps", 0, ge=1, integer=True)
Traceback (most recent call last):
    ...
ValueError: num_steps must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def _condition(gt, ge, lt, le, integer: bool) -> str:
    bounds = ((">=", ge), (">", gt), ("<", lt), ("<=", le))
    parts = [f"{op} {v:g}" if isinstance(v, float) else f"{op} {v}" for op, v in bounds if v is not None]
    kind = "an integer" if integer else "a finite number"
    return f"{kind} {' and '.join(parts)}" if parts else kind


def check_number(
    name: str,
    value,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    integer: bool = False,
    allow_none: bool = False,
    allow_inf: bool = False,
):
    """Return ``value`` if it is a number in the stated range, else raise ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return value
    condition = _condition(gt, ge, lt, le, integer) + (" or None" if allow_none else "")
    if allow_inf:
        condition = condition.replace("a finite number", "a number")
    bad = ValueError(f"{name} must be {condition}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise bad
    if integer and not isinstance(value, Integral):
        raise bad
    if not integer and not (math.isfinite(value) or (allow_inf and not math.isnan(value))):
        raise bad
    ok = (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )
    if not ok:
        raise bad
    return value


def check_count(name: str, value, minimum: int = 1, allow_none: bool = False):
    """An integer >= ``minimum`` (sizes, steps, counts)."""
    return check_number(name, value, ge=minimum, integer=True, allow_none=allow_none)


def check_positive(name: str, value, allow_none: bool = False):
    """A finite float > 0 (step sizes, scales, tolerances)."""
    return check_number(name, value, gt=0.0, allow_none=allow_none)


def check_nonnegative(name: str, value, allow_none: bool = False):
    """A finite float >= 0."""
    return check_number(name, value, ge=0.0, allow_none=allow_none)


def check_probability(name: str, value, allow_none: bool = False):
    """A probability: a finite float in [0, 1]."""
    return check_number(name, value, ge=0.0, le=1.0, allow_none=allow_none)


def check_range(name: str, value, allow_none: bool = False):
    """An ordered pair (lo, hi) of finite numbers with lo < hi (clamps, data ranges)."""
    if value is None and allow_none:
        return value
    try:
        lo, hi = value
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi) with lo < hi, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be a pair (lo, hi) of finite numbers with lo < hi, got {value!r}")
    return (lo, hi)
