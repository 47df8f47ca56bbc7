"""Gaussian mixtures with exact density and score, clean and noised by any process (the analytic oracle).

Notation: p(x0) = sum_k w_k N(x0; mu_k, diag(s_k^2)). Under x_t = alpha(t) x0 + sigma(t) eps the marginal
stays a mixture, p_t(x) = sum_k w_k N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)), so log p_t, its score
and Tweedie's E[x0 | x_t] = (x + sigma^2 score) / alpha are exact for every process (DESIGN.md section 5).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from einops import rearrange
from torch import Tensor

from lit_score.checks import check_number
from lit_score.data.base import GenerativeDataModule, TensorData
from lit_score.scores.function import ScoreFunction
from lit_score.utils import append_dims


class Marginals(Protocol):
    """Anything with the marginal coefficients of x_t = alpha(t) x0 + sigma(t) eps (e.g. a NoiseProcess)."""

    def alpha(self, t: Tensor) -> Tensor: ...

    def sigma(self, t: Tensor) -> Tensor: ...


class GaussianMixtureDistribution:
    """A diagonal Gaussian mixture in D dimensions with exact sampling, log-density and score."""

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor) -> None:
        means = torch.as_tensor(means, dtype=torch.get_default_dtype())
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=means.dtype)
        weights = torch.as_tensor(weights, dtype=means.dtype)
        if stds.ndim == 1:
            stds = rearrange(stds, "k -> k 1").expand(k, d)
        if stds.shape != (k, d) or weights.shape != (k,):
            raise ValueError(f"expected stds (K,) or (K, D) and weights (K,) for means {(k, d)}, "
                             f"got {tuple(stds.shape)} and {tuple(weights.shape)}")
        if (stds <= 0).any() or (weights < 0).any():
            raise ValueError("stds must be positive and weights non-negative")
        self.means, self.stds = means, stds.contiguous()
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        """Dimension D of a sample."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        """Number K of components."""
        return self.means.shape[0]

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.2, dim: int = 2) -> GaussianMixtureDistribution:
        """``k`` equal components of std ``std`` with means on a circle of ``radius`` in the first two axes."""
        if dim < 2:
            raise ValueError(f"a ring needs dim >= 2, got {dim}")
        angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = torch.zeros(k, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
        return cls(means.float(), torch.full((k,), std), torch.ones(k))

    @classmethod
    def random(
        cls, k: int, dim: int, generator: torch.Generator | None = None, scale: float = 2.0
    ) -> GaussianMixtureDistribution:
        """Random means N(0, scale^2), diagonal stds U[0.1, 0.3] * scale, weights U[0.5, 1.5] (then normalised)."""
        means = scale * torch.randn(k, dim, generator=generator)
        stds = (0.1 + 0.2 * torch.rand(k, dim, generator=generator)) * scale
        weights = 0.5 + torch.rand(k, generator=generator)
        return cls(means, stds, weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples (n, D)."""
        return self.sample_with_components(n, generator)[0]

    def sample_with_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` exact samples (n, D) and the component (n,) each came from (the draws of :meth:`sample`)."""
        index = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[index] + self.stds[index] * eps, index

    def component(self, k: int) -> GaussianMixtureDistribution:
        """Component k alone: the class-conditional distribution p(x | y = k)."""
        return GaussianMixtureDistribution(self.means[k : k + 1], self.stds[k : k + 1], torch.ones(1))

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density (n,) of x (n, ...), flattened to (n, D)."""
        one, zero = torch.ones(x.shape[0], device=x.device), torch.zeros(x.shape[0], device=x.device)
        return self._log_prob_and_score(x, one, zero)[0]

    def score(self, x: Tensor) -> Tensor:
        """Exact score grad_x log p(x), shaped like x."""
        one, zero = torch.ones(x.shape[0], device=x.device), torch.zeros(x.shape[0], device=x.device)
        return self._log_prob_and_score(x, one, zero)[1]

    def noised(self, process: Marginals) -> NoisedMixture:
        """The marginals p_t of x_t = alpha(t) x0 + sigma(t) eps under ``process`` (any object with alpha/sigma)."""
        return NoisedMixture(self, process)

    def _log_prob_and_score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """log p_t(x) (B,) and its score (shaped like x) for per-sample alpha, sigma (B,)."""
        logits, diff, var = self._component_terms(x, alpha, sigma)
        log_p = torch.logsumexp(logits, dim=1)
        responsibility = torch.softmax(logits, dim=1)  # posterior over components, (B, K)
        score = -(rearrange(responsibility, "b k -> b k 1") * diff / var).sum(dim=1)
        return log_p, score.reshape(x.shape).to(x.dtype if x.is_floating_point() else logits.dtype)

    def log_posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log p(y = k | x_t = x), (B, K): the exact noise-conditional classifier of the components."""
        logits = self._component_terms(x, alpha, sigma)[0]
        return logits - torch.logsumexp(logits, dim=1, keepdim=True)

    def _component_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log w_k + log N(x; α μ_k, α² s_k² + σ²) as (B, K), x − α μ_k as (B, K, D), the variances (B, K, D))."""
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        flat = rearrange(x, "b ... -> b (...)").to(dtype)
        if flat.shape[1] != self.dim:
            raise ValueError(f"samples of {flat.shape[1]} values for a mixture of dimension {self.dim}")
        mu, s, w = (p.to(device=x.device, dtype=dtype) for p in (self.means, self.stds, self.weights))
        alpha = rearrange(alpha.to(dtype), "b -> b 1 1")
        sigma = rearrange(sigma.to(dtype), "b -> b 1 1")
        mean = alpha * mu  # (B, K, D)
        var = alpha**2 * s**2 + sigma**2  # (B, K, D)
        diff = rearrange(flat, "b d -> b 1 d") - mean
        log_component = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(dim=-1)  # (B, K)
        return torch.log(w) + log_component, diff, var


class NoisedMixture(ScoreFunction):
    """The noised marginals p_t of a Gaussian mixture under a process; a ScoreFn via ``score_fn(x, t)``."""

    def __init__(self, distribution: GaussianMixtureDistribution, process: Marginals) -> None:
        self.distribution = distribution
        self.process = process

    def _alpha_sigma(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        return alpha.to(device=x.device).expand(x.shape[0]), sigma.to(device=x.device).expand(x.shape[0])

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact log p_t(x) (B,) for x (B, ...) and t (B,) or a scalar."""
        return self.distribution._log_prob_and_score(x, *self._alpha_sigma(x, t))[0]

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact score grad_x log p_t(x), shaped like x."""
        return self.distribution._log_prob_and_score(x, *self._alpha_sigma(x, t))[1]

    __call__ = score

    def log_posterior(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact log p(y = k | x_t = x), (B, K): which component x_t came from."""
        return self.distribution.log_posterior(x, *self._alpha_sigma(x, t))

    def log_prob_class(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        """log p(y | x_t = x) (B,) for labels y (B,): the exact classifier of classifier guidance (``log_prob``
        of a noise-conditional classifier)."""
        return self.log_posterior(x, t).gather(1, y.long().reshape(-1, 1).to(x.device)).squeeze(1).to(x.dtype)

    def denoise(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact E[x0 | x_t = x] by Tweedie's formula, (x + sigma^2 score) / alpha."""
        alpha, sigma = self._alpha_sigma(x, t)
        score = self.distribution._log_prob_and_score(x, alpha, sigma)[1]
        return (x + append_dims(sigma.to(x.dtype), x) ** 2 * score) / append_dims(alpha.to(x.dtype), x)

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact E[eps | x_t = x] = -sigma * score."""
        alpha, sigma = self._alpha_sigma(x, t)
        score = self.distribution._log_prob_and_score(x, alpha, sigma)[1]
        return -append_dims(sigma.to(x.dtype), x) * score

    def sample(self, n: int, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples (n, D) of x_t = alpha(t) x0 + sigma(t) eps."""
        x0 = self.distribution.sample(n, generator)
        alpha, sigma = self._alpha_sigma(x0, t)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        return append_dims(alpha.to(x0.dtype), x0) * x0 + append_dims(sigma.to(x0.dtype), x0) * eps


class GaussianMixture(GenerativeDataModule):
    """Samples of a ring-shaped Gaussian mixture whose exact density and score are ``.distribution``; with
    ``labels: true`` the component of each sample is its class."""

    def __init__(
        self,
        num_components: int = 8,
        dim: int = 2,
        radius: float = 2.0,
        std: float = 0.2,
        num_samples: int = 20000,
        val_size: int = 2000,
        batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_size=val_size, seed=seed, labels=labels)
        check_number("num_components", num_components, ge=1, integer=True)
        check_number("dim", dim, ge=1, integer=True)
        check_number("radius", radius, ge=0.0)
        check_number("std", std, gt=0.0)
        check_number("num_samples", num_samples, ge=1, integer=True)
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.distribution = GaussianMixtureDistribution.ring(num_components, radius, std, dim)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(dim,)."""
        return (self.distribution.dim,)

    def setup(self, stage: str | None = None) -> None:
        """Draw the training set, then the validation set, from one generator seeded with ``seed``."""
        generator = self._generator()
        train, self.train_labels = self.distribution.sample_with_components(self.num_samples, generator)
        val, self.val_labels = self.distribution.sample_with_components(self.val_size, generator)
        self.train_dataset, self.val_dataset = TensorData(train), TensorData(val)
        self.reference_dataset = self.train_dataset

    @property
    def num_classes(self) -> int:
        """The mixture's components are its classes."""
        return self.distribution.num_components

    @property
    def can_classify(self) -> bool:
        return True

    def class_log_probs(self, x: Tensor) -> Tensor:
        """The exact posterior over components, log p(y = k | x) (the Bayes classifier)."""
        one = torch.ones(x.shape[0], dtype=torch.float64)
        return self.distribution.log_posterior(x.double().cpu(), one, 0 * one)

    @property
    def has_exact_sampler(self) -> bool:
        return True

    @property
    def has_density(self) -> bool:
        return True

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the mixture."""
        return self.distribution.log_prob(x)

    @property
    def label(self) -> str:
        d = self.distribution
        return f"GaussianMixture-k{d.num_components}-d{d.dim}"

    def reference_samples(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh exact draws (n, dim) from the mixture."""
        return self.distribution.sample(n, generator)
