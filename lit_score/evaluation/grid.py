"""Making a grid file for a trained model: the one library function behind ``lit-score grid`` (orchestration only; the
maths is :mod:`lit_score.processes.grids`, :mod:`lit_score.samplers.schedules` and
:mod:`lit_score.metrics.likelihood.strided`).

| method | grid | needs |
|---|---|---|
| a closed form (``kl_optimal``, ``karras``, ``logsnr``, …) | ``process.time_grid(n, spacing)`` | the process only |
| ``fit`` | the sampler's n-step grid of least terminal error against its fine solve (:func:`fit_grid`) | prior draws |
| ``watson`` | the best n + 1 evaluations of the model's N for DDPM's bound (Watson et al. 2021) | held-out data |
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_score.metrics.likelihood.strided import stride_costs, strided_bound
from lit_score.models import GenerativeModule
from lit_score.processes import SPACINGS, StoredGrid
from lit_score.samplers import Sampler
from lit_score.samplers.schedules import closed_form_grid, fit_grid

METHODS = (*SPACINGS, "fit", "watson")


def make_grid(
    model: GenerativeModule,
    method: str,
    steps: int,
    *,
    sampler: Sampler | None = None,
    data: Tensor | None = None,
    num_samples: int = 512,
    seed: int = 0,
    reference_steps: int = 512,
    variance: str = "beta_tilde",
    protocol: dict[str, Any] | None = None,
) -> StoredGrid:
    """A grid of ``steps`` intervals for ``model`` made by ``method`` (module docstring), with its protocol.

    ``fit`` runs ``sampler`` (its num_steps set to ``steps`` + its final denoise) from ``num_samples`` prior draws of
    ``seed``; ``watson`` takes ``data`` (held-out samples) and the fixed ``variance`` of the strided steps (the grid is
    for Ancestral with that variance, num_steps = steps + 1, denoise on)."""
    process = model.process
    if process is None:
        raise ValueError(f"{type(model).__name__} has no noise process, so no time grid: use a diffusion, score or"
                         " flow model")
    if method not in METHODS:
        raise ValueError(f"unknown grid method {method!r}: use one of {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"a grid needs steps >= 1, got {steps}")
    record = dict(protocol or {})
    if method in SPACINGS:
        grid = closed_form_grid(process, steps, method)
        return StoredGrid.for_process(process, torch.tensor(grid.times, dtype=torch.float64),
                                      {**grid.protocol, **record})
    score_fn = model.conditioned_score(None)
    if method == "fit":
        if sampler is None:
            raise ValueError("--method fit needs a sampler (--sampler.class_path …): the grid is fitted to it")
        sampler = sampler.with_settings(num_steps=steps + int(sampler.denoise))
        generator = torch.Generator(device=process.device).manual_seed(seed)
        x_T = process.prior_sample((num_samples, *model.require_shape()), generator=generator)
        return fit_grid(score_fn, process, sampler, x_T, reference_steps=reference_steps,
                        protocol={"seed": seed, **record})
    if data is None:
        raise ValueError("--method watson needs held-out data to estimate the bound's terms")
    generator = torch.Generator(device=data.device).manual_seed(seed)
    costs = stride_costs(score_fn, process, data, variance=variance, generator=generator)
    result = strided_bound(costs, steps + 1)
    grid_protocol = {"variance": variance, "num_samples": data.shape[0], "seed": seed,
                     "sampler": {"class_path": "lit_score.samplers.Ancestral",
                                 "init_args": {"num_steps": steps + 1, "denoise": True, "variance": variance}},
                     **record}
    return result.grid(process, grid_protocol)


__all__ = ["METHODS", "make_grid"]
