"""What a sampling call returns (:class:`Draw`) and how its NFE is counted (:class:`CountingScore`); the sampler
interface that uses them is :mod:`lit_score.samplers.base`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from lit_score.scores.function import ScoreFunction, as_score_function

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class Draw(NamedTuple):
    """What one sampling call produced: the samples, its NFE and what the sampler measured (module docstring).

    A named tuple, so it is immutable and Lightning moves it between devices like any tuple (``predict_step``
    returns one)."""

    samples: Tensor
    nfe: int
    measurements: dict[str, Any]

    def scalars(self) -> dict[str, float | int]:
        """The measurements that are numbers (what a logger takes), not per-level lists."""
        return {k: v for k, v in self.measurements.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


class CountingScore(ScoreFunction):
    """Wraps a score function and counts its evaluations (a Python int: no device synchronisation).

    It declares what the wrapped function declares (read once through
    :func:`~lit_score.scores.function.as_score_function`); ``predict``, ``velocity``, ``energy_and_score`` and the
    passed-through ``denoise``, ``eps``, ``energy`` and ``predict_with_variance`` count as evaluations."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn, self.calls = score_fn, 0
        declared = as_score_function(score_fn)
        self.learned_variance, self.two_time = declared.learned_variance, declared.two_time
        self.has_energy, self.process = declared.has_energy, declared.process
        self.predict, self.velocity = self._counted(declared.predict), self._counted(declared.velocity)
        self.energy_and_score = self._counted(declared.energy_and_score)
        self.score, self.repeated = declared.score, declared.repeated
        self.labels, self.with_condition = declared.labels, declared.with_condition
        self.score_model = declared.score_model

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score_fn(x, t)

    def _counted(self, evaluate: Callable | None) -> Callable | None:
        """``evaluate`` counting one evaluation per call (None stays None: not offered)."""
        if evaluate is None:
            return None

        def counted(*args, **kwargs):
            self.calls += 1
            return evaluate(*args, **kwargs)

        return counted

    def __getattr__(self, name: str):
        if name == "score_fn":
            raise AttributeError(name)
        attr = getattr(self.score_fn, name)
        return self._counted(attr) if name in ("denoise", "eps", "energy", "predict_with_variance") else attr


__all__ = ["CountingScore", "Draw"]
