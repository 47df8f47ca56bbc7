"""The one place where a score model becomes a class-conditional, guided view (``with_condition`` of
:class:`~lit_score.scores.network.NetworkScore` and :class:`~lit_score.scores.energy.EnergyScore`).

| symbol | meaning | attribute of the view |
|---|---|---|
| y | class labels (B,), or one label for every sample; −1 is the null label ∅ | ``labels`` |
| w | classifier-free guidance scale: (1 + w)·s(x, t, y) − w·s(x, t, ∅) | ``guidance_scale`` |
| p_φ(y given x_t, t) | a noise-conditional classifier (``log_prob(x, t, y) -> (B,)``) | ``classifier`` |
| w_c | classifier guidance scale: s + w_c·∇ₓ log p_φ(y given x_t, t) | ``classifier_scale`` |

A view is a shallow copy: it shares the network's modules, parameters and buffers, so nothing is registered twice
and the view trains, saves and moves with its source.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from lit_score.checks import check_number


def cfg_combine(conditional: Tensor, null: Tensor | None, guidance_scale: float) -> Tensor:
    """Classifier-free guidance on any quantity affine in the network output (raw F, an energy):
    (1 + w)·conditional − w·null; the conditional alone when there is no null evaluation."""
    return conditional if null is None else conditional + guidance_scale * (conditional - null)


def batch_labels(labels: Tensor, x: Tensor) -> Tensor:
    """Labels as (B,) for the batch ``x`` (a single label is repeated), checked against its size."""
    labels = labels.to(x.device)
    if labels.ndim == 0:
        labels = labels.expand(x.shape[0])
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{labels.shape[0]} class labels for a batch of {x.shape[0]}: pass one label per sample")
    return labels


def conditioned_view(score, labels: Tensor | int | None, guidance_scale: float, classifier, classifier_scale: float,
                     *, num_classes: int, network: str, what: str):
    """Check the condition against the model (``num_classes`` of its ``network``, a ``what`` such as "network" or
    "energy") with one-line errors, then return a view of ``score`` carrying it."""
    check_number("guidance_scale", guidance_scale)
    check_number("classifier_scale", classifier_scale)
    if labels is None and (guidance_scale or classifier_scale):
        raise ValueError("guidance needs class labels: pass --class_label (or labels) with a guidance scale")
    if classifier_scale and classifier is None:
        raise ValueError("classifier_scale needs a classifier (a noise-conditional classifier checkpoint)")
    if labels is not None and not num_classes and classifier is None:
        raise ValueError(f"this model's {network} is unconditional (num_classes 0): train a class-conditional {what},"
                         " or guide it with a classifier")
    if guidance_scale and not num_classes:
        raise ValueError(f"classifier-free guidance needs a class-conditional {what} (num_classes > 0); guide an"
                         " unconditional one with a classifier (classifier_scale)")
    view = copy.copy(score)  # shares _modules / _parameters / _buffers: nothing is registered on the view
    for name, value in (("labels", None if labels is None else torch.as_tensor(labels).long()),
                        ("guidance_scale", float(guidance_scale)), ("classifier", classifier),
                        ("classifier_scale", float(classifier_scale))):
        object.__setattr__(view, name, value)
    return view
