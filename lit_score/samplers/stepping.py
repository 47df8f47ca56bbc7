"""The step-level interface: a sampler that moves x from time t to time s < t in one call.

Samplers whose update needs nothing but (x, t, s) — Euler–Maruyama, reverse diffusion, the Langevin
corrector, ancestral, DDIM, Euler, Heun — expose ``step(score_fn, process, x, t, s, generator) -> (x_s, x_mean)``
(t, s of shape (B,); ``x_mean`` is the update without its fresh noise). Their whole sampling loop is
``sample_on_grid``, and ``PredictorCorrector`` composes any two of them (Song et al. 2021, Algorithm 1). A step whose
corrector runs a Metropolis test reports the share of chains it accepted as ``accepted_fraction``;
``sample_on_grid_with_acceptance`` returns their mean beside x.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from lit_score.processes import NoiseProcess
from lit_score.samplers.base import Sampler, ScoreFn, StepCallback, full_like_t, require_process


@runtime_checkable
class Stepper(Protocol):
    """Anything with ``step(score_fn, process, x, t, s, generator) -> (x_s, x_mean)``."""

    def step(
        self, score_fn: ScoreFn, process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]: ...


def sample_on_grid(
    sampler: Sampler,
    score_fn: ScoreFn,
    x: Tensor,
    process: NoiseProcess | None,
    *,
    generator: torch.Generator | None,
    callback: StepCallback | None,
    progress: bool,
    desc: str,
) -> Tensor:
    """The one loop of every grid sampler: ``sampler.advance`` over every interval of ``sampler.grid``, then
    ``sampler.finish``; the step callback gets ``{step, t, x}`` and what the step reports (``x_mean``, …)."""
    process = require_process(process, sampler)
    grid = sampler.grid(process, x.device)
    for i in sampler.steps(len(grid) - 1, progress, desc):
        t, s = full_like_t(x, grid[i]), full_like_t(x, grid[i + 1])
        x, report = sampler.advance(score_fn, process, x, t, s, generator)
        if callback is not None:
            callback({"step": i, "t": t, "x": x, **report})
    return sampler.finish(score_fn, process, x, grid[-1])


def sample_on_grid_with_acceptance(
    sampler: Sampler,
    score_fn: ScoreFn,
    x: Tensor,
    process: NoiseProcess | None,
    *,
    generator: torch.Generator | None,
    callback: StepCallback | None,
    progress: bool,
    desc: str,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`sample_on_grid`, and ``{"acceptance_rate": the mean of the steps' reported ``accepted_fraction``}``
    (empty when no step ran a Metropolis test): one host read per call."""
    accepted: list[Tensor] = []

    def record(report: dict) -> None:
        if "accepted_fraction" in report:
            accepted.append(report["accepted_fraction"])
        if callback is not None:
            callback(report)

    x = sample_on_grid(sampler, score_fn, x, process, generator=generator, callback=record, progress=progress,
                       desc=desc)
    shares = torch.cat(accepted) if accepted else x.new_zeros(0)
    return x, ({"acceptance_rate": float(shares.mean())} if shares.numel() else {})


__all__ = ["Stepper", "sample_on_grid", "sample_on_grid_with_acceptance"]
