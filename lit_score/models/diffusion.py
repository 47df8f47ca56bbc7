"""DiffusionModule: the shared training step of every family that regresses a network onto noised data.

DDPM, NCSN, score SDEs and flow matching differ only in their defaults (process, parameterisation,
loss weighting, sampler) — the step below is the same for all of them.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.losses import DenoisingLoss, DiffusionLoss
from lit_score.metrics.estimators import LikelihoodEstimator, ProbabilityFlow
from lit_score.models.base import GenerativeModule
from lit_score.processes import NoiseProcess
from lit_score.samplers import Sampler
from lit_score.scores import FlowMapScore, NetworkScore, Target
from lit_score.scores.declarations import declares_two_time

_LOSS_KEY = "lit_score_loss"


class DiffusionModule(GenerativeModule):
    """A network + noise process + parameterisation + denoising loss, trained on x_t = α x₀ + σ ε.

    Args:
        network: ``network(x, c_noise(t))`` with output shaped like x.
        process: the noise process (family default when None).
        target: what the network predicts (eps, x0, v, score, velocity).
        scale_by_sigma: divide a ``score`` output by σ(t) (Song & Ermon 2020, technique 3); None: the family's
            default (``default_scale_by_sigma``), applied only to target ``score``.
        loss: the per-sample objective (family default when None).
        sigma_data: σ_d of target ``edm`` (EDM's preconditioning; the data's standard deviation).
        learned_variance: the network also outputs the reverse variance's interpolation (twice the data's
            channels; improved DDPM), used by ``Ancestral`` and ``ddpm_vlb`` and trained by ``HybridLoss``.
        label_dropout: with a class-conditional network (``num_classes`` > 0, data with ``labels: true``), the
            probability that a training label is replaced by the null label, so that one network learns the
            conditional and the unconditional score (classifier-free guidance, Ho & Salimans 2022: 0.1–0.2).
    """

    default_target: Target = "eps"
    default_scale_by_sigma: bool = False

    def __init__(
        self,
        network: nn.Module,
        process: NoiseProcess | None = None,
        target: Target | None = None,
        scale_by_sigma: bool | None = None,
        loss: DiffusionLoss | None = None,
        sampler: Sampler | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        sample_shape: tuple[int, ...] | None = None,
        sigma_data: float = 0.5,
        learned_variance: bool = False,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__(sampler, optimizer, lr_scheduler, warmup_steps, sample_shape)
        check_number("label_dropout", label_dropout, ge=0.0, le=1.0)
        self.label_dropout = float(label_dropout)
        process = process if process is not None else self.default_process()
        target = target or self.default_target
        if scale_by_sigma is None:
            scale_by_sigma = self.default_scale_by_sigma and target == "score"
        two_time = declares_two_time(network)  # declared by the network, as num_classes is
        score_type = FlowMapScore if two_time else NetworkScore  # a two-time network gives the flow map X_{t→s}
        self.score_model = score_type(network, process, target=target, scale_by_sigma=scale_by_sigma,
                                      sigma_data=sigma_data, learned_variance=learned_variance)
        self.sampler = sampler if sampler is not None else self.default_sampler(process)
        self.loss = loss if loss is not None else self.default_loss()
        if self.score_model.learned_variance and not self.loss.trains_variance:
            raise ValueError(f"a learned variance is trained by HybridLoss, not {type(self.loss).__name__}: set"
                             " model.init_args.loss to lit_score.losses.HybridLoss (or learned_variance false)")
        if process.learnable_schedule and not self.loss.trains_schedule:
            raise ValueError(f"{type(process).__name__}'s schedule is trained by VDMLoss, not"
                             f" {type(self.loss).__name__}: set model.init_args.loss to lit_score.losses.VDMLoss")
        if self.loss.requires_energy and not self.score_model.has_energy:
            raise ValueError(f"{type(self.loss).__name__} trains an energy E(x, t): use a NoiseConditionalEnergy"
                             f" network with target score or eps (got {type(network).__name__}, target {target!r})")
        if self.loss.requires_two_time and not two_time:
            raise ValueError(f"{type(self.loss).__name__} trains a flow map: build the network with two_time true (got"
                             f" a one-time {type(network).__name__})")
        if label_dropout and not self.num_classes:
            raise ValueError("label_dropout trains a class-conditional network: set the network's num_classes (and"
                             " data.init_args.labels true), or drop label_dropout")
        self.save_config()

    def default_process(self) -> NoiseProcess:
        raise NotImplementedError(f"{type(self).__name__} needs a process")

    def default_loss(self) -> DenoisingLoss:
        return DenoisingLoss()

    @property
    def process(self) -> NoiseProcess:
        return self.score_model.process

    @property
    def has_energy(self) -> bool:
        """True when the network is a noise-conditional energy (``NoiseConditionalEnergy``) under a target that
        makes its output a gradient field: MALA, HMC and ``MALACorrector`` can then run on this model."""
        return self.score_model.has_energy

    @property
    def two_time(self) -> bool:
        """True when the network takes a second time: the score model is a :class:`FlowMapScore`."""
        return self.score_model.two_time

    @property
    def network(self) -> nn.Module:
        return self.score_model.network

    @property
    def num_classes(self) -> int:
        """The network's ``num_classes`` (0: unconditional)."""
        return self.score_model.num_classes

    def training_labels(self, batch, generator: torch.Generator | None = None) -> Tensor | None:
        """The batch's labels, ``label_dropout`` of them replaced by the null label (−1); None if unconditional."""
        y = self.data_labels(batch)
        if y is None or not self.label_dropout:
            return y
        u = torch.rand(y.shape, generator=generator, device=y.device)
        return torch.where(u < self.label_dropout, torch.full_like(y, -1), y)

    def objective(self, batch, generator: torch.Generator | None = None) -> Tensor:
        """The per-sample loss of a batch: the loss on the score model, conditioned on the batch's labels (with
        label dropout) when the network is class-conditional; a :class:`~lit_score.data.reflow.Coupling` batch (reflow
        pairs: a batch (x, y, ε)) hands its noise to a loss that ``takes_coupling``."""
        x0 = self.data_batch(batch)
        labels = self.training_labels(batch, generator)
        score_model = self.score_model if labels is None else self.score_model.with_condition(labels)
        noise = self.data_noise(batch)
        if noise is None:
            if self.loss.requires_coupling:
                raise ValueError(f"{type(self.loss).__name__} trains on a coupling: use the data module"
                                 " lit_score.data.ReflowPairs (pairs drawn by lit-score pairs)")
            return self.loss(score_model, x0, generator=generator)
        if not self.loss.takes_coupling:
            raise ValueError(f"{self.loss!r} draws its own noise and cannot take the reflow pairs' coupling: use"
                             " lit_score.losses.Reflow (or FlowMatchingLoss without ot_coupling)")
        return self.loss(score_model, x0, generator=generator, noise=noise)

    @staticmethod
    def data_noise(batch) -> Tensor | None:
        """The noise paired with a batch's data: the third item of a batch (x, y, ε) (a
        :class:`~lit_score.data.reflow.Coupling`; y may be None), None for x and (x, y) batches."""
        return batch[2] if isinstance(batch, (tuple, list)) and len(batch) > 2 else None

    def likelihood_methods(self, dequantize: str = "none") -> tuple[LikelihoodEstimator, ...]:
        """Every diffusion / flow model has the exact probability-flow likelihood."""
        return (ProbabilityFlow(self.score_model, self.process),)

    def setup(self, stage: str) -> None:
        self.check_data_classes()
        channels = 2 if self.score_model.learned_variance else 1
        self.check_network(self.network, torch.zeros(2, device=self.device), channels_factor=channels)

    def on_fit_start(self) -> None:
        self.loss.fit_started(self.score_model, resumed=self.trainer.ckpt_path is not None)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.loss.before_step(self.score_model, self.trainer.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The objective's own state (a loss-aware step history; equal on every rank) under ``lit_score_loss``."""
        state = self.loss.state_dict()
        if state:
            checkpoint[_LOSS_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loss.load_state_dict(checkpoint.get(_LOSS_KEY, {}))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.objective(batch).mean()
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def held_out_loss(self, batch, batch_idx: int, stage: str) -> None:
        """The training objective on held-out data, with noise seeded by the batch index (comparable across runs)."""
        generator = torch.Generator(self.data_batch(batch).device).manual_seed(batch_idx)
        loss = self.objective(batch, generator).mean()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.held_out_loss(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.held_out_loss(batch, batch_idx, "test")
