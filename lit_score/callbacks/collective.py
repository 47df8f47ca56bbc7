"""Decisions the DDP ranks take together: gather a picklable object from every rank, or whether a flag holds on any.

Every stop, skip and refusal of the long-run callbacks goes through :func:`any_rank`, so no rank decides alone (a rank
that stops or skips by itself leaves the others waiting in an all-reduce).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def gather_objects(trainer: pl.Trainer, obj) -> list:
    """``obj`` of every rank, in rank order (a list of one without DDP); every rank must call it."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=False))
    return bool(flag)
