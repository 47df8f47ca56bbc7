"""Validation bits/dim by the probability-flow ODE (Song et al. 2021, App. D.2), logged every N epochs."""

from __future__ import annotations

import math
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.metrics.likelihood import log_likelihood


class LikelihoodCallback(pl.Callback):
    """At every ``every_n_epochs``-th validation run, log ``val/bpd`` (and ``val/nll``, nats per sample) of
    ``num_samples`` validation samples under the model's PF-ODE (see :func:`~lit_score.metrics.log_likelihood`).

    The samples are the first validation batches of the epoch, collected in ``on_validation_batch_end``
    (each DDP rank keeps ⌈num_samples / world⌉ of its own shard); the NLL is computed at the epoch's end, so
    list this callback before a weight-averaging (EMA) callback to measure the averaged weights. Under DDP the
    ODE runs on a fixed grid (``fixed_steps``, else ``ddp_fixed_steps``) so every rank does the same work, and
    the logged mean is synchronised across ranks. Probes and dequantisation noise are fixed by ``seed`` (plus
    the rank), so successive epochs are comparable.

    Args:
        every_n_epochs: how often, counted in validation runs (sanity checks excluded): runs n, 2n, 3n, …
            (with step-based validation, ``val_check_interval``, a run is not an epoch). Always under fast_dev_run.
        num_samples: validation samples evaluated, over all ranks.
        divergence, probe, num_probes, rtol, atol, fixed_steps, fixed_method, dequantize: as in ``log_likelihood``
            (``uniform8bit`` for 8-bit image data scaled to [−1, 1]).
        ddp_fixed_steps: grid steps used under DDP when ``fixed_steps`` is None.
        seed: base seed of the probes and the dequantisation noise.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 256,
        divergence: Literal["exact", "hutchinson"] = "hutchinson",
        probe: Literal["gaussian", "rademacher"] = "rademacher",
        num_probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        fixed_steps: int | None = None,
        fixed_method: Literal["euler", "heun", "rk4"] = "rk4",
        dequantize: Literal["none", "uniform8bit"] = "none",
        ddp_fixed_steps: int = 100,
        seed: int = 0,
    ) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("num_samples", num_samples),
                            ("num_probes", num_probes), ("ddp_fixed_steps", ddp_fixed_steps)):
            check_number(name, value, ge=1, integer=True)
        check_number("fixed_steps", fixed_steps, ge=1, integer=True, allow_none=True)
        check_number("rtol", rtol, gt=0.0)
        check_number("atol", atol, ge=0.0)
        check_number("seed", seed, ge=0, integer=True)
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.options = {"divergence": divergence, "probe": probe, "num_probes": num_probes, "rtol": rtol,
                        "atol": atol, "fixed_method": fixed_method, "dequantize": dequantize}
        self.fixed_steps, self.ddp_fixed_steps = fixed_steps, ddp_fixed_steps
        self._batches: list[Tensor] = []
        self.validation_runs = 0  # completed, non-sanity validation runs; saved in checkpoints
        self.last_result = None

    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return (self.validation_runs + 1) % self.every_n_epochs == 0 or bool(trainer.fast_dev_run)

    def state_dict(self) -> dict[str, int]:
        return {"validation_runs": self.validation_runs}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validation_runs = state_dict.get("validation_runs", 0)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if pl_module.process is None or not pl_module.likelihood_methods():  # a noise process and a PF-ODE to solve
            raise ValueError(f"LikelihoodCallback needs a model with a noise process and a likelihood, not"
                             f" {type(pl_module).__name__}")

    def _per_rank(self, trainer: pl.Trainer) -> int:
        return math.ceil(self.num_samples / trainer.world_size)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if dataloader_idx != 0 or not self._active(trainer):
            return
        have = sum(len(b) for b in self._batches)
        if have < self._per_rank(trainer):
            self._batches.append(pl_module.data_batch(batch).detach()[: self._per_rank(trainer) - have])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        active = self._active(trainer)
        if not trainer.sanity_checking:
            self.validation_runs += 1
        if not self._batches or not active:
            return
        x = torch.cat(self._batches)
        self._batches = []
        steps = self.fixed_steps if self.fixed_steps is not None or trainer.world_size == 1 else self.ddp_fixed_steps
        generator = torch.Generator(x.device).manual_seed(self.seed + trainer.global_rank)
        result = log_likelihood(pl_module.score_model, pl_module.process, x, fixed_steps=steps, generator=generator,
                                **self.options)
        self.last_result = result
        pl_module.log("val/bpd", result.bits_per_dim.mean(), sync_dist=True)
        pl_module.log("val/nll", result.nats.mean(), sync_dist=True)
        pl_module.log("val/likelihood_nfe", float(result.nfe), sync_dist=True)
