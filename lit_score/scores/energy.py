r"""Energy → score in one autograd helper, so one Langevin sampler serves EBMs and score models; conditional energies
and their composition are energy transforms on top of it.

**Conditioning and guidance.** :meth:`EnergyScore.with_condition` returns a view of the same energy network whose
every evaluation passes class labels y (B,) to a class-conditional network (``energy_net(x, t, y)``; a label < 0 is
the null condition ∅), mirroring :meth:`~lit_score.scores.NetworkScore.with_condition`:

| symbol | meaning |
|---|---|
| E(x, y), E(x, ∅) | the energy with label y and with the null label |
| w | classifier-free guidance: Ẽ = (1 + w)·E(x, y) − w·E(x, ∅) (one batched network call; w = 0: E(x, y)) |
| w_c | classifier guidance: Ẽ = E − w_c·log p_φ(y \| x, t) (``classifier.log_prob(x, t, y)``) |

An EBM's t is None: a noise-conditional classifier (one with a ``process``) is then asked at its t_min. Both are
energies, so the guided score is −∇ₓẼ and MALA / HMC can use Ẽ for their accept/reject test.

**Composition** (Du, Li & Mordatch 2020, "Compositional visual generation with energy based models"):
:class:`ComposedEnergy` is E(x, t) = Σᵢ wᵢ·Eᵢ(x, t[, yᵢ]), the product of experts ∏ pᵢ(x)^{wᵢ}; terms of one
conditional model with different labels give concept conjunction, a negative weight concept negation. It offers
``energy``, ``energy_and_score`` and ``score``, so every sampler that takes a ScoreFn (Langevin, ULA, MALA, HMC,
AnnealedMCMC) samples it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.scores.condition import batch_labels, cfg_combine, conditioned_view
from lit_score.scores.declarations import declared_classes, declared_process
from lit_score.scores.function import ScoreFunction, as_score_function


def energy_gradient(energy_fn, x: Tensor, t: Tensor | None = None, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """(E(x), ∇ₓE(x)) by autograd; works under ``no_grad`` and ``inference_mode`` (it clones its input)."""
    with torch.inference_mode(False), torch.enable_grad():
        if not create_graph:
            x = x.detach().clone()
        if not x.requires_grad:
            x = x.requires_grad_(True)
        energy = energy_fn(x, t)
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
    return energy, grad


def _twice(t: Tensor | None) -> Tensor | None:
    """t for a batch stacked twice (a per-sample (B,) time is repeated; None and a scalar stay)."""
    return t if t is None or t.ndim == 0 else torch.cat([t, t])


class EnergyScore(nn.Module, ScoreFunction):
    """Score of p ∝ exp(−E): s(x) = −∇ₓE(x). ``create_graph`` only when a loss backpropagates through s.

    A view made by :meth:`with_condition` also holds ``labels``, ``guidance_scale`` and a ``classifier``.
    """

    #: class labels (B,) or one label () every evaluation passes to the network (None: unconditional)
    labels: Tensor | None = None
    #: classifier-free guidance scale w
    guidance_scale: float = 0.0
    #: ``classifier.log_prob(x, t, y) -> (B,)`` = log p_φ(y | x, t) for classifier guidance, with scale w_c
    classifier = None
    classifier_scale: float = 0.0
    has_energy = True
    #: an energy of the data, not of a noise process
    process = None

    def __init__(self, energy_net: nn.Module, create_graph: bool = False) -> None:
        super().__init__()
        self.energy_net, self.create_graph = energy_net, create_graph

    @property
    def num_classes(self) -> int:
        """The energy network's ``num_classes`` (0: unconditional)."""
        return declared_classes(self.energy_net)

    def with_condition(
        self,
        labels: Tensor | int | None,
        guidance_scale: float = 0.0,
        classifier=None,
        classifier_scale: float = 0.0,
    ) -> EnergyScore:
        """A view of this energy (same network and parameters) conditioned on class ``labels`` (B,) (or one label for
        every sample), with classifier-free guidance scale ``guidance_scale`` and/or classifier guidance by
        ``classifier`` (``log_prob(x, t, y) -> (B,)``) at ``classifier_scale`` (module docstring)."""
        return conditioned_view(self, labels, guidance_scale, classifier, classifier_scale,
                                num_classes=self.num_classes, network=type(self.energy_net).__name__,
                                what="energy")

    def energy(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """E(x), shape (B,); on a view, the conditional and guided Ẽ(x, y) of the module docstring."""
        if self.labels is None:
            return self.energy_net(x, t)
        labels = batch_labels(self.labels, x)
        if not self.num_classes:  # an unconditional energy guided by a classifier only
            energy = self.energy_net(x, t)
        elif self.guidance_scale:
            both = self.energy_net(torch.cat([x, x]), _twice(t), torch.cat([labels, torch.full_like(labels, -1)]))
            energy, null = both.chunk(2)
            energy = cfg_combine(energy, null, self.guidance_scale)  # (1 + w)·E(x, y) − w·E(x, ∅)
        else:
            energy = self.energy_net(x, t, labels)
        if self.classifier_scale:
            energy = energy - self.classifier_scale * self.classifier.log_prob(x, self._classifier_time(t), labels)
        return energy

    def _classifier_time(self, t: Tensor | None) -> Tensor | float | None:
        """The time the classifier is asked at: the energy's t; for an EBM (t = None) a noise-conditional classifier's
        t_min (its cleanest level; one with a ``process``), else None."""
        process = declared_process(self.classifier)
        return process.t_min if t is None and process is not None else t

    def energy_and_score(self, x: Tensor, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(E(x, t), −∇ₓE(x, t)) from one forward and one backward pass (what MALA and HMC need per step)."""
        energy, grad = energy_gradient(self.energy, x, t, create_graph=self.create_graph)
        return (energy if self.create_graph else energy.detach()), -grad

    def score(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """−∇ₓE(x, t)."""
        return -energy_gradient(self.energy, x, t, create_graph=self.create_graph)[1]

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.score(x, t)


def as_energy(source):
    """The energy object of ``source``: a model with an energy (its ``score_model``: an EBM, or a diffusion model
    with a NoiseConditionalEnergy network), or anything with ``energy(x, t)`` (an EnergyScore, a NetworkScore with
    ``has_energy``, a ComposedEnergy); refused in one line otherwise."""
    declared = as_score_function(source)
    energy = as_score_function(declared.score_model) if declared.score_model is not None else declared
    if not energy.has_energy:
        raise ValueError(f"{type(source).__name__} has no energy E(x) to compose: use an EBM, an EnergyScore, or a"
                         " diffusion model with a NoiseConditionalEnergy network")
    return energy


class ComposedEnergy(ScoreFunction):
    r"""E(x, t) = Σᵢ wᵢ·Eᵢ(x, t[, yᵢ]): a weighted sum of energies (product of experts; Du, Li & Mordatch 2020).

    p(x) ∝ ∏ᵢ pᵢ(x)^{wᵢ}: positive weights are a conjunction (every expert must agree), a negative weight a negation.
    A ScoreFn with an energy (``has_energy``), so Langevin, ULA, MALA, HMC and AnnealedMCMC sample it unchanged; t is
    passed to every term (an EBM's energy ignores it, a noise-conditional energy needs a sampler with a process).

    Args:
        terms: ``(source, weight)`` or ``(source, weight, label)`` per expert; ``source`` is anything
            :func:`as_energy` takes (an EBM, an EnergyScore, a view with guidance, a NetworkScore with an energy,
            another ComposedEnergy), ``label`` a class (−1: the null label) or labels (B,) for a conditional source,
            applied by its ``with_condition``.
        create_graph: keep the graph of the score (only for a loss that backpropagates through it).
    """

    has_energy = True
    #: t is passed to every term; the composition itself is of no one noise process
    process = None

    def __init__(self, terms: Sequence[tuple], create_graph: bool = False) -> None:
        if not terms:
            raise ValueError("a composed energy needs at least one (energy, weight[, label]) term")
        self.energies, self.weights = [], []
        for term in terms:
            if not isinstance(term, (tuple, list)) or len(term) not in (2, 3):
                raise ValueError(f"each term is (energy, weight) or (energy, weight, label), got {term!r}")
            source, weight, label = (*term, None)[:3]
            check_number("weight", weight)
            energy = as_energy(source)
            if label is not None:
                if energy.with_condition is None:
                    raise ValueError(f"a label needs a conditional energy; {type(energy).__name__} takes none")
                energy = as_score_function(energy.with_condition(torch.as_tensor(label)))
            self.energies.append(energy)
            self.weights.append(float(weight))
        self.create_graph = create_graph

    @classmethod
    def of_labels(cls, source, labels: Sequence[int], weights: Sequence[float] | None = None) -> ComposedEnergy:
        """Σₖ wₖ·E(x, yₖ) of one conditional model (concept conjunction; weights 1 by default)."""
        weights = [1.0] * len(labels) if weights is None else list(weights)
        if len(weights) != len(labels):
            raise ValueError(f"{len(weights)} weights for {len(labels)} labels: give one weight per label")
        return cls([(source, w, int(y)) for y, w in zip(labels, weights)])

    def energy(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Σᵢ wᵢ·Eᵢ(x, t), shape (B,)."""
        total = None
        for energy, weight in zip(self.energies, self.weights):
            term = weight * energy.energy(x, t)
            total = term if total is None else total + term
        return total

    def energy_and_score(self, x: Tensor, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(E(x, t), −∇ₓE(x, t)) from one backward pass through every term."""
        energy, grad = energy_gradient(self.energy, x, t, create_graph=self.create_graph)
        return (energy if self.create_graph else energy.detach()), -grad

    def score(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """−Σᵢ wᵢ·∇ₓEᵢ(x, t)."""
        return -energy_gradient(self.energy, x, t, create_graph=self.create_graph)[1]

    __call__ = score

    def __repr__(self) -> str:
        def name(energy) -> str:
            labels = energy.labels
            return type(energy).__name__ + ("" if labels is None else f"[y={labels.tolist()}]")

        parts = ", ".join(f"{w:g}·{name(e)}" for e, w in zip(self.energies, self.weights))
        return f"ComposedEnergy({parts})"
