"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): velocity regression on (1 − t) x₀ + t ε."""

from __future__ import annotations

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_score.losses import DenoisingLoss
from lit_score.losses.flow import FlowMatchingLoss
from lit_score.models.diffusion import DiffusionModule
from lit_score.processes import Interpolant, NoiseProcess
from lit_score.samplers import Heun, Sampler
from lit_score.scores import Target


class FlowMatching(DiffusionModule):
    """Flow-matching model: the network predicts the velocity ε − x₀ of the linear interpolant.

    Defaults: ``Interpolant()`` (α = 1 − t, σ = t), target ``velocity``, the flow-matching loss, and Heun on
    the ODE dx/dt = v(x, t) from t = 1 to 0. The velocity converts to a score through
    :class:`~lit_score.scores.NetworkScore`, so every score sampler (DDIM, Euler–Maruyama, …) runs on it too.

    Args:
        ot_coupling: pair data and noise in each batch by exact optimal transport (OT-CFM, Tong et al. 2024);
            only used when ``loss`` is not given.
    """

    default_target: Target = "velocity"

    def __init__(
        self,
        network: nn.Module,
        process: NoiseProcess | None = None,
        target: Target | None = None,
        ot_coupling: bool = False,
        loss: DenoisingLoss | None = None,
        sampler: Sampler | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        sample_shape: tuple[int, ...] | None = None,
        label_dropout: float = 0.0,
    ) -> None:
        loss = loss if loss is not None else FlowMatchingLoss(ot_coupling=ot_coupling)
        super().__init__(
            network, process, target, False, loss, sampler, optimizer, lr_scheduler, warmup_steps, sample_shape,
            label_dropout=label_dropout,
        )
        self.ot_coupling = ot_coupling
        self.save_config()

    def default_process(self) -> NoiseProcess:
        return Interpolant()

    def default_loss(self) -> DenoisingLoss:
        return FlowMatchingLoss()

    def default_sampler(self, process: NoiseProcess) -> Sampler:

        return Heun(num_steps=50)
