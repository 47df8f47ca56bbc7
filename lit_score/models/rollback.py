"""The EBM's divergence rollback, a callback: go back to the last good weights when contrastive divergence blows up.

Every ``snapshot_every`` good steps it keeps a CPU copy of the model and optimizer state; when a training step's
loss turns non-finite or a mean |E| of real or fake data exceeds ``max_energy`` (decided on all DDP ranks together)
it restores that copy, has the model reseed its persistent chains, and drops the step's (zero) gradients, so the
weights do not move; after ``max_rollbacks`` rollbacks it stops with :class:`EBMDivergedError`.

It lives beside the EBM it guards (a component the model builds, as its replay buffer) and is re-exported as
``lit_score.callbacks.DivergenceRollback``; the model imports it, so it cannot sit in ``callbacks/`` without the
models importing the callback floor.

=================  ==============================================================================================
``EBM`` args       ``max_energy``, ``snapshot_every``, ``max_rollbacks`` build the model's own rollback
                   (``EBM.rollback``), which ``EBM.configure_callbacks`` hands to every trainer: old configs and
                   checkpoints get it unchanged.
``guard``          called by the EBM's training step with (loss, E_real, E_fake): True when the step was rolled
                   back (the step then returns a zero loss over the parameters: never ``None``, which Lightning
                   refuses under DDP, so the gradient all-reduce stays in step on every rank).
checkpoint         the rollback count and the snapshot travel inside the EBM's ``ebm_replay_buffer`` checkpoint
                   entry (``checkpoint_state`` / ``load_checkpoint_state``), where they always were.
=================  ==============================================================================================
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_score.checks import check_number
from lit_score.models.base import NonFiniteLossError


class EBMDivergedError(NonFiniteLossError):
    """Raised when EBM training keeps diverging after ``max_rollbacks`` rollbacks."""


def cpu_copy(state):
    """A detached CPU deep copy of a (nested) state dict."""
    if torch.is_tensor(state):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v) for v in state)
    return copy.deepcopy(state)


class DivergenceRollback(Callback):
    """Roll an EBM back to its last good in-memory state when training diverges (module docstring).

    Args:
        max_energy: a mean |E| of real or fake data above this counts as divergence.
        snapshot_every: keep a CPU copy of model + optimizer state every K good steps.
        max_rollbacks: stop with :class:`EBMDivergedError` after this many rollbacks.
    """

    def __init__(self, max_energy: float = 1e3, snapshot_every: int = 100, max_rollbacks: int = 5) -> None:
        check_number("snapshot_every", snapshot_every, ge=1, integer=True)
        check_number("max_rollbacks", max_rollbacks, ge=0, integer=True)
        check_number("max_energy", max_energy, gt=0.0)
        self.max_energy, self.snapshot_every, self.max_rollbacks = max_energy, snapshot_every, max_rollbacks
        self.rollbacks = 0
        self.snapshot: tuple[int, dict, list[dict]] | None = None  # (step, model state, optimizer states) on the CPU
        self.restored = False  # the snapshot came from a checkpoint: on_train_start keeps it
        self.skip_step = False  # set by a rollback: the step's optimizer update is dropped

    # --- what the training step calls -------------------------------------------------------------
    def guard(self, pl_module, loss: Tensor, e_real: Tensor, e_fake: Tensor) -> bool:
        """Roll back and return True when this step diverged; otherwise take the snapshot when one is due."""
        if self.diverged(pl_module, loss, e_real, e_fake):
            self.roll_back(pl_module, loss, e_real, e_fake)
            self.skip_step = True
            return True
        if pl_module.global_step % self.snapshot_every == 0:
            self.take_snapshot(pl_module)
        return False

    def diverged(self, pl_module, loss: Tensor, e_real: Tensor, e_fake: Tensor) -> bool:
        """Non-finite loss or a mean |E| above ``max_energy`` on any rank (one host sync per step)."""
        magnitude = torch.maximum(e_real.detach().abs().mean(), e_fake.detach().abs().mean())
        bad = bool((~torch.isfinite(loss.detach()) | (magnitude > self.max_energy)).item())
        if pl_module._trainer is not None and pl_module.trainer.world_size > 1:
            bad = pl_module.trainer.strategy.reduce_boolean_decision(bad, all=False)
        return bad

    def take_snapshot(self, pl_module) -> None:
        optimizers = pl_module.trainer.optimizers if pl_module._trainer is not None else []
        self.snapshot = (
            pl_module.global_step,
            cpu_copy(pl_module.state_dict()),
            [cpu_copy(o.state_dict()) for o in optimizers],
        )

    def roll_back(self, pl_module, loss: Tensor, e_real: Tensor, e_fake: Tensor) -> None:
        """Restore the last good model + optimizer state and reseed the chains; stop after ``max_rollbacks``."""
        self.rollbacks += 1
        step, model_state, optimizer_states = self.snapshot
        what = (
            f"EBM training diverged at step {pl_module.global_step} (loss {float(loss):.3g}, mean E_real "
            f"{float(e_real.mean()):.3g}, mean E_fake {float(e_fake.mean()):.3g}, max_energy {self.max_energy:g})"
        )
        if self.rollbacks > self.max_rollbacks:
            raise EBMDivergedError(
                f"{what} after {self.max_rollbacks} rollbacks: lower the learning rate or the Langevin step size,"
                " raise the CD regulariser alpha, or use spectral_norm in the energy network"
            )
        pl_module.load_state_dict(model_state)
        for optimizer, state in zip(pl_module.trainer.optimizers, optimizer_states):
            optimizer.load_state_dict(copy.deepcopy(state))
        reseeded = " and reseeded the replay buffer" if pl_module.reseed_chains() else ""
        rank_zero_warn(
            f"{what}; rolled back to step {step}{reseeded} "
            f"(rollback {self.rollbacks}/{self.max_rollbacks})"
        )
        pl_module.log("train/rollbacks", float(self.rollbacks))

    # --- callback hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if not self.restored:  # a resumed run keeps the rollback target the interrupted one had
            self.take_snapshot(pl_module)
        self.restored = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.skip_step:  # a rolled-back step: the optimizer skips parameters without gradients
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.skip_step = False

    # --- checkpoint state (inside the EBM's own checkpoint entry) ----------------------------------
    def checkpoint_state(self) -> dict:
        """The rollback count and the snapshot (the rollback target, equal on every rank), so a resumed run rolls
        back alike."""
        state: dict = {"rollbacks": self.rollbacks}
        if self.snapshot is not None:
            step, model_state, optimizer_states = self.snapshot
            state["snapshot"] = {"step": step, "model": model_state, "optimizers": optimizer_states}
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        self.rollbacks = int(state["rollbacks"])
        snapshot = state.get("snapshot")
        if snapshot is not None:
            self.snapshot = (int(snapshot["step"]), snapshot["model"], list(snapshot["optimizers"]))
            self.restored = True
