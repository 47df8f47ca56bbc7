"""Energy-based model trained by contrastive divergence with short-run Langevin from a replay buffer.

Du & Mordatch 2019 (IGEBM) and Nijkamp et al. 2019 (short-run MCMC). The model is E(x) and its sampling; its parts:

=====================================  ===========================================================================
:mod:`lit_score.models.chains`         the negative phase: chain starts (replay buffer / noise / data), the
                                       per-rank chain generator, chain diagnostics, the buffer's checkpoint entry
:mod:`lit_score.models.replay`         the replay buffer and its label-matched slots
:mod:`lit_score.models.rollback`       the divergence rollback, a callback the model hands to every trainer
:mod:`lit_score.metrics.estimators`    its likelihood estimators (quadrature, AIS), as objects
=====================================  ===========================================================================

**Class-conditional EBMs** (an energy network with ``num_classes`` K > 0, data with ``labels: true``; IGEBM's
conditional model): the loss is CD on E(x, y), real pairs (x⁺, y) against fakes x⁻ ~ p_θ(x | y) with the *same*
labels, so the negative phase follows the data's label distribution exactly. ``label_dropout`` replaces a batch label
by the null label ∅ (real and fake alike), so the same network also learns the unconditional E(x, ∅) (classifier-free
guidance, :mod:`lit_score.scores.energy`).
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_score.checks import check_number, check_probability, check_range
from lit_score.losses.contrastive import ContrastiveDivergence
from lit_score.metrics.estimators import EnergyAIS, EnergyQuadrature, LikelihoodEstimator
from lit_score.models.base import GenerativeModule
from lit_score.models.chains import NegativeChains
from lit_score.models.replay import ReplayBuffer
from lit_score.models.rollback import DivergenceRollback, EBMDivergedError
from lit_score.samplers import Draw, Langevin, Sampler
from lit_score.scores import EnergyScore
from lit_score.scores.energy import ComposedEnergy
from lit_score.utils import randn_like

__all__ = ["EBM", "EBMDivergedError"]


class EBM(NegativeChains, GenerativeModule):
    """Energy-based model p(x) ∝ exp(−E(x)) (Du & Mordatch 2019), sampled by (short-run) Langevin on −∇E.

    Args:
        energy_net: ``E(x, t=None) -> (B,)``, e.g. :class:`~lit_score.networks.EnergyCNN` / ``EnergyMLP``.
        sampler: the chain that makes fakes and samples (default ``Langevin`` clamped to ``data_range``).
        loss: the contrastive-divergence loss (default α = 0.1).
        buffer_size: replay-buffer size per DDP rank.
        reuse_prob: probability that a chain starts from the buffer rather than fresh uniform noise.
        data_range: (lo, hi) of the data; fresh chains start uniform in it.
        max_energy: the watchdog rolls back when a mean |E| of real or fake data exceeds this.
        chain_init: where training chains start: ``buffer`` (persistent: the replay buffer, with fresh noise at
            probability 1 − ``reuse_prob``; Du & Mordatch 2019), ``noise`` (short-run, non-persistent: fresh uniform
            noise every step, no buffer; Nijkamp et al. 2019) or ``data`` (contrastive divergence from the data
            batch, CD-k; Hinton 2002).
        data_noise: σ of Gaussian noise added to each real batch before its energy is taken (Nijkamp et al. 2020 use
            ~0.03 for short-run training; Du & Mordatch 0.005); 0: none.
        snapshot_every: keep a CPU copy of model + optimizer state every K good steps.
        max_rollbacks: stop with :class:`EBMDivergedError` after this many rollbacks.
        optimizer: default Adam(lr=1e-4, betas=(0.0, 0.999)) (β₁ = 0 as Du & Mordatch).
        label_dropout: with a class-conditional energy network (``num_classes`` > 0, data with ``labels: true``), the
            probability that a training label is replaced by the null label, so that one network learns E(x, y) and
            E(x, ∅) (classifier-free guidance; 0.1–0.2 as Ho & Salimans 2022).
    """

    has_energy = True

    def __init__(
        self,
        energy_net: nn.Module,
        sampler: Sampler | None = None,
        loss: ContrastiveDivergence | None = None,
        buffer_size: int = 10000,
        reuse_prob: float = 0.95,
        data_range: tuple[float, float] = (-1.0, 1.0),
        chain_init: Literal["buffer", "noise", "data"] = "buffer",
        data_noise: float = 0.0,
        max_energy: float = 1e3,
        snapshot_every: int = 100,
        max_rollbacks: int = 5,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        sample_shape: tuple[int, ...] | None = None,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__(sampler, optimizer, lr_scheduler, warmup_steps, sample_shape)
        check_probability("reuse_prob", reuse_prob)
        check_number("label_dropout", label_dropout, ge=0.0, le=1.0)
        check_number("buffer_size", buffer_size, ge=1, integer=True)
        self.rollback = DivergenceRollback(max_energy, snapshot_every, max_rollbacks)  # its checks raise here
        check_range("data_range", data_range)
        if chain_init not in ("buffer", "noise", "data"):
            raise ValueError(f"unknown chain_init {chain_init!r}: use buffer, noise or data")
        check_number("data_noise", data_noise, ge=0.0)
        self.chain_init, self.data_noise = chain_init, float(data_noise)
        self.score_model = EnergyScore(energy_net)
        if label_dropout and not self.num_classes:
            raise ValueError("label_dropout trains a class-conditional energy: set the energy network's num_classes"
                             " (and data.init_args.labels true), or drop label_dropout")
        self.label_dropout = float(label_dropout)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.sampler = sampler if sampler is not None else self.default_sampler(None)
        self.loss = loss if loss is not None else ContrastiveDivergence()
        if optimizer is None:
            self.optimizer_fn = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.999))
        self.buffer_size, self.reuse_prob = buffer_size, reuse_prob
        self.buffer: ReplayBuffer | None = None  # this rank's persistent chains (chain_init buffer, once fitting)
        self._generator: torch.Generator | None = None  # the chains' random stream (per rank, set in on_fit_start)
        self._pending_generator_state: Tensor | None = None  # a resumed chain generator, set in on_fit_start
        self._chain_grad_norm: Tensor | None = None
        self._chain_measured: dict[str, float | int] = {}  # what the last training chain's sampler measured
        self._energy_diffs: collections.deque[Tensor] = collections.deque(maxlen=100)
        self.save_config()

    def default_sampler(self, process=None) -> Sampler:
        return Langevin(clamp=self.data_range)

    @property
    def energy_net(self) -> nn.Module:
        return self.score_model.energy_net

    @property
    def num_classes(self) -> int:
        """The energy network's ``num_classes`` (0: unconditional)."""
        return self.score_model.num_classes

    def energy(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """E(x), shape (B,); with class ``labels`` (B,) the conditional E(x, y) (−1: the null label). Float32 even
        under bf16 / fp16 autocast (the network's last layer then returns half precision): the contrastive loss is a
        small difference of energies, which must not be taken in 8 mantissa bits."""
        energy = self.score_model.energy(x) if labels is None else self.score_model.with_condition(labels).energy(x)
        return energy.float() if energy.dtype in (torch.bfloat16, torch.float16) else energy

    @property
    def network(self) -> nn.Module:
        """The energy network (what :class:`~lit_score.callbacks.Performance` acts on)."""
        return self.energy_net

    def compose(self, labels, weights=None) -> ComposedEnergy:
        """Σₖ wₖ·E(x, yₖ) of this conditional model's ``labels`` (concept conjunction, Du et al. 2020): a
        :class:`~lit_score.scores.energy.ComposedEnergy` to sample with :meth:`sample_energy`."""
        return ComposedEnergy.of_labels(self, labels, weights)

    def sample_energy(self, energy, n: int, sampler: Sampler | None = None, generator: torch.Generator | None = None,
                      progress: bool = False, x: Tensor | None = None) -> Tensor:
        """The samples of :meth:`draw_energy`."""
        return self.draw_energy(energy, n, sampler, generator, progress, x).samples

    def draw_energy(self, energy, n: int, sampler: Sampler | None = None, generator: torch.Generator | None = None,
                    progress: bool = False, x: Tensor | None = None) -> Draw:
        """``n`` samples of any energy transform (a :class:`~lit_score.scores.energy.ComposedEnergy`, a guided view)
        with this model's sampler (or ``sampler``), from uniform noise over the data range (or ``x``), frozen: the
        :class:`~lit_score.samplers.base.Draw` (samples, NFE, measurements)."""
        sampler = sampler if sampler is not None else self.sampler
        with self.frozen(), torch.no_grad():
            x = self.uniform_noise(n, generator) if x is None else x
            return sampler.draw(energy, x, None, generator=generator, progress=progress)

    # --- sampling ---------------------------------------------------------------------------------
    #: fresh chains from uniform noise (the default), or chains continued from the replay buffer a checkpoint holds
    sample_starts = ("noise", "buffer")

    def sample_start_problem(self, start: str) -> str | None:
        if start == "buffer" and self.replay_buffer is None:
            return "this EBM holds no replay buffer (trained with chain_init noise or data): sample from noise"
        return super().sample_start_problem(start)

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Chains start from uniform noise over the data range (the EBM has no process prior), or with
        ``set_sample_start("buffer")`` from ``n`` distinct replay-buffer states (IGEBM-style sampling: its numbers
        describe chains continued from training's persistent chains, not fresh ones)."""
        if self.sample_start == "noise":
            return self.uniform_noise(n, generator)
        if self.buffer is None:
            raise ValueError("this EBM holds no replay buffer (trained with chain_init noise or data, or not trained):"
                             " sample from noise instead")
        return self.buffer.any_states(n, generator, self.device)


    def draw(self, n, sampler=None, generator=None, progress=False, x=None, labels=None, edit=None) -> Draw:
        """:meth:`GenerativeModule.draw`, frozen. With ``set_sample_start("buffer")``, class ``labels`` (n,) and a
        conditional energy, chains continue buffer chains of those labels (:meth:`buffer_start`); without labels they
        continue any buffer chains."""
        if x is None and edit is None and labels is not None and self.num_classes and self.sample_start == "buffer":
            labels = torch.as_tensor(labels).long()
            x = self.buffer_start(labels.expand(n) if labels.ndim == 0 else labels, generator)
        with self.frozen():
            return super().draw(n, sampler, generator, progress, x, labels, edit)

    # --- likelihood ------------------------------------------------------------------------------
    def likelihood_methods(self, dequantize: str = "none") -> tuple[LikelihoodEstimator, ...]:
        """In one or two dimensions on a finite ``data_range`` the density normalises exactly by quadrature; in any
        dimension log Z is estimated by annealed importance sampling, on the box the sampler clamps to."""
        if dequantize != "none" or self.sample_shape is None:
            return ()
        ais = EnergyAIS(self.energy, self.data_range, tuple(self.require_shape()), self.device)
        finite = all(math.isfinite(v) for v in self.data_range)
        if math.prod(self.sample_shape) <= 2 and finite:
            return (EnergyQuadrature(self.energy, self.data_range), ais)
        return (ais,)

    # --- training ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.check_data_classes()
        self.check_network(self.energy_net, None)

    def configure_callbacks(self) -> list:
        """The model's own :class:`~lit_score.models.rollback.DivergenceRollback`, added to every trainer."""
        return [self.rollback]

    @property
    def rollbacks(self) -> int:
        """How many times training has rolled back so far."""
        return self.rollback.rollbacks

    def real_samples(self, batch) -> Tensor:
        """The data batch the energy is trained on: with ``data_noise`` σ, x + σ·z (z from the chain generator)."""
        x_real = self.data_batch(batch)
        if self.data_noise > 0:
            x_real = x_real + self.data_noise * randn_like(x_real, self._generator)
        return x_real

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x_real, labels = self.real_samples(batch), self.training_labels(batch)
        e_real, e_fake = self.energies(x_real, self.fake_samples(x_real.shape[0], x_real, labels), labels)
        loss = self.loss(e_real, e_fake).mean()  # CD with its α·(E_real² + E_fake²) regulariser
        if self.rollback.guard(self, loss, e_real, e_fake):  # diverged (decided on all ranks together): rolled back
            return self.null_loss()
        self._log_training(loss, e_real.detach(), e_fake.detach(), labels)
        return loss

    def energies(self, x_real: Tensor, x_fake: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """(E(x⁺), E(x⁻)) of the real batch and the fakes, at the training labels."""
        return self.energy(x_real, labels), self.energy(x_fake, labels)

    def null_loss(self) -> Tensor:
        """A rolled-back step's loss: zero on every parameter, so the gradient all-reduce stays in step on every DDP
        rank (Lightning refuses ``None`` there); the rollback then drops these gradients before the optimizer step."""
        return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)

    def _log_training(self, loss: Tensor, e_real: Tensor, e_fake: Tensor, labels: Tensor | None) -> None:
        """The loss, the energies of real data, fakes and uniform noise, the chain diagnostics and the rollbacks."""
        with torch.no_grad():
            e_noise = self.energy(self.uniform_noise(e_real.shape[0], self._generator), labels)
        self.log("train/loss", loss, prog_bar=True)
        self._log_energies("train", e_real, e_fake, e_noise)
        self._log_chain_diagnostics(e_real, e_fake)
        self.log("train/rollbacks", float(self.rollbacks))

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:  # none after a rolled-back step (the rollback dropped them)
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def _evaluate(self, stage: str, batch, batch_idx: int) -> None:
        """Energies of held-out data, of fakes (the buffer, or fresh chains without one) and of uniform noise; a
        conditional model's at the batch's labels (the buffer's at its chains' labels)."""
        x_real, labels = self.data_batch(batch), self.data_labels(batch)
        n = x_real.shape[0]
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        x_fake, fake_labels = self.evaluation_fakes(n, labels, generator)
        e_real, e_fake = self.energy(x_real, labels), self.energy(x_fake, fake_labels)
        e_noise = self.energy(self.uniform_noise(n, generator), labels)
        self.log(f"{stage}/loss", self.loss(e_real, e_fake).mean(), sync_dist=True)
        self._log_energies(stage, e_real, e_fake, e_noise, sync_dist=True)

    def _log_energies(self, stage: str, e_real: Tensor, e_fake: Tensor, e_noise: Tensor, sync_dist=False) -> None:
        """Mean energies of real data, fakes and uniform noise, and the CD gap E_real − E_fake."""
        log = functools.partial(self.log, on_epoch=True, sync_dist=sync_dist)
        log(f"{stage}/energy_real", e_real.mean())
        log(f"{stage}/energy_fake", e_fake.mean())
        log(f"{stage}/energy_noise", e_noise.mean())
        log(f"{stage}/cd_gap", e_real.mean() - e_fake.mean())
