"""The EBM's negative phase: where the training chains start, how they run, and their state across steps and resumes.

Du & Mordatch 2019 (IGEBM) and Nijkamp et al. 2019 (short-run MCMC): fakes x⁻ come from ``num_steps`` of Langevin on
−∇E started, per sample, from the replay buffer (probability ``reuse_prob``) or from uniform noise over the data range,
and are written back into the buffer (``chain_init: buffer``); or from fresh noise every step (``noise``), or from the
data batch (``data``, CD-k). The buffer is model state: every DDP rank keeps its own shard, all shards are saved in the
checkpoint (keyed by rank) with every rank's chain generator, and each rank takes its own back on resume.

**Class-conditional EBMs** (IGEBM's conditional model): fakes x⁻ ~ p_θ(x | y) are drawn with the batch's *own* labels.
Each replay-buffer slot stores the label its chain samples beside its state (``replay_labels``, checkpointed and
DDP-sharded with the states); a training step draws, for every label of the batch, a distinct slot holding that label
(:func:`~lit_score.models.replay.match_slots`), and a label the buffer holds too few of starts fresh chains in other
slots, which take the label. Fresh buffers draw their labels uniformly over the K classes (the null label at
probability ``label_dropout``).

:class:`NegativeChains` is the part of :class:`~lit_score.models.EBM` that does this; it uses the EBM's
``chain_init``, ``sampler``, ``score_model``, ``buffer_size``, ``reuse_prob``, ``label_dropout``, ``rollback``,
and provides ``uniform_noise`` (chain starts) and ``frozen`` (the energy's weights held while chains run).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_score.models.replay import ReplayBuffer
from lit_score.utils import rand

_BUFFER_KEY = "ebm_replay_buffer"


class NegativeChains:
    """The chains that make an EBM's fakes: their starts, the replay buffer, the per-rank chain generator, the chain
    diagnostics (r_t, d_t) and the checkpoint entry ``ebm_replay_buffer`` (module docstring)."""

    @property
    def replay_buffer(self) -> Tensor | None:
        """This rank's stored chain states (buffer_size, *sample_shape), or None without a buffer."""
        return None if self.buffer is None else self.buffer.states

    @property
    def replay_labels(self) -> Tensor | None:
        """The labels its chains sample (buffer_size,), a conditional model's only."""
        return None if self.buffer is None else self.buffer.labels

    def buffer_start(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Distinct replay-buffer states whose chains sample the requested ``labels`` (n,) (−1: null-label chains);
        refused in one line when the buffer holds too few chains of a label."""
        if self.buffer is None:
            raise ValueError("this EBM holds no labelled replay buffer (trained with chain_init noise or data, or not"
                             " trained): sample from noise instead")
        return self.buffer.states_of(labels, generator, self.device)

    def uniform_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws uniform over ``data_range`` (n, *sample_shape)."""
        lo, hi = self.data_range
        return lo + (hi - lo) * rand((n, *self.require_shape()), generator, self.device)

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

    def reset_buffer(self) -> None:
        """Fill this rank's buffer with fresh uniform noise (and, for a conditional model, fresh labels)."""
        states = self.uniform_noise(self.buffer_size, self._generator)
        self.buffer = ReplayBuffer(states, self.fresh_labels(self.buffer_size, self._generator) if self.num_classes
                                   else None)

    def reseed_chains(self) -> bool:
        """After a divergence rollback: persistent chains restart from fresh noise (True); other regimes keep none."""
        if self.chain_init != "buffer":
            return False
        self.reset_buffer()
        return True

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

    def evaluation_fakes(self, n: int, labels: Tensor | None,
                         generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Fakes to compare held-out data with, and their labels: the buffer's first n chains (at their own labels),
        or fresh chains without a buffer that large (under trainer.validate/test Langevin runs inside inference_mode,
        which EnergyScore allows)."""
        if self.buffer is None or n > self.buffer_size:
            return self.sample(n, generator=generator, labels=labels), labels
        x_fake = self.buffer.states[:n].to(self.device)
        if labels is not None and self.buffer.labels is not None:
            return x_fake, self.buffer.labels[:n].to(self.device)
        return x_fake, labels

    # --- chain diagnostics ------------------------------------------------------------------------
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

    # --- the chains' state across fits and checkpoints --------------------------------------------
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
        """All ranks' shards under ``checkpoint['ebm_replay_buffer']['shards']`` (world, size, *shape), with every
        rank's chain generator and the divergence rollback's state."""
        if self.buffer is None:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        gather = self.trainer.strategy.all_gather if world > 1 else None
        generators = self._generator.get_state()[None] if self._generator is not None else None
        if generators is not None and world > 1:  # every rank's chain generator, so a resume continues each chain
            generators = self.trainer.strategy.all_gather(generators.to(self.device)).cpu()
        checkpoint[_BUFFER_KEY] = {**self.buffer.to_checkpoint(gather, self.device), "generators": generators,
                                   **self.rollback.checkpoint_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Each rank takes its own shard; with another world size the pooled shards are dealt out afresh."""
        state = checkpoint.get(_BUFFER_KEY)
        if state is None:
            return
        self.rollback.load_checkpoint_state(state)
        world = self.trainer.world_size if self._trainer is not None else 1
        generators = state.get("generators")
        if generators is not None and generators.shape[0] == world:
            self._pending_generator_state = generators[self.global_rank].clone()
        elif generators is not None:
            rank_zero_warn(f"the chain generators were saved by {generators.shape[0]} rank(s), this run has {world}:"
                           " the chains draw fresh random streams, so the resumed run is not an exact continuation")
        self.buffer = ReplayBuffer.from_checkpoint(
            state["shards"], state.get("labels"), self.global_rank, world, self.buffer_size,
            fresh_states=self.uniform_noise, fresh_labels=self.fresh_labels,
        )
