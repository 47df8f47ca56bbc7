"""NoiseConditionalClassifier: p_φ(y | x_t, t) on the noise process of the model it guides.

Classifier guidance (Dhariwal & Nichol 2021, sec. 4; Song et al. 2021, sec. 5) adds w_c·∇ₓ log p_φ(y | x_t, t) to a
diffusion model's score, so p_φ must classify noisy samples at every noise level the sampler visits: it is trained
on x_t = α(t)·x₀ + σ(t)·ε with t from the *same* process's training distribution (guided-diffusion's noised
classifier), by cross-entropy on the data's labels. It sees the process's noise conditioning ``c_noise(t)``, as the
score networks do, so a classifier and the model it guides must share one process (:meth:`process_mismatch` says
where two differ).

| symbol | meaning |
|---|---|
| x₀, y | a labelled data sample (a data module with ``labels: true``) |
| t ~ process.sample_time | the training time (a discrete process: the step n/N) |
| x_t | α(t)·x₀ + σ(t)·ε, ε ~ N(0, I) |
| logits(x_t, t) | network(x_t, c_noise(t)) → (B, K) |
| log p_φ(y | x_t, t) | log_softmax(logits)[y] = :meth:`~NoiseConditionalClassifier.log_prob` |

It is a :class:`~lit_score.models.GenerativeModule` only so that ``lit-score fit`` trains it and ``load_model`` loads
it (both take GenerativeModules); it draws no samples and refuses every sampling entry point in one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.models.base import GenerativeModule
from lit_score.processes import NoiseProcess
from lit_score.scores.declarations import declared_outputs
from lit_score.utils import randn_like


class NoiseConditionalClassifier(GenerativeModule):
    """A classifier p_φ(y | x_t, t) of noisy data, for classifier guidance (module docstring).

    Args:
        network: ``network(x, c_noise(t)) -> (B, K)`` logits: ``MLP(data_dim, out_dim=K)`` for flat data,
            :class:`~lit_score.networks.EncoderUNet` for images.
        process: the noise process of the model it will guide (the same class and settings).
        num_classes: K; None: the network's ``out_dim``.
        optimizer: optimizer callable (``class_path``/``init_args`` in YAML); Adam(lr=2e-4) when None.
        lr_scheduler: optional LR scheduler callable, stepped every optimizer step.
        warmup_steps: linear learning-rate warm-up over this many steps.
        sample_shape: shape of one sample; linked from the datamodule by the CLI.

    Logs ``train/loss``, ``train/accuracy`` and, on held-out data with noise seeded by the batch index,
    ``val/loss``, ``val/accuracy`` (t from the training distribution) and ``val/accuracy_t_min`` (t = t_min, the
    nearly clean data).
    """

    #: its ``log_prob(x, t, y)`` guides another model's sampling (``--classifier_ckpt``)
    guides = True

    def __init__(
        self,
        network: nn.Module,
        process: NoiseProcess,
        num_classes: int | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(None, optimizer, lr_scheduler, warmup_steps, sample_shape)
        check_number("num_classes", num_classes, ge=2, integer=True, allow_none=True)
        declared = declared_outputs(network)
        if num_classes is None and declared is None:
            raise ValueError(f"{type(network).__name__} declares no out_dim: set model.init_args.num_classes")
        if num_classes is not None and declared is not None and declared != num_classes:
            raise ValueError(f"num_classes is {num_classes} but the network has {declared} outputs: set its out_dim"
                             f" to {num_classes}")
        if process.learnable_schedule:
            raise ValueError(f"a classifier trains on a fixed noise process, and {type(process).__name__}'s schedule is"
                             " learned with the model it belongs to: guide models on a fixed process")
        self._num_classes = int(num_classes if num_classes is not None else declared)
        self.network = network
        self.noise_process = process
        self.save_config()

    @property
    def process(self) -> NoiseProcess:
        """The noise process the classifier was trained on."""
        return self.noise_process

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return self._num_classes

    # --- the classifier ----------------------------------------------------------------------------------------
    def logits(self, x: Tensor, t: Tensor | float) -> Tensor:
        """(B, K) unnormalised log p_φ(· | x_t = x, t) for x (B, ...) and t (B,) or a scalar (in the current mode)."""
        t = torch.broadcast_to(torch.as_tensor(t, dtype=x.dtype, device=x.device), x.shape[:1])
        return self.network(x, self.process.c_noise(t))

    def log_posterior(self, x: Tensor, t: Tensor | float) -> Tensor:
        """log p_φ(y = k | x_t = x, t) as (B, K) (a log-softmax), evaluated in eval mode (the mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            return self.logits(x, t).log_softmax(dim=1)
        finally:
            self.train(was_training)

    def log_prob(self, x: Tensor, t: Tensor | float, y: Tensor | int) -> Tensor:
        """log p_φ(y | x_t = x, t) (B,) for labels y (B,) or one label: what classifier guidance differentiates."""
        y = torch.broadcast_to(torch.as_tensor(y, device=x.device), x.shape[:1]).long()
        if ((y < 0) | (y >= self.num_classes)).any():
            raise ValueError(f"class labels must lie in 0 … {self.num_classes - 1}, got {y.min()} … {y.max()}")
        return self.log_posterior(x, t).gather(1, y.reshape(-1, 1)).squeeze(1)

    def process_mismatch(self, process: NoiseProcess, num_points: int = 64) -> str | None:
        """Why this classifier cannot guide a model on ``process`` (None: same time range, α(t), σ(t) and noise
        conditioning on a grid of times, to 1e-5 relative)."""
        mine = self.process
        if (process.t_min, process.t_max) != (mine.t_min, mine.t_max):
            return (f"the classifier was trained on t in [{mine.t_min:g}, {mine.t_max:g}] ({type(mine).__name__}) and"
                    f" the model's process spans [{process.t_min:g}, {process.t_max:g}] ({type(process).__name__})")
        t = torch.linspace(mine.t_min, mine.t_max, num_points, device=mine.device)
        theirs = t.to(process.device)
        pairs = {"alpha": (mine.alpha(t), process.alpha(theirs)), "sigma": (mine.sigma(t), process.sigma(theirs)),
                 "c_noise": (mine.c_noise(t), process.c_noise(theirs))}
        for name, (a, b) in pairs.items():
            if not torch.allclose(a, b.to(t.device), rtol=1e-5, atol=1e-6):
                return (f"the classifier's {type(mine).__name__} and the model's {type(process).__name__} differ in"
                        f" {name}(t): train the classifier on the model's process")
        return None

    # --- training ------------------------------------------------------------------------------------------------
    def class_labels(self, batch) -> Tensor:
        """The labels y (B,) of a batch (x, y), refused in one line when the data has none."""
        if not (isinstance(batch, (tuple, list)) and len(batch) > 1):
            raise ValueError(f"{type(self).__name__} learns p(y | x_t) from class labels but the data has none: set"
                             " data.init_args.labels true")
        return self.data_labels(batch)  # the data's classes are checked against num_classes at setup

    def objective(self, batch, generator: torch.Generator | None = None, t: Tensor | None = None):
        """Per-sample cross-entropy (B,) of the batch's labels at x_t (t from ``process.sample_time`` unless given),
        and whether each arg-max prediction is right (B,)."""
        y = self.class_labels(batch)
        x0 = self.data_batch(batch)
        if t is None:
            t = self.process.sample_time(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
        x_t = self.process.perturb(x0, t, randn_like(x0, generator))
        logits = self.logits(x_t, t)
        return F.cross_entropy(logits, y, reduction="none"), logits.argmax(dim=1) == y

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, correct = self.objective(batch)
        loss = loss.mean()
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=correct.shape[0])
        self.log("train/accuracy", correct.float().mean(), prog_bar=True, batch_size=correct.shape[0])
        return loss

    def held_out(self, batch, batch_idx: int, stage: str) -> None:
        """Loss and accuracy on held-out data with noise seeded by the batch index (comparable across runs), at
        training-distribution times and at t_min."""
        x0 = self.data_batch(batch)
        generator = torch.Generator(x0.device).manual_seed(batch_idx)
        loss, correct = self.objective(batch, generator)
        t_min = torch.full(x0.shape[:1], self.process.t_min, dtype=x0.dtype, device=x0.device)
        clean = self.objective(batch, generator, t=t_min)[1]
        size = x0.shape[0]
        self.log(f"{stage}/loss", loss.mean(), prog_bar=stage == "val", sync_dist=True, batch_size=size)
        self.log(f"{stage}/accuracy", correct.float().mean(), prog_bar=stage == "val", sync_dist=True,
                 batch_size=size)
        self.log(f"{stage}/accuracy_t_min", clean.float().mean(), sync_dist=True, batch_size=size)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.held_out(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.held_out(batch, batch_idx, "test")

    @property
    def network(self) -> nn.Module:
        """The classifier network (registered as the submodule ``network``)."""
        return self._modules["network"]

    def setup(self, stage: str) -> None:
        """Check the data's classes; run the network once on zeros of the sample shape: (B, num_classes) logits."""
        self.check_data_classes()
        if self.sample_shape is None:
            return
        x = torch.zeros((2, *self.sample_shape), device=self.device)
        try:
            with torch.no_grad():
                out = self.logits(x, torch.full((2,), self.process.t_max, device=self.device))
        except RuntimeError as err:
            raise ValueError(f"the classifier network cannot take data of sample shape {self.sample_shape}:"
                             f" {str(err).splitlines()[0]} — set its channels / data_dim to match the data") from err
        if tuple(out.shape) != (2, self.num_classes):
            raise ValueError(f"the classifier network maps data of shape {tuple(x.shape)} to {tuple(out.shape)},"
                             f" expected {(2, self.num_classes)} logits — set its out_dim to num_classes")

    # --- no sampling ---------------------------------------------------------------------------------------------
    def _no_samples(self) -> str:
        return (f"a {type(self).__name__} draws no samples: it guides a diffusion model's sampling"
                " (model.set_condition(classifier=…, classifier_scale=…))")

    def default_sampler(self, process: NoiseProcess | None) -> None:
        """A classifier has no sampler."""
        return None

    def sampler_problem(self, sampler) -> str | None:
        return self._no_samples()

    def set_sample_start(self, start: str | None) -> None:
        raise ValueError(self._no_samples())

    def sample(self, n: int, *args, **kwargs) -> Tensor:
        raise ValueError(self._no_samples())

    def draw(self, n: int, *args, **kwargs):
        raise ValueError(self._no_samples())

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        raise ValueError(self._no_samples())
