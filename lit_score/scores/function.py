"""The declared form of a score function, and the one adapter that gives a bare callable that form.

A score function in lit-score is any callable ``(x, t) -> s(x, t)`` that MAY offer more. What it offers is declared
on :class:`ScoreFunction`, the base of lit-score's own score functions (:class:`~lit_score.scores.NetworkScore` and
its conditioned / guided views, :class:`~lit_score.scores.FlowMapScore`, :class:`~lit_score.scores.EnergyScore`,
:class:`~lit_score.scores.ComposedEnergy`, :class:`~lit_score.scores.GaussianFlowMap`, the sampler's per-call
:class:`~lit_score.samplers.CountingScore`):

| declared | default | meaning |
|---|---|---|
| ``learned_variance`` | False | ``predict_with_variance(x, t) -> (x̂₀, ε̂, v)`` gives the reverse variance's mix v |
| ``two_time`` | False | a flow map: ``denoise(x, t, s)`` and ``flow_map(x, t, s)`` jump from t to s |
| ``has_energy`` | False | ``energy(x, t) -> (B,)`` gives the energy E with s = −∇ₓE |
| ``predict`` | None | ``(x, t) -> (x̂₀, ε̂)`` from one evaluation (None: samplers use Tweedie from the score) |
| ``velocity`` | None | ``(x, t) -> dx/dt`` of the probability-flow ODE (None: f·x − ½g²·s) |
| ``energy_and_score`` | None | ``(x, t) -> (E, s)`` from one backward pass (None: ``energy`` and the score apart) |
| ``process`` | — | the noise process the score is of (None: none, e.g. an EBM); set by every score function |
| ``score`` | the call | the score s(x, t) (an energy's keeps its graph with ``create_graph``) |
| ``repeated(n)`` | itself | the score function for its batch repeated n times (a conditioned view repeats its labels) |
| ``labels`` | None | the class labels a conditioned view passes to its network |
| ``with_condition`` | None | ``(labels, …) -> view`` conditioned on class labels (None: unconditional only) |
| ``score_model`` | None | what a model (an EBM, a diffusion model) holds: the score function it stands for |

A bare callable that offers ``energy(x, t)`` and declares no ``has_energy`` has an energy.

:func:`as_score_function` is the boundary: it returns a :class:`ScoreFunction` unchanged and wraps anything else (a
user's lambda, a data distribution's exact ``score``, a test's oracle) in a :class:`UserScore`, which reads the
callable's optional attributes once, by the names of the table. That is the one place lit-score reads an arbitrary
score callable's optional attributes; everything else reads the declared ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

#: the optional declarations of the table above, with the value a callable that declares none of them has
OPTIONAL = {
    "learned_variance": False,
    "two_time": False,
    "has_energy": None,  # undeclared: True when it offers ``energy``
    "predict": None,
    "velocity": None,
    "energy_and_score": None,
    "process": None,
    "labels": None,
    "with_condition": None,
    "score_model": None,
    "energy": None,
    "score": None,
    "repeated": None,
}


class ScoreFunction:
    """A score function with declared capabilities (module docstring); subclasses define ``__call__`` or
    ``forward`` and override what they offer. ``process`` is set by each (not declared here: on an ``nn.Module`` a
    class attribute would hide the registered submodule)."""

    learned_variance: bool = False
    two_time: bool = False
    has_energy: bool = False
    predict: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    velocity: Callable[[Tensor, Tensor], Tensor] | None = None
    energy_and_score: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]] | None = None
    labels: Tensor | None = None
    with_condition: Callable[..., ScoreFunction] | None = None
    score_model: ScoreFunction | None = None

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """s(x, t): the call itself unless a subclass says otherwise."""
        return self(x, t)

    def repeated(self, times: int) -> ScoreFunction:
        """This score function for a batch repeated ``times`` times (itself: it carries no per-sample labels)."""
        return self


class UserScore(ScoreFunction):
    """A bare callable ``(x, t) -> s`` as a :class:`ScoreFunction`: its optional declarations (module table) read
    once here, every other attribute (``denoise``, ``eps``, ``energy``, ``flow_map``, ``labels``, …) passed through.

    This is the one place where lit-score reads an arbitrary score callable's optional attributes."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn
        offered = {name: getattr(fn, name, default) for name, default in OPTIONAL.items()}
        score, repeated, energy = offered.pop("score"), offered.pop("repeated"), offered.pop("energy")
        declared_energy = offered.pop("has_energy")
        for name, value in offered.items():
            setattr(self, name, value)
        self.has_energy = callable(energy) and bool(True if declared_energy is None else declared_energy)
        self.score = score if score is not None else fn
        if repeated is not None:
            self.repeated = lambda times: as_score_function(repeated(times))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.fn(x, t)

    def __getattr__(self, name: str) -> Any:
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)


def as_score_function(fn: Callable[[Tensor, Tensor], Tensor]) -> ScoreFunction:
    """``fn`` itself when it is a :class:`ScoreFunction`, else ``fn`` wrapped in a :class:`UserScore`."""
    return fn if isinstance(fn, ScoreFunction) else UserScore(fn)


__all__ = ["OPTIONAL", "ScoreFunction", "UserScore", "as_score_function"]
