"""What a network may declare about itself, read in one place.

A network is any ``nn.Module`` taking ``(x, t[, y])``. lit-score's own networks declare ``num_classes`` (K > 0: it
takes class labels y, −1 being the null label), ``has_energy`` (it returns −∇ₓẼ of an energy Ẽ it can also give),
``two_time`` (it also takes a target time s: a flow map's network), ``zero_init_output`` (its output layer starts at
zero) and, for a classifier, ``out_dim`` (a guiding classifier also the ``process`` it is noise-conditional on).
A module that declares none of them (a user's network, a test's oracle) is unconditional and has no energy. The
score models (:class:`~lit_score.scores.NetworkScore`, :class:`~lit_score.scores.EnergyScore`), the energy network
and the classifier turn these into their own declared ``num_classes`` / ``has_energy`` / ``two_time``; nothing else
reads a network's (or a guiding classifier's) optional attributes.
"""

from __future__ import annotations

from torch import nn


def declared_classes(network: nn.Module) -> int:
    """K of a class-conditional network, 0 for any network that declares no ``num_classes``."""
    return int(getattr(network, "num_classes", 0) or 0)


def declared_outputs(network: nn.Module) -> int | None:
    """The output width a network declares (``out_dim``: a classifier's K logits), None where it declares none."""
    return getattr(network, "out_dim", None)


def declares_two_time(network: nn.Module) -> bool:
    """Whether the network declares ``two_time`` (it takes a target time s as well as t)."""
    return bool(getattr(network, "two_time", False))


def declares_zero_init_output(network: nn.Module) -> bool:
    """Whether the network declares ``zero_init_output`` (its output layer starts at zero)."""
    return bool(getattr(network, "zero_init_output", False))


def declared_process(part) -> object | None:
    """The noise process a part declares (a noise-conditional classifier's ``process``), None where it declares none."""
    return getattr(part, "process", None)


def declares_energy(network: nn.Module) -> bool:
    """Whether the network declares ``has_energy`` (its output is −∇ₓẼ of an energy Ẽ it also gives)."""
    return bool(getattr(network, "has_energy", False))
