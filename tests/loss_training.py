"""The training loop the few-step loss tests share: a loss's own hooks and Adam on a score model, no Lightning.

    for done in training_steps(loss, student, data.sample, 1500):   # or train(...) to run it through
        ...

Each step calls ``loss.before_step(student, step)`` (a curriculum / target network follows the step, as the family
calls it), draws a batch from ``sample(batch, generator)``, and takes one Adam step on the mean per-sample loss;
``lr_factor(step)`` (optional) multiplies the learning rate at each step (a cosine decay: the toy recipes of
benchmarks/fewstep_toy_recipes.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch


def training_steps(loss, student, sample: Callable, steps: int, lr: float = 3e-3, batch: int = 256,
                   seed: int = 0, lr_factor: Callable[[int], float] | None = None) -> Iterator[int]:
    """Train ``student`` with ``loss`` for ``steps`` steps, yielding the number of steps done after each."""
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if lr_factor is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step)
        loss.before_step(student, step)
        value = loss(student, sample(batch, generator), generator).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        yield step + 1


def cosine_decay(steps: int) -> Callable[[int], float]:
    """The ``lr_factor`` of a half-cosine decay from 1 at step 0 to 0 at ``steps``."""
    return lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))


def train(loss, student, sample: Callable, steps: int, **options) -> None:
    """:func:`training_steps` run to the end."""
    for _ in training_steps(loss, student, sample, steps, **options):
        pass
