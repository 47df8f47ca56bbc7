"""The common record of every likelihood estimator: per-sample NLL in nats and bits/dim with how it was obtained."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LikelihoodEstimate:
    """One JSON shape for every family's likelihood: per-sample ``nats`` and ``bits_per_dim`` (B,), labelled with the
    ``estimator`` (``pf_ode``: exact change of variables along the probability-flow ODE; ``vlb``: DDPM's variational
    bound, an upper bound on the NLL; ``quadrature``: an EBM's density normalised by a grid sum), the dequantisation,
    the number of network evaluations and the estimator's own settings."""

    estimator: str
    nats: Tensor
    bits_per_dim: Tensor
    dequantize: str
    nfe: int
    settings: dict[str, object]

    @staticmethod
    def concatenate(parts: list[LikelihoodEstimate]) -> LikelihoodEstimate:
        """One estimate from estimates of consecutive chunks of data (the largest NFE of any chunk)."""
        first = parts[0]
        return LikelihoodEstimate(first.estimator, torch.cat([p.nats for p in parts]),
                                  torch.cat([p.bits_per_dim for p in parts]), first.dequantize,
                                  max(p.nfe for p in parts), first.settings)

    def to_dict(self) -> dict[str, object]:
        """Means with standard errors, and how they were obtained."""
        n = int(self.nats.numel())
        bpd, nats = self.bits_per_dim.double(), self.nats.double()
        sem = (lambda v: float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else None)
        return {
            "estimator": self.estimator,
            "num_samples": n,
            "bits_per_dim": float(bpd.mean()),
            "bits_per_dim_sem": sem(bpd),
            "nats": float(nats.mean()),
            "nats_sem": sem(nats),
            "dequantize": self.dequantize,
            "nfe": self.nfe,
            **self.settings,
        }
