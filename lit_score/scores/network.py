r"""The one boundary between a network's raw output and the score (dpm-solver's ``model_wrapper`` habit).

The parameterisations (targets), their EDM preconditioning and the training target of each are in
:mod:`lit_score.scores.parameterisation` (:class:`~lit_score.scores.parameterisation.Parameterisation`, a base of
:class:`NetworkScore`).

**Learned variance** (Nichol & Dhariwal 2021, "learned_range"): with ``learned_variance`` the network returns twice
the data's channels (dim 1); the first half is the parameterisation, the second v ∈ [−1, 1] per element gives
the interpolation fraction f = (v + 1)/2 of a reverse step t → s's variance between its two bounds,
log Σ = f·log σ²_{t|s} + (1 − f)·log β̃ (:func:`~lit_score.samplers.ancestral.learned_range_variance`), on whatever
grid the sampler uses (iDDPM's respacing recomputes both bounds for the subsequence; so do the samplers here).

**Conditioning and guidance** (Ho & Salimans 2022; Dhariwal & Nichol 2021). :meth:`NetworkScore.with_condition`
returns a view of the same network and process whose every evaluation passes class labels y (B,) to a
class-conditional network (``network(x, c_noise, y)``; a label < 0 or None is the learned null condition ∅):

| symbol | meaning |
|---|---|
| F_y, F_∅ | the raw output with label y and with the null label |
| w | classifier-free guidance scale: F̃ = (1 + w)·F_y − w·F_∅ (w = 0: the conditional model) |
| w_c | classifier guidance scale: s̃ = s + w_c·∇ₓ log p_φ(y | x_t, t) |

Every row of the parameterisation table is affine in F with coefficients that do not depend on the network, so
guiding the raw output is guiding x̂₀, ε̂, the score and the velocity alike: s̃ = (1 + w)·s(x, t, y) − w·s(x, t, ∅) for
every target (one batched network call evaluates F_y and F_∅; a learned variance takes the conditional half, as
GLIDE does; an energy network's E is guided the same way, also in one batched call). Classifier guidance enters
at :meth:`NetworkScore.predict` as ε̃ = ε̂ − σ·w_c·∇ₓ log p_φ(y | x_t, t) (so x̂₀, the score and the velocity follow),
and the energy as E − w_c·log p_φ. A sampler's NFE counts guided score evaluations (CFG costs two network passes
per evaluation, in one batch).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.processes import NoiseProcess
from lit_score.scores.condition import batch_labels, cfg_combine, conditioned_view
from lit_score.scores.declarations import declared_classes, declares_energy
from lit_score.scores.energy import energy_gradient
from lit_score.scores.function import ScoreFunction
from lit_score.scores.parameterisation import TARGETS, Parameterisation, Target
from lit_score.utils import append_dims

__all__ = ["TARGETS", "NetworkScore", "Target"]


class NetworkScore(Parameterisation, nn.Module, ScoreFunction):
    """Turns ``network(x, c_noise(t))`` into score(x, t), denoise(x, t) (x̂₀), eps(x, t) and velocity(x, t).

    Args:
        network: ``network(x, c_noise)`` with output shaped like x.
        process: the noise process.
        target: the parameterisation (:mod:`lit_score.scores.parameterisation`).
        scale_by_sigma: with target ``score``, the output divided by σ(t) (Song & Ermon 2020).
        sigma_data: σ_d of target ``edm``: the data's standard deviation (EDM's 0.5 for images in [−1, 1]).
        learned_variance: the network also outputs the variance interpolation v (2× the channels; module docstring).

    A view made by :meth:`with_condition` also holds ``labels``, ``guidance_scale`` and a ``classifier``.
    """

    #: class labels (B,) every evaluation passes to the network (None: unconditional); set by ``with_condition``
    labels: Tensor | None = None
    #: classifier-free guidance scale w
    guidance_scale: float = 0.0
    #: ``classifier.log_prob(x, t, y) -> (B,)`` = log p_φ(y | x_t, t) for classifier guidance, with scale w_c
    classifier = None
    classifier_scale: float = 0.0

    def __init__(
        self,
        network: nn.Module,
        process: NoiseProcess,
        target: Target = "eps",
        scale_by_sigma: bool = False,
        sigma_data: float = 0.5,
        learned_variance: bool = False,
    ):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}: use {', '.join(TARGETS)}")
        if scale_by_sigma and target != "score":
            raise ValueError("scale_by_sigma only applies to target='score'")
        check_number("sigma_data", sigma_data, gt=0.0)
        self.network, self.process, self.target, self.scale_by_sigma = network, process, target, scale_by_sigma
        self.sigma_data = float(sigma_data)
        self.learned_variance = bool(learned_variance)

    def with_condition(
        self,
        labels: Tensor | None,
        guidance_scale: float = 0.0,
        classifier=None,
        classifier_scale: float = 0.0,
    ) -> NetworkScore:
        """A view of this score model (same network, process and parameters) conditioned on class ``labels`` (B,),
        with classifier-free guidance scale ``guidance_scale`` and/or classifier guidance by ``classifier`` (an
        object with ``log_prob(x, t, y) -> (B,)``) at ``classifier_scale`` (module docstring)."""
        return conditioned_view(self, labels, guidance_scale, classifier, classifier_scale,
                                num_classes=self.num_classes,
                                network=type(self.network).__name__, what="network")

    @property
    def num_classes(self) -> int:
        """K of a class-conditional network (its declared ``num_classes``), 0 for an unconditional one."""
        return declared_classes(self.network)

    @property
    def guided(self) -> bool:
        """Whether evaluations are guided (the raw output then differs from what the score and x̂₀ use)."""
        return bool(self.classifier_scale) and self.classifier is not None

    def batch_labels(self, x: Tensor) -> Tensor:
        """The view's labels as (B,) for the batch ``x`` (a single label is repeated), checked against its size."""
        return batch_labels(self.labels, x)

    def _labels_for(self, x: Tensor) -> Tensor | None:
        """The labels the network takes (None on an unconditional view, and when only a classifier is guided by
        them: an unconditional network then gets none)."""
        if self.labels is None or not self.num_classes:
            return None
        return self.batch_labels(x)

    def repeated(self, times: int) -> NetworkScore:
        """This view for a batch repeated ``times`` times along dim 0 (``x.repeat(times, …)``): its labels repeated
        alike (the model itself when unconditional)."""
        if self.labels is None or self.labels.ndim == 0:
            return self
        view = copy.copy(self)
        object.__setattr__(view, "labels", self.labels.repeat(times))
        return view

    def network_output(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        """The network's raw output at a network input and noise conditioning given directly (a loss that conditions
        on something other than ``process.c_noise(t)``, e.g. VDM's normalised γ), with the view's labels and guidance:
        (1 + w)·F_y − w·F_∅ on the whole output."""
        out, out_null = self._network(x_in, c_noise)
        return cfg_combine(out, out_null, self.guidance_scale)

    def _network(self, x_in: Tensor, c_noise: Tensor, c_noise_s: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(F_y, F_∅ or None): the raw network output with the view's labels, and with the null label when
        classifier-free guidance is on (both from one batched call); ``c_noise_s``: a two-time network's target-time
        conditioning (:class:`~lit_score.scores.flow_map.FlowMapScore`), None for one time."""
        target = {} if c_noise_s is None else {"s": c_noise_s}
        labels = self._labels_for(x_in)
        if labels is None:
            return self.network(x_in, c_noise, **target), None
        if not self.guidance_scale:
            return self.network(x_in, c_noise, labels, **target), None
        c_noise = torch.broadcast_to(c_noise, x_in.shape[:1])
        if c_noise_s is not None:
            target = {"s": torch.broadcast_to(c_noise_s, x_in.shape[:1]).repeat(2)}
        out = self.network(torch.cat([x_in, x_in]), torch.cat([c_noise, c_noise]),
                           torch.cat([labels, torch.full_like(labels, -1)]), **target)
        return out.chunk(2, dim=0)

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's raw output at (x, t) for the parameterisation (for ``edm``: F at the input c_in·x̃ = c_in·x/α;
        with a learned variance, its first half)."""
        return self.raw_and_variance(x, t)[0]

    def raw_and_variance(self, x: Tensor, t: Tensor, s: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(raw output, variance fraction f = (v + 1)/2 shaped like x, or None without a learned variance) from one
        network evaluation (a two-time network's at target time ``s``; None: one time)."""
        x_in = x
        if self.target == "edm":
            alpha, sigma = self._coefs(x, t)
            x_in = x / (alpha * (sigma**2 / alpha**2 + self.sigma_data**2).sqrt())
        c_noise_s = None if s is None else self.process.c_noise(s)
        out, out_null = self._network(x_in, self.process.c_noise(t), c_noise_s)
        frac = None
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"a learned variance needs 2x the data's {x.shape[1]} channels from the network, got"
                                 f" {out.shape[1]}: set its out_channels / out_dim to {2 * x.shape[1]}")
            out, v = out.chunk(2, dim=1)
            frac = (v + 1) / 2  # the conditional variance (GLIDE guides the mean only)
            out_null = None if out_null is None else out_null.chunk(2, dim=1)[0]
        out = cfg_combine(out, out_null, self.guidance_scale)  # (1 + w)·F_y − w·F_∅
        if self.scale_by_sigma:
            out = out / append_dims(self.process.sigma(t), x)
        return out, frac

    def predict_with_variance(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x̂₀, ε̂, f) from one network evaluation; f is the learned variance's interpolation fraction."""
        if not self.learned_variance:
            raise ValueError("this model has a fixed variance: build it with learned_variance=True (and a network"
                             " with twice the data's channels) to learn one")
        out, frac = self.raw_and_variance(x, t)
        x0, eps = self.predict(x, t, out)
        return x0, eps, frac

    def predict(self, x: Tensor, t: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) from one network evaluation (or from a given raw output ``out``), classifier-guided on a view
        with a classifier: ε̃ = ε̂ − σ·w_c·∇ₓ log p_φ(y | x_t, t)."""
        out = self.raw(x, t) if out is None else out
        x0, eps = self._predict(x, t, out)
        if not self.guided:
            return x0, eps
        alpha, sigma = self._coefs(x, t)
        eps = eps - sigma * self.classifier_scale * self.classifier_gradient(x, t)
        return (x - sigma * eps) / alpha, eps

    def classifier_gradient(self, x: Tensor, t: Tensor) -> Tensor:
        """∇ₓ log p_φ(y | x_t, t) of the view's classifier at its labels (autograd, under no_grad too)."""

        labels = self.batch_labels(x)
        return -energy_gradient(lambda z, s: -self.classifier.log_prob(z, s, labels), x, t)[1]

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """∇ₓ log p_t(x) = −ε̂/σ."""
        if self.target == "score" and not self.guided:
            return self.raw(x, t)
        return -self.predict(x, t)[1] / append_dims(self.process.sigma(t), x)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """x̂₀ = E[x₀ | x_t] (Tweedie)."""
        return self.predict(x, t)[0]

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """ε̂."""
        return self.predict(x, t)[1]

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity dx/dt = α' x̂₀ + σ' ε̂ (exact at α → 0, unlike the score form)."""
        if self.target == "velocity" and not self.guided:
            return self.raw(x, t)
        x0, eps = self.predict(x, t)
        return append_dims(self.process.alpha_dot(t), x) * x0 + append_dims(self.process.sigma_dot(t), x) * eps

    # --- energies: a network that declares ``has_energy`` (NoiseConditionalEnergy) -------------------------------
    @property
    def has_energy(self) -> bool:
        """Whether E(x, t) is available: the network declares an energy Ẽ whose −∇ₓẼ it returns, and the target is
        one of those for which that output is a gradient field of the score (``score``, ``eps``)."""
        return declares_energy(self.network) and self.target in ("score", "eps")

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        """E(x, t) with −∇ₓE = score(x, t), from the network's Ẽ (raw output −∇ₓẼ): ``score`` → Ẽ, ``score`` with
        ``scale_by_sigma`` → Ẽ/σ, ``eps`` → −Ẽ/σ (since s = −ε̂/σ = ∇Ẽ/σ). This is the one place for that conversion."""
        if not self.has_energy:
            raise ValueError(f"{type(self.network).__name__} with target {self.target!r} defines no energy: use a"
                             " NoiseConditionalEnergy network with target score or eps")
        c_noise, labels = self.process.c_noise(t), self._labels_for(x)
        if labels is None:
            tilde = self.network.energy(x, c_noise)
        elif not self.guidance_scale:
            tilde = self.network.energy(x, c_noise, labels)
        else:  # Ẽ_y and Ẽ_∅ from one batched call, as the raw output
            c_noise = torch.broadcast_to(c_noise, x.shape[:1])
            tilde, null = self.network.energy(torch.cat([x, x]), torch.cat([c_noise, c_noise]),
                                              torch.cat([labels, torch.full_like(labels, -1)])).chunk(2)
            tilde = cfg_combine(tilde, null, self.guidance_scale)
        sigma = self.process.sigma(t)
        energy = -tilde / sigma if self.target == "eps" else (tilde / sigma if self.scale_by_sigma else tilde)
        if self.guided:
            energy = energy - self.classifier_scale * self.classifier.log_prob(x, t, self.batch_labels(x))
        return energy

    def energy_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(E(x, t), score(x, t)) with one backward pass, for Metropolis–Hastings tests."""

        energy, grad = energy_gradient(self.energy, x, t)
        return energy.detach(), -grad

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x, t)
