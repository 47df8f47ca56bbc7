"""GenerativeModule: what every family shares — optimisation, the sample shape, sampling, input checks.

Class conditioning and guidance (:mod:`lit_score.models.conditioning`) and the likelihood interface
(:mod:`lit_score.models.likelihood`) are its two parts of their own."""

from __future__ import annotations

import inspect
from abc import abstractmethod

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.generation import seed_batch_draw
from lit_score.models.conditioning import Conditioning
from lit_score.models.likelihood import Likelihood
from lit_score.processes import NoiseProcess
from lit_score.samplers import Draw, Sampler

_PLAIN = (type(None), bool, int, float, str)


def _is_plain(value: object) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite."""


class GenerativeModule(Conditioning, Likelihood, pl.LightningModule):
    """Base LightningModule of all families; a subclass sets ``self.score_model`` (its ScoreFn: a NetworkScore
    or an EnergyScore) and ``self.sampler`` (``default_sampler(process)`` when none is given).

    Args:
        sampler: default sampler for :meth:`sample` (family default when None).
        optimizer: optimizer callable (``class_path``/``init_args`` in YAML); Adam(lr=2e-4) when None.
        lr_scheduler: optional LR scheduler callable, stepped every optimizer step.
        warmup_steps: linear learning-rate warm-up over this many steps (DDPM uses 5000); not combined
            with ``lr_scheduler`` (put a SequentialLR there instead).
        sample_shape: shape of one sample, e.g. (2,) or (3, 32, 32); linked from the datamodule by the CLI.

    ``resume_mutable`` names the arguments a resumed ``fit`` may change (the config's value is used); every other
    argument must match the checkpoint (the optimizer and schedule too: their state comes from the checkpoint).
    """

    resume_mutable: tuple[str, ...] = ("sampler",)
    #: (lo, hi) the samples live in: an EBM's own ``data_range`` argument, [−1, 1] (images) for every other family
    data_range: tuple[float, float] = (-1.0, 1.0)
    #: whether it guides another model's sampling by ``log_prob(x, t, y)`` = log p_φ(y | x_t, t) (a noise-conditional
    #: classifier: ``classifier_scale`` of :meth:`set_condition`)
    guides: bool = False

    def __init__(
        self,
        sampler: Sampler | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        check_number("warmup_steps", warmup_steps, ge=0, integer=True)
        if sample_shape is not None and (
            not sample_shape or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sample_shape)
        ):
            raise ValueError(f"sample_shape must be a non-empty tuple of integers >= 1, got {sample_shape!r}")
        if warmup_steps and lr_scheduler is not None:
            raise ValueError("warmup_steps and lr_scheduler are exclusive: put the warm-up into a SequentialLR")
        self.sampler = sampler  # subclasses fill in default_sampler(process) once their parts exist
        self.optimizer_fn, self.lr_scheduler_fn, self.warmup_steps = optimizer, lr_scheduler, warmup_steps
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self._condition: dict | None = None  # what set_condition chose (None: nothing yet)
        self._sample_start: str | None = None  # what set_sample_start chose (None: the first of sample_starts)
        self.skip_nonfinite_steps = False  # set by NonFiniteGuard: a non-finite step is then skipped, not fatal

    # --- family hooks ----------------------------------------------------------------------------
    @abstractmethod
    def default_sampler(self, process: NoiseProcess | None) -> Sampler:
        """The family's default sampler for ``process``."""

    @property
    def process(self) -> NoiseProcess | None:
        """The noise process (None for families without one)."""
        return None

    def save_config(self) -> None:
        """save_hyperparameters: the config under LightningCLI, plain-typed arguments otherwise."""
        frame = inspect.currentframe().f_back
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
            return
        init_args = inspect.getargvalues(frame).locals
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        self.save_hyperparameters(*[n for n in names if n in init_args and _is_plain(init_args[n])], frame=frame)

    # --- scores and sampling ---------------------------------------------------------------------
    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """∇ₓ log p_t(x) under the model."""
        return self.score_model(x, t)

    @property
    def network(self) -> nn.Module:
        """The trainable network (what :class:`~lit_score.callbacks.Performance` compiles)."""
        return self.score_model.network

    #: where sampling chains can start (the first is the default); a family with more than its prior declares them
    sample_starts: tuple[str, ...] = ("prior",)

    @property
    def sample_start(self) -> str:
        """Where :meth:`initial_state` starts chains now (set by :meth:`set_sample_start`)."""
        return self._sample_start or self.sample_starts[0]

    def sample_start_problem(self, start: str) -> str | None:
        """Why chains cannot start from ``start`` now (None: they can)."""
        if start not in self.sample_starts:
            choices = ", ".join(self.sample_starts)
            return f"{type(self).__name__} cannot start chains from {start!r}: choose from {choices}"
        return None

    def set_sample_start(self, start: str | None) -> None:
        """Choose one of :attr:`sample_starts` for later sampling (None: the default)."""
        if start is not None and start not in self.sample_starts:
            raise ValueError(f"{type(self).__name__} cannot start chains from {start!r}: choose from"
                             f" {', '.join(self.sample_starts)}")
        self._sample_start = start

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Where sampling starts: a draw from the process prior."""
        return self.process.prior_sample((n, *self.require_shape()), generator=generator, device=self.device)

    def require_shape(self) -> tuple[int, ...]:
        if self.sample_shape is None:
            raise ValueError(
                "the model has no sample_shape: pass model.sample_shape (the CLI links it from the data module)"
            )
        return self.sample_shape

    #: whether ``score_model`` offers the energy E(x) (``energy`` / ``energy_and_score``), not only its gradient
    has_energy: bool = False
    #: whether ``score_model`` is a two-time flow map X_{t→s} (a network built with ``two_time``)
    two_time: bool = False

    def can_use(self, sampler: Sampler) -> bool:
        """Whether ``sampler`` can run on this model: one that needs a noise process needs a model with one, one
        that needs the energy (MALA, HMC) a model that has it."""
        return self.sampler_problem(sampler) is None

    def sampler_problem(self, sampler: Sampler) -> str | None:
        """Why ``sampler`` cannot run on this model, in words (None: it can)."""
        if sampler.requires_process and self.process is None:
            return f"it needs a noise process and {type(self).__name__} has none"
        if sampler.requires_energy and not self.has_energy:
            return f"it needs the energy E(x) for its accept/reject test and {type(self).__name__} has only a score"
        if sampler.requires_two_time and not self.two_time:
            return "it jumps with a two-time flow map and this model takes one time (distil a two-time student from it)"
        return None

    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        x: Tensor | None = None,
        labels: Tensor | None = None,
        edit=None,
    ) -> Tensor:
        """The samples (n, *sample_shape) of :meth:`draw` (which see)."""
        return self.draw(n, sampler, generator, progress, x, labels, edit).samples

    def draw(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        x: Tensor | None = None,
        labels: Tensor | None = None,
        edit=None,
    ) -> Draw:
        """Draw ``n`` samples with ``sampler`` (default: the model's), in eval mode: the samples, the NFE and what the
        sampler measured (:class:`~lit_score.samplers.base.Draw`). With class ``labels`` (n,) from the conditional,
        guided score of :meth:`conditioned_score`; with an ``edit`` (:class:`~lit_score.control.edit.Edit` of n rows:
        SDEdit or inpainting) that edit instead of plain sampling."""
        sampler = sampler if sampler is not None else self.sampler
        if labels is None and self._condition is not None:  # after set_condition: its labels
            labels = self.condition_labels(torch.arange(n))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                score_fn = self.conditioned_score(labels)
                if edit is not None:
                    return edit(score_fn, self.process, sampler, generator=generator, progress=progress)
                x = self.initial_state(n, generator) if x is None else x
                return sampler.draw(score_fn, x, self.process, generator=generator, progress=progress)
        finally:
            self.train(was_training)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """One sample per seed index of a generation batch of :func:`lit_score.evaluation.seed_loader` (the
        datamodules' ``predict_dataloader``), drawn with the model's sampler and that batch's generator: the samples
        (what ``trainer.predict`` returns). What drawing them cost is recorded in the batch beside its seed indices,
        ``batch["nfe"]``, where :class:`~lit_score.generation.SampleCollector` reads it."""
        drawn = seed_batch_draw(self, batch, self.sampler)
        batch["nfe"] = drawn.nfe
        return drawn.samples

    # --- training plumbing -----------------------------------------------------------------------
    def data_batch(self, batch: Tensor | tuple | list | dict) -> Tensor:
        """The data tensor of a batch, checked against ``sample_shape``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, dict):
            raise TypeError("dict batches are not supported: the data module should yield tensors (B, *sample_shape)")
        if self.sample_shape is not None and tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"data batches have sample shape {tuple(x.shape[1:])} but the model was built for {self.sample_shape}:"
                " set model.sample_shape (and the network's channels/size) to match the data"
            )
        return x

    def check_finite(self, loss: Tensor) -> None:
        """Stop with a clear message on a NaN/inf loss (nothing already saved is touched) — unless a
        :class:`~lit_score.callbacks.NonFiniteGuard` skips such steps (``lit-score fit`` adds one)."""
        if not self.skip_nonfinite_steps and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}: lower the learning rate, set"
                " --trainer.gradient_clip_val 1.0, use 32-bit precision, or check the data for NaNs; checkpoints"
                " already written are intact"
            )

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_fn(params) if self.optimizer_fn is not None else torch.optim.Adam(params, lr=2e-4)
        if self.lr_scheduler_fn is not None:
            scheduler = self.lr_scheduler_fn(optimizer)
        elif self.warmup_steps > 0:
            warmup = self.warmup_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_network(self, network: nn.Module, t: Tensor | None, channels_factor: int = 1) -> None:
        """Run the network once on zeros of the sample shape and fail clearly if the output shape is wrong
        (``channels_factor`` = 2: a learned variance's second half of channels)."""
        if self.sample_shape is None:
            return
        x = torch.zeros((2, *self.sample_shape), device=self.device)
        try:
            with torch.no_grad():
                out = network(x, t)
        except RuntimeError as err:
            raise ValueError(
                f"the network cannot take data of sample shape {self.sample_shape}: {str(err).splitlines()[0]}"
                " — set the network's channels / data_dim / resolution to match the data"
            ) from err
        expected = (2, x.shape[1] * channels_factor, *x.shape[2:]) if out.ndim == x.ndim else (2,)
        if tuple(out.shape) != tuple(expected):
            raise ValueError(
                f"the network maps data of shape {tuple(x.shape)} to {tuple(out.shape)}, expected {tuple(expected)}"
                " — set the network's channels / data_dim to match the data"
                + (" (out_channels / out_dim twice the data's for a learned variance)" if channels_factor > 1 else "")
            )

