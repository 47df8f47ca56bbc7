"""The likelihood interface of a generative model: the estimators a family declares (objects of
:mod:`lit_score.metrics.estimators`), chosen by name, run in eval mode and full precision, in one result shape
(:class:`~lit_score.metrics.likelihood.LikelihoodEstimate`)."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.metrics.estimators import LikelihoodEstimator
from lit_score.metrics.likelihood import LikelihoodEstimate
from lit_score.utils import full_precision


class Likelihood:
    """What :class:`~lit_score.models.GenerativeModule` offers for likelihoods: a family overrides
    :meth:`likelihood_methods`; the rest is shared."""

    def likelihood_methods(self, dequantize: str = "none") -> tuple[LikelihoodEstimator, ...]:
        """The likelihood estimators this model offers (the first is the default) for data that is continuous
        (``dequantize="none"``) or 8-bit (``"uniform8bit"``), as objects (:mod:`lit_score.metrics.estimators`); none
        unless a family declares some."""
        return ()

    def likelihood_estimators(self, dequantize: str = "none") -> tuple[str, ...]:
        """The names of :meth:`likelihood_methods` (what ``--likelihood_estimator`` takes)."""
        return tuple(method.name for method in self.likelihood_methods(dequantize))

    def likelihood_normalizes_once(self, estimator: str) -> bool:
        """Whether the estimator named estimates one normalising constant for the whole set (an EBM's log Z by
        quadrature or AIS) rather than a bound per sample: callers then score the held-out set in one call, so
        every sample shares one log Ẑ."""
        methods = self.likelihood_methods("none") + self.likelihood_methods("uniform8bit")
        return any(method.name == estimator and method.normalizes_once for method in methods)

    def likelihood(
        self,
        x: Tensor,
        estimator: str | None = None,
        *,
        dequantize: str = "none",
        generator: torch.Generator | None = None,
        **options,
    ) -> LikelihoodEstimate:
        """Per-sample NLL of data ``x`` by one of :meth:`likelihood_estimators`, in eval mode, in one JSON shape."""
        available = self.likelihood_estimators(dequantize)
        estimator = estimator or (available[0] if available else None)
        if estimator is None or estimator not in available:
            offered = ", ".join(available) or "none"
            raise ValueError(f"{type(self).__name__} offers no likelihood estimator {estimator!r} for this data"
                             f" (dequantize={dequantize}); it offers: {offered}")
        was_training = self.training
        self.eval()
        try:
            with full_precision():  # an ODE solve / bound summed over steps: never in bf16, even in a bf16-mixed run
                return self.estimate_likelihood(estimator, x.to(self.device), dequantize, generator, options)
        finally:
            self.train(was_training)

    def estimate_likelihood(self, estimator: str, x: Tensor, dequantize: str, generator, options: dict):
        """The declared estimator named ``estimator`` applied to ``x`` (no eval-mode or precision handling: that is
        :meth:`likelihood`'s)."""
        method = next((m for m in self.likelihood_methods(dequantize) if m.name == estimator), None)
        if method is None:
            raise ValueError(f"{type(self).__name__} offers no likelihood estimator {estimator!r} for this data")
        return method(x, dequantize, generator, options)
