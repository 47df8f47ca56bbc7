"""Likelihoods, one module per way of computing them, all reported as one :class:`LikelihoodEstimate`.

| module | computes | for |
|---|---|---|
| ``pf_ode`` | exact NLL by the probability-flow ODE (:func:`log_likelihood`) | every score model |
| ``variational_bound`` | DDPM's discrete bound on 8-bit data (:func:`ddpm_vlb`), an upper bound | DDPM |
| ``quadrature`` | an EBM's density normalised by a grid sum (:func:`energy_nll`) | EBMs, D ≤ 2 |
| ``estimate`` | the common record (:class:`LikelihoodEstimate`) | all of them |

Annealed importance sampling of an EBM's log Z is :mod:`lit_score.metrics.ais`; the estimator objects a family
declares are :mod:`lit_score.metrics.estimators`.
"""

from lit_score.metrics.likelihood.estimate import LikelihoodEstimate
from lit_score.metrics.likelihood.pf_ode import (
    LikelihoodResult,
    dequantize_8bit,
    draw_probes,
    exact_divergence,
    hutchinson_divergence,
    log_likelihood,
)
from lit_score.metrics.likelihood.quadrature import energy_nll, quadrature_log_partition
from lit_score.metrics.likelihood.variational_bound import VLBResult, ddpm_vlb

__all__ = ["LikelihoodEstimate", "LikelihoodResult", "VLBResult", "ddpm_vlb", "dequantize_8bit", "draw_probes",
           "energy_nll", "exact_divergence", "hutchinson_divergence", "log_likelihood", "quadrature_log_partition"]
