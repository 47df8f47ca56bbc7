"""Loading checkpoints: checkpoints are data, so nothing they name is called unchecked.

==================================  ===============================================================================
module                              what it holds
==================================  ===============================================================================
:mod:`lit_score.loading.trust`      the class allow-list and the weights-only reader every entry point uses
                                    (``read_checkpoint``, ``resolve_class``, ``load_module``, ``load_datamodule``);
                                    re-exported here. Below ``models/`` and ``data/``: it builds the class it is
                                    given as ``base``
:mod:`lit_score.loading.checkpoint` a lit-score checkpoint's model (finite weights, EMA or raw), its data module,
                                    its summary for a protocol. Above ``models/`` and ``data/``
:mod:`lit_score.loading.sampler`    the sampler of a ``sample`` / ``evaluate`` run and the checks that a model can
                                    use it. Above ``models/``
==================================  ===============================================================================
"""

from lit_score.loading.trust import (
    ALLOWED_ENV,
    LIGHTNING_INSTANTIATOR,
    TRUSTED_DEFINERS,
    TRUSTED_PACKAGES,
    CheckpointError,
    check_arguments,
    check_hyperparameters,
    check_value,
    checkpoint_class,
    declared_classes,
    load_datamodule,
    load_module,
    parameter_annotation,
    read_checkpoint,
    resolve_class,
    user_packages,
)

__all__ = [
    "ALLOWED_ENV",
    "LIGHTNING_INSTANTIATOR",
    "TRUSTED_DEFINERS",
    "TRUSTED_PACKAGES",
    "CheckpointError",
    "check_arguments",
    "check_hyperparameters",
    "check_value",
    "checkpoint_class",
    "declared_classes",
    "load_datamodule",
    "load_module",
    "parameter_annotation",
    "read_checkpoint",
    "resolve_class",
    "user_packages",
]
