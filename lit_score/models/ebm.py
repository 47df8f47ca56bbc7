"""Energy-based model trained by contrastive divergence with short-run Langevin from a replay buffer.

Du & Mordatch 2019 (IGEBM) and Nijkamp et al. 2019 (short-run MCMC): fakes x⁻ come from ``num_steps`` of
Langevin on −∇E started, per sample, from the replay buffer (probability ``reuse_prob``) or from uniform
noise over the data range, and are written back into the buffer. The buffer is model state: every DDP rank
keeps its own shard, all shards are saved in the checkpoint (keyed by rank) and each rank takes its own
back on resume. A watchdog rolls the model and optimizer back to the last good in-memory (CPU) copy
when the loss turns non-finite or |E| exceeds ``max_energy``.

**Class-conditional EBMs** (an energy network with ``num_classes`` K > 0, data with ``labels: true``; IGEBM's
conditional model): the loss is CD on E(x, y), real pairs (x⁺, y) against fakes x⁻ ~ p_θ(x | y) with the *same*
labels, so the negative phase follows the data's label distribution exactly. Each replay-buffer slot stores the label
its chain samples beside its state (``replay_labels``, checkpointed and DDP-sharded with the states); a training
step draws, for every label of the batch, a distinct slot holding that label (a slot keeps its label, so a persistent
chain always continues under its own class), and a label the buffer holds too few of starts fresh chains in other
slots, which take the label. Fresh buffers draw their labels uniformly over the K classes (the null label at
probability ``label_dropout``). ``label_dropout`` replaces a batch label by the null label ∅ (real and fake alike),
so the same network also learns the unconditional E(x, ∅) (classifier-free guidance, :mod:`lit_score.scores.energy`).
"""

from __future__ import annotations

import collections
import copy
import functools
import math
from contextlib import contextmanager
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_score.checks import check_number, check_probability, check_range
from lit_score.losses.contrastive import ContrastiveDivergence
from lit_score.metrics.estimators import EnergyAIS, EnergyQuadrature, LikelihoodEstimator
from lit_score.models.base import GenerativeModule, NonFiniteLossError
from lit_score.models.replay import ReplayBuffer
from lit_score.samplers import Draw, Langevin, Sampler
from lit_score.scores import EnergyScore
from lit_score.scores.energy import ComposedEnergy
from lit_score.utils import rand, randn_like

_BUFFER_KEY = "ebm_replay_buffer"


class EBMDivergedError(NonFiniteLossError):
    """Raised when EBM training keeps diverging after ``max_rollbacks`` rollbacks."""


def _cpu_copy(state):
    """A detached CPU deep copy of a (nested) state dict."""
    if torch.is_tensor(state):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return copy.deepcopy(state)


class EBM(GenerativeModule):
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
        check_number("snapshot_every", snapshot_every, ge=1, integer=True)
        check_number("max_rollbacks", max_rollbacks, ge=0, integer=True)
        check_number("max_energy", max_energy, gt=0.0)
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
        self.buffer_size, self.reuse_prob, self.max_energy = buffer_size, reuse_prob, max_energy
        self.snapshot_every, self.max_rollbacks = snapshot_every, max_rollbacks
        self.buffer: ReplayBuffer | None = None  # this rank's persistent chains (chain_init buffer, once fitting)
        self.rollbacks, self._snapshot, self._generator = 0, None, None
        self._skip_step = False  # set by a rollback: the step's optimizer update is dropped
        self._snapshot_restored = False
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

    @property
    def replay_buffer(self) -> Tensor | None:
        """This rank's stored chain states (buffer_size, *sample_shape), or None without a buffer."""
        return None if self.buffer is None else self.buffer.states

    @property
    def replay_labels(self) -> Tensor | None:
        """The labels its chains sample (buffer_size,), a conditional model's only."""
        return None if self.buffer is None else self.buffer.labels

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
    def uniform_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws uniform over ``data_range`` (n, *sample_shape)."""
        lo, hi = self.data_range
        return lo + (hi - lo) * rand((n, *self.require_shape()), generator, self.device)

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

    def buffer_start(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Distinct replay-buffer states whose chains sample the requested ``labels`` (n,) (−1: null-label chains);
        refused in one line when the buffer holds too few chains of a label."""
        if self.buffer is None:
            raise ValueError("this EBM holds no labelled replay buffer (trained with chain_init noise or data, or not"
                             " trained): sample from noise instead")
        return self.buffer.states_of(labels, generator, self.device)

    @contextmanager
    def frozen(self):
        """Eval mode and no parameter gradients (Langevin needs only ∇ₓE); both restored on exit."""
        was_training, flags = self.training, [p.requires_grad for p in self.parameters()]
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.parameters(), flags):
                p.requires_grad_(flag)
            self.train(was_training)

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

    # --- replay buffer ----------------------------------------------------------------------------
    def reset_buffer(self) -> None:
        """Fill this rank's buffer with fresh uniform noise (and, for a conditional model, fresh labels)."""
        states = self.uniform_noise(self.buffer_size, self._generator)
        self.buffer = ReplayBuffer(states, self.fresh_labels(self.buffer_size, self._generator) if self.num_classes
                                   else None)

    def fresh_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Labels of new buffer chains (n,): uniform over the K classes, the null label at probability
        ``label_dropout``."""
        device = generator.device if generator is not None else self.device
        labels = torch.randint(self.num_classes, (n,), generator=generator, device=device)
        if self.label_dropout:
            dropped = rand((n,), generator, device) < self.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, -1), labels)
        return labels.to(self.device)

    def training_labels(self, batch) -> Tensor | None:
        """The batch's labels, ``label_dropout`` of them replaced by the null label (−1); None if unconditional."""
        y = self.data_labels(batch)
        if y is None or not self.label_dropout:
            return y
        u = rand(y.shape, self._generator, y.device)
        return torch.where(u < self.label_dropout, torch.full_like(y, -1), y)

    def _rank_generator(self) -> torch.Generator:
        """A generator seeded from the global RNG and the rank, so DDP shards and chains differ per rank."""
        seed = int(torch.randint(2**62, (1,)).item()) + 1_000_003 * self.global_rank
        return torch.Generator(self.device).manual_seed(seed)

    def fake_samples(self, n: int, x_real: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """Run the sampler from the ``chain_init`` starts (buffer / fresh noise / the data batch ``x_real``), write
        persistent chains back, return the fakes (n, *shape); with class ``labels`` (n,) chain i samples
        p_θ(x | y_i) and starts from a buffer chain of label y_i (module docstring)."""
        score_fn = self.score_model if labels is None else self.score_model.with_condition(labels)
        if self.chain_init != "buffer":
            if self.chain_init == "data" and x_real is None:
                raise ValueError("chain_init data starts the chains at the data batch: pass x_real")
            x = self.uniform_noise(n, self._generator) if self.chain_init == "noise" else x_real[:n].detach()
            return self._run_chains(score_fn, x)
        noise = functools.partial(self.uniform_noise, generator=self._generator)
        x, index = self.buffer.starts(n, self.reuse_prob, noise, labels, self._generator, self.device)
        x = self._run_chains(score_fn, x)
        self.buffer.write(index, x)
        return x

    def _run_chains(self, score_fn, x: Tensor) -> Tensor:
        """The training chains from ``x``, frozen; what the sampler measured is kept for the step's log."""
        with self.frozen():
            draw = self.sampler.draw(score_fn, x, None, generator=self._generator, callback=self._record_chain)
        self._chain_measured = draw.scalars()
        return draw.samples.detach()

    def on_fit_start(self) -> None:
        self._generator = self._rank_generator()
        pending = self._pending_generator_state
        if pending is not None:  # resumed: each chain continues its own random stream
            self._generator.set_state(pending.to(self._generator.get_state().device))
            self._pending_generator_state = None
        if self.chain_init != "buffer":
            self.buffer = None  # short-run and CD chains keep no buffer
        elif self.buffer is None or tuple(self.buffer.states.shape) != (self.buffer_size, *self.require_shape()):
            self.reset_buffer()
        elif self.num_classes and (self.buffer.labels is None or self.buffer.labels.shape != (self.buffer_size,)):
            self.buffer.labels = self.fresh_labels(self.buffer_size, self._generator)  # states kept, labels drawn

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """All ranks' shards under ``checkpoint['ebm_replay_buffer']['shards']`` (world, size, *shape)."""
        if self.buffer is None:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        gather = self.trainer.strategy.all_gather if world > 1 else None
        generators = self._generator.get_state()[None] if self._generator is not None else None
        if generators is not None and world > 1:  # every rank's chain generator, so a resume continues each chain
            generators = self.trainer.strategy.all_gather(generators.to(self.device)).cpu()
        checkpoint[_BUFFER_KEY] = {**self.buffer.to_checkpoint(gather, self.device), "rollbacks": self.rollbacks,
                                   "generators": generators}
        if self._snapshot is not None:  # the rollback target (equal on every rank), so a resumed run rolls back alike
            step, model_state, optimizer_states = self._snapshot
            checkpoint[_BUFFER_KEY]["snapshot"] = {"step": step, "model": model_state, "optimizers": optimizer_states}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Each rank takes its own shard; with another world size the pooled shards are dealt out afresh."""
        state = checkpoint.get(_BUFFER_KEY)
        if state is None:
            return
        shards, self.rollbacks = state["shards"], int(state["rollbacks"])
        snapshot = state.get("snapshot")
        if snapshot is not None:
            self._snapshot = (int(snapshot["step"]), snapshot["model"], list(snapshot["optimizers"]))
            self._snapshot_restored = True
        world = self.trainer.world_size if self._trainer is not None else 1
        generators = state.get("generators")
        if generators is not None and generators.shape[0] == world:
            self._pending_generator_state = generators[self.global_rank].clone()
        elif generators is not None:
            rank_zero_warn(f"the chain generators were saved by {generators.shape[0]} rank(s), this run has {world}:"
                           " the chains draw fresh random streams, so the resumed run is not an exact continuation")
        self.buffer = ReplayBuffer.from_checkpoint(
            shards, state.get("labels"), self.global_rank, world, self.buffer_size,
            fresh_states=self.uniform_noise, fresh_labels=self.fresh_labels,
        )

    # --- training ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.check_data_classes()
        self.check_network(self.energy_net, None)

    def on_train_start(self) -> None:
        if not self._snapshot_restored:  # a resumed run keeps the rollback target the interrupted one had
            self._take_snapshot()
        self._snapshot_restored = False

    def _record_chain(self, info: dict) -> None:
        """Sampler callback: keep the score norm of the chain's latest step (r_t of Nijkamp et al. 2020)."""
        if "grad_norm" in info:
            self._chain_grad_norm = info["grad_norm"]

    def _log_chain_diagnostics(self, e_real: Tensor, e_fake: Tensor) -> None:
        """The 'anatomy' signals (Nijkamp et al. 2020): r_t, the chain's last-step score norm; d_t = E[E(data)] −
        E[E(fakes)] (``train/cd_gap``) and its lag-1 autocorrelation over the last 100 steps (a convergent,
        stable run keeps d_t near 0 with a negative or small autocorrelation; drifting d_t marks an unstable one);
        and what the sampler measured (an MH kernel's acceptance and adapted step)."""
        if self._chain_grad_norm is not None:
            self.log("train/chain_grad_norm", self._chain_grad_norm.float().mean())
            self._chain_grad_norm = None
        self._energy_diffs.append((e_real.mean() - e_fake.mean()).double())  # on the device: no host sync
        if len(self._energy_diffs) >= 10:
            d = torch.stack(list(self._energy_diffs))
            d = d - d.mean()
            self.log("train/energy_diff_autocorr", ((d[1:] * d[:-1]).sum() / (d * d).sum().clamp_min(1e-300)).float())
        for key, value in self._chain_measured.items():
            self.log(f"train/chain_{key}", float(value))

    def real_samples(self, batch) -> Tensor:
        """The data batch the energy is trained on: with ``data_noise`` σ, x + σ·z (z from the chain generator)."""
        x_real = self.data_batch(batch)
        if self.data_noise > 0:
            x_real = x_real + self.data_noise * randn_like(x_real, self._generator)
        return x_real

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        x_real, labels = self.real_samples(batch), self.training_labels(batch)
        x_fake = self.fake_samples(x_real.shape[0], x_real, labels)
        e_real, e_fake = self.energy(x_real, labels), self.energy(x_fake, labels)
        loss = self.loss(e_real, e_fake).mean()
        if self._diverged(loss, e_real, e_fake):  # decided on all ranks together
            self._roll_back(loss, e_real, e_fake)
            # Not ``return None``: Lightning refuses to skip a step under DDP. A zero loss on every parameter keeps the
            # gradient all-reduce in step on every rank; on_before_optimizer_step then drops the (zero) gradients, so
            # the restored weights and optimizer state do not move (Adam would step by its restored momentum).
            self._skip_step = True
            return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        if self.global_step % self.snapshot_every == 0:
            self._take_snapshot()
        with torch.no_grad():
            e_noise = self.energy(self.uniform_noise(x_real.shape[0], self._generator), labels)
        self.log("train/loss", loss, prog_bar=True)
        self._log_energies("train", e_real.detach(), e_fake.detach(), e_noise)
        self._log_chain_diagnostics(e_real.detach(), e_fake.detach())
        self.log("train/rollbacks", float(self.rollbacks))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_step:  # a rolled-back step: the optimizer skips parameters without gradients
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._skip_step = False
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
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
        fake_labels = labels
        if self.buffer is not None and n <= self.buffer_size:
            x_fake = self.buffer.states[:n].to(self.device)
            if labels is not None and self.buffer.labels is not None:
                fake_labels = self.buffer.labels[:n].to(self.device)
        else:  # under trainer.validate/test this runs Langevin inside inference_mode (EnergyScore allows it)
            x_fake = self.sample(n, generator=generator, labels=labels)
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

    # --- divergence watchdog ----------------------------------------------------------------------
    def _diverged(self, loss: Tensor, e_real: Tensor, e_fake: Tensor) -> bool:
        """Non-finite loss or a mean |E| above ``max_energy`` on any rank (one host sync per step)."""
        magnitude = torch.maximum(e_real.detach().abs().mean(), e_fake.detach().abs().mean())
        bad = bool((~torch.isfinite(loss.detach()) | (magnitude > self.max_energy)).item())
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        return bad

    def _take_snapshot(self) -> None:
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        self._snapshot = (
            self.global_step,
            _cpu_copy(self.state_dict()),
            [_cpu_copy(o.state_dict()) for o in optimizers],
        )

    def _roll_back(self, loss: Tensor, e_real: Tensor, e_fake: Tensor) -> None:
        """Restore the last good model + optimizer state and reseed the buffer; stop after ``max_rollbacks``."""
        self.rollbacks += 1
        step, model_state, optimizer_states = self._snapshot
        what = (
            f"EBM training diverged at step {self.global_step} (loss {float(loss):.3g}, mean E_real "
            f"{float(e_real.mean()):.3g}, mean E_fake {float(e_fake.mean()):.3g}, max_energy {self.max_energy:g})"
        )
        if self.rollbacks > self.max_rollbacks:
            raise EBMDivergedError(
                f"{what} after {self.max_rollbacks} rollbacks: lower the learning rate or the Langevin step size,"
                " raise the CD regulariser alpha, or use spectral_norm in the energy network"
            )
        self.load_state_dict(model_state)
        for optimizer, state in zip(self.trainer.optimizers, optimizer_states):
            optimizer.load_state_dict(copy.deepcopy(state))
        reseeded = ""
        if self.chain_init == "buffer":
            self.reset_buffer()
            reseeded = " and reseeded the replay buffer"
        rank_zero_warn(
            f"{what}; rolled back to step {step}{reseeded} "
            f"(rollback {self.rollbacks}/{self.max_rollbacks})"
        )
        self.log("train/rollbacks", float(self.rollbacks))
