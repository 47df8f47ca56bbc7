"""Whether the DDP ranks hold the same model: a check users can leave on, and the evidence tests read (issue 8).

DDP keeps replicas equal by averaging gradients; anything a rank does alone to the weights (a rollback, a skipped step,
a buffer-dependent branch that touches parameters) breaks that silently, and the run goes on with N different models
of which only rank 0's is saved. ``RankSync`` compares a float64 checksum of every parameter and buffer across ranks
(one all-gather of a few numbers) every ``every_n_steps`` optimizer steps and at the end of training, logs
``train/rank_weight_spread`` (the largest difference between ranks' checksums, 0 when they agree) and stops the run with
one line when the ranks disagree. At the end it writes ``rank_checksums.json`` (each rank's checksums and their
spread) beside the checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from lit_score.atomic import write_json
from lit_score.callbacks.stopping import last_checkpoint_path
from lit_score.checks import check_number


class RanksDisagreeError(RuntimeError):
    """The DDP ranks' weights differ."""


def checksums(module: torch.nn.Module) -> torch.Tensor:
    """(sum, sum of squares, weighted sum) over every floating parameter and buffer, in float64: equal weights give
    equal sums bit for bit; different weights almost surely do not."""
    total = torch.zeros(3, dtype=torch.float64)
    for _, value in sorted(module.state_dict().items()):
        if not torch.is_tensor(value) or not value.is_floating_point():
            continue
        v = value.detach().double().flatten().cpu()
        weights = torch.arange(1, v.numel() + 1, dtype=torch.float64) / v.numel()
        total += torch.stack([v.sum(), (v * v).sum(), (v * weights).sum()])
    return total


class RankSync(pl.Callback):
    """Check that every DDP rank holds the same weights (module docstring).

    Args:
        every_n_steps: check every N optimizer steps (0: only when training ends).
        tolerance: the largest checksum difference still taken as equal (0: bit-identical, what DDP guarantees).
    """

    def __init__(self, every_n_steps: int = 0, tolerance: float = 0.0) -> None:
        check_number("every_n_steps", every_n_steps, ge=0, integer=True)
        check_number("tolerance", tolerance, ge=0.0)
        self.every_n_steps, self.tolerance = every_n_steps, float(tolerance)
        self.last_spread: float | None = None
        self._last_checked_step = -1

    def _gather(self, trainer: pl.Trainer, pl_module) -> torch.Tensor:
        local = checksums(pl_module).to(trainer.strategy.root_device)
        if trainer.world_size == 1:
            return local[None]
        return trainer.strategy.all_gather(local).reshape(trainer.world_size, -1).cpu()

    def _check(self, trainer: pl.Trainer, pl_module) -> torch.Tensor:
        sums = self._gather(trainer, pl_module)
        spread = float((sums - sums[0]).abs().max())
        self.last_spread = spread
        if spread > self.tolerance:
            raise RanksDisagreeError(
                f"the {trainer.world_size} DDP ranks hold different weights at step {trainer.global_step} (checksum"
                f" spread {spread:.3g}): something changed parameters on one rank only; only rank 0's are saved"
            )
        return sums

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps: with gradient accumulation several batches share one
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_checked_step:
            self._last_checked_step = step
            self._check(trainer, pl_module)
            pl_module.log("train/rank_weight_spread", self.last_spread, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        sums = self._check(trainer, pl_module)
        if trainer.is_global_zero:
            record = {"world_size": trainer.world_size, "global_step": trainer.global_step,
                      "checksums": sums.tolist(), "spread": self.last_spread}
            write_json(Path(last_checkpoint_path(trainer)).parent / "rank_checksums.json", record)


__all__ = ["RankSync", "RanksDisagreeError", "checksums"]
