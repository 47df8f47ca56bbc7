"""The sampler of a ``sample`` / ``evaluate`` / ``encode`` run, and whether the model can use it.

=========================  ======================================================================================
name                       what it does
=========================  ======================================================================================
:func:`resolve_sampler`    the model's own sampler without ``--sampler``; with it, the class it names, where every
                           setting the user did not give is the model's when that class is the model's sampler's
:func:`check_sampler`      refuses (one line) a sampler the model cannot serve, warns about one that never visits
                           the noise levels the model was trained on, checks its step count and its x̂₀
                           thresholding against the data range
:func:`data_range_problem` why a sampler's x̂₀ thresholding (``x0_threshold``) cannot serve the data's
                           ``data_range`` (unknown, unbounded, or wider than it keeps); ``fit`` / ``predict`` and
                           ``compare`` ask it too
=========================  ======================================================================================

They decide by what the model, the sampler and the data declare (``sampler_problem``, ``traverses_noise_levels``,
``requires_energy``, ``x0_threshold``, ``data_range``), never by their types.
"""

from __future__ import annotations

import sys
from collections.abc import Collection

from lit_score.data import GenerativeDataModule
from lit_score.models import GenerativeModule
from lit_score.samplers import Sampler
from lit_score.validation import InvalidInput, check_sampler_steps


def resolve_sampler(chosen: Sampler | None, given: Collection[str], model: GenerativeModule) -> Sampler:
    """The sampler of a run: the model's own without ``--sampler``; with it, the class it names, where every setting
    the user did not give is the model's when that class is the model's sampler's (``--sampler.init_args.num_steps
    200`` on an EBM keeps its step size, noise and clamp), the class default otherwise. ``chosen`` is the parsed
    ``--sampler``, instantiated with its class defaults; ``given`` the names of the settings the user gave."""
    if chosen is None:
        return model.sampler
    if type(chosen) is not type(model.sampler):
        return chosen
    settings = chosen.settings()
    return model.sampler.with_settings(**{k: settings[k] for k in given if k in settings})


def data_range_problem(sampler: Sampler | None, data: GenerativeDataModule | None) -> str | None:
    """Why ``sampler``'s x̂₀ thresholding cannot serve ``data`` (None: it can, it thresholds nothing, or there is no
    sampler, as a classifier's); ``data`` None is data of unknown range (a checkpoint whose data module cannot be
    rebuilt)."""
    threshold = None if sampler is None else sampler.x0_threshold
    problem = None if threshold is None else threshold.range_problem(None if data is None else data.data_range)
    if problem is None:
        return None
    return (f"{problem}; drop the sampler's thresholding (and clip_denoised), or sample a model of data with a known"
            " range such as images in [-1, 1]")


def check_sampler(model: GenerativeModule, sampler: Sampler, data: GenerativeDataModule | None = None) -> None:
    """Refuse, in one line, a sampler the model cannot serve or whose x̂₀ thresholding does not fit ``data``'s range
    (:func:`data_range_problem`), and warn, in one line, about one that runs but does not carry the prior to the
    data (each by the capability it declares)."""
    problem = model.sampler_problem(sampler)
    if problem is not None:
        hint = "Langevin or ULA" if sampler.requires_energy else "Langevin"
        raise InvalidInput(f"{type(sampler).__name__} cannot sample a {type(model).__name__}: {problem}; use a sampler"
                           f" such as {hint} (or the model's own, {type(model.sampler).__name__})")
    if model.process is not None and not sampler.traverses_noise_levels:
        print(f"lit-score: warning: {type(sampler).__name__} runs one chain at t_min = {model.process.t_min:g} from the"
              f" prior and never visits the noise levels {type(model).__name__} was trained on, so its samples are"
              f" not the model's; use the model's own sampler ({type(model.sampler).__name__}) or AnnealedLangevin",
              file=sys.stderr)
    problem = data_range_problem(sampler, data)
    if problem is not None:
        raise InvalidInput(f"{type(sampler).__name__} cannot sample this {type(model).__name__}: {problem}")
    check_sampler_steps(model, sampler)
