"""Likelihood estimators as objects a family declares: ``model.likelihood_methods(dequantize)`` lists the ones that
apply to it (the first is the default), each built around the maths it needs (a score and a process, or an energy
and its box), and ``model.likelihood(x, name)`` calls the one named. Nothing switches on the name.

| estimator | ``name`` | what it computes | one log Z for the set |
|---|---|---|---|
| :class:`ProbabilityFlow` | ``pf_ode`` | exact NLL by the probability-flow ODE (:func:`log_likelihood`) | no |
| :class:`VariationalBound` | ``vlb`` | DDPM's discrete bound on 8-bit data (:func:`ddpm_vlb`), an upper bound | no |
| :class:`EnergyQuadrature` | ``quadrature`` | an EBM's density normalised by a grid sum on its box (D ≤ 2) | yes |
| :class:`EnergyAIS` | ``ais`` | E(x) + log Ẑ, Ẑ by annealed importance sampling (Neal 2001) | yes |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from lit_score.metrics.ais import ais_log_partition
from lit_score.metrics.likelihood import LikelihoodEstimate, ddpm_vlb, energy_nll, log_likelihood
from lit_score.processes import NoiseProcess
from lit_score.samplers.base import ScoreFn


class LikelihoodEstimator:
    """``estimator(x, dequantize, generator, options) -> LikelihoodEstimate`` (per-sample NLL of ``x``)."""

    name: ClassVar[str]
    #: one normalising constant for the whole set: callers score the held-out set in one call (in chunks, each chunk
    #: would draw its own log Ẑ)
    normalizes_once: ClassVar[bool] = False

    def __call__(self, x: Tensor, dequantize: str, generator: torch.Generator | None,
                 options: dict) -> LikelihoodEstimate:
        raise NotImplementedError


class ProbabilityFlow(LikelihoodEstimator):
    """Exact NLL along the probability-flow ODE (options: divergence, probe, rtol, fixed_steps, …)."""

    name = "pf_ode"

    def __init__(self, score_fn: ScoreFn, process: NoiseProcess) -> None:
        self.score_fn, self.process = score_fn, process

    def __call__(self, x, dequantize, generator, options):
        return log_likelihood(self.score_fn, self.process, x, dequantize=dequantize, generator=generator,
                              **options).estimate()


class VariationalBound(LikelihoodEstimator):
    """DDPM's bound on the 8-bit data itself (options: variance — default the model's learned one or β̃ —,
    clip_denoised); the data is put on the 8-bit grid the bound's bins are."""

    name = "vlb"

    def __init__(self, score_model, process: NoiseProcess) -> None:
        self.score_model, self.process = score_model, process

    def __call__(self, x, dequantize, generator, options):
        options = dict(options)
        default = "learned" if self.score_model.learned_variance else "beta_tilde"
        variance = options.pop("variance", default)
        x = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
        result = ddpm_vlb(self.score_model, self.process, x, variance=variance, generator=generator, **options)
        return result.estimate(x[0].numel(), variance)


class EnergyQuadrature(LikelihoodEstimator):
    """An EBM's NLL with Z by the midpoint rule on its box (option ``resolution``: cells per axis, default 512)."""

    name = "quadrature"
    normalizes_once = True

    def __init__(self, energy: Callable[[Tensor], Tensor], box: tuple[float, float]) -> None:
        self.energy, self.box = energy, box

    def __call__(self, x, dequantize, generator, options):
        return energy_nll(self.energy, x, self.box, resolution=int(options.get("resolution", 512)))


class EnergyAIS(LikelihoodEstimator):
    """E(x) + log Ẑ with log Z by :func:`~lit_score.metrics.ais.ais_log_partition` from a uniform base on the box (a
    Gaussian one on an infinite box); options ``num_chains`` 256, ``num_levels`` 1000, ``steps_per_level`` 1,
    ``step_size`` 0.05, ``schedule``, ``adapt``, ``bootstrap``. The settings record log Ẑ's bootstrap interval (it
    shifts every sample alike); points outside the box get an infinite NLL."""

    name = "ais"
    normalizes_once = True
    options = frozenset({"num_chains", "num_levels", "steps_per_level", "step_size", "schedule", "adapt", "bootstrap"})

    def __init__(self, energy: Callable[[Tensor], Tensor], box: tuple[float, float], shape: tuple[int, ...],
                 device: torch.device) -> None:
        self.energy, self.box, self.shape, self.device = energy, box, shape, device

    def __call__(self, x, dequantize, generator, options):
        unknown = sorted(set(options) - self.options)
        if unknown:
            raise ValueError(f"unknown AIS options {unknown}: use {sorted(self.options)}")
        finite = all(math.isfinite(v) for v in self.box)
        result = ais_log_partition(self.energy, self.shape, base="uniform" if finite else "gaussian",
                                   bounds=self.box if finite else None, generator=generator, device=self.device,
                                   **options)
        flat = x.reshape(x.shape[0], -1)
        with torch.no_grad():
            nats = self.energy(x).double() + result.log_z
        outside = ((flat < self.box[0]) | (flat > self.box[1])).any(dim=1)
        nats = torch.where(outside, torch.full_like(nats, math.inf), nats)
        settings = {**result.settings, "log_partition": result.log_z, "log_partition_interval": list(result.interval),
                    "weights_ess": result.weights_ess, "acceptance": result.acceptance, "outside": int(outside.sum())}
        return LikelihoodEstimate("ais", nats, nats / (flat.shape[1] * math.log(2)), "none", result.nfe + 1, settings)


__all__ = ["EnergyAIS", "EnergyQuadrature", "LikelihoodEstimator", "ProbabilityFlow", "VariationalBound"]
