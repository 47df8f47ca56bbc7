"""NCSN (Song & Ermon 2019; "Improved techniques", Song & Ermon 2020): a σ-conditioned score on a geometric ladder."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_score.checks import check_number
from lit_score.data.base import lit_datamodule
from lit_score.losses import DenoisingLoss, DiffusionLoss
from lit_score.models.diffusion import DiffusionModule
from lit_score.processes import DiscreteVE, NoiseProcess
from lit_score.samplers import AnnealedLangevin, Sampler
from lit_score.scores import Target

_CKPT_KEY = "ncsn_sigma_max"


def max_pairwise_distance(x: Tensor, chunk_size: int = 1024) -> float:
    """max_{i<j} ‖x_i − x_j‖ over samples x (n, ...) by row chunks (O(chunk·n) memory); Song & Ermon 2020, tech. 1."""
    flat = torch.unique(x.reshape(x.shape[0], -1), dim=0)  # draws with replacement repeat points
    best = torch.zeros((), dtype=flat.dtype, device=flat.device)
    for start in range(0, flat.shape[0] - 1, chunk_size):
        block = flat[start : start + chunk_size]
        best = torch.maximum(best, torch.cdist(block, flat[start:]).max())
    return float(best)


class NCSN(DiffusionModule):
    """Noise-conditional score network trained by DSM summed over the levels with λ(σ) = σ².

    Defaults: ``DiscreteVE(sigma_min=0.01, sigma_max=50, num_levels=232)`` (NCSNv2's CIFAR-10 ladder;
    configs set a much smaller σ₁ for toy data), target ``score`` with the output divided by σ
    (technique 3), ``DenoisingLoss(weighting="sigma2")`` (each level's loss is O(1)), and annealed
    Langevin sampling with NCSNv2's CIFAR-10 settings (5 steps per level, ε = 6.2e-6, final denoising).

    Args:
        scale_by_sigma: divide the ``score`` output by σ (None: True for target ``score``).
        sigma_max_from_data: at ``setup("fit")`` set σ₁ to the maximum pairwise Euclidean distance between
            ``sigma_max_samples`` training points (technique 1) and rebuild the ladder. This is the one place
            the model reads its data: ``trainer.datamodule.reference_samples(n)``. The value is logged as
            ``sigma_max`` and stored in the checkpoint, so a loaded model samples with the same ladder.
        sigma_max_samples: how many training points the maximum is taken over.
    """

    default_target = "score"
    default_scale_by_sigma = True

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
        label_dropout: float = 0.0,
        sigma_max_from_data: bool = False,
        sigma_max_samples: int = 10000,
    ) -> None:
        super().__init__(
            network, process, target, scale_by_sigma, loss, sampler, optimizer, lr_scheduler, warmup_steps,
            sample_shape, sigma_data=sigma_data, label_dropout=label_dropout,
        )
        check_number("sigma_max_samples", sigma_max_samples, ge=1, integer=True)
        self.sigma_max_from_data, self.sigma_max_samples = sigma_max_from_data, sigma_max_samples
        self.save_config()  # again, from this frame: records the family options too

    def default_process(self) -> NoiseProcess:
        return DiscreteVE(sigma_min=0.01, sigma_max=50.0, num_levels=232)

    def default_loss(self) -> DenoisingLoss:
        return DenoisingLoss(weighting="sigma2")

    def default_sampler(self, process: NoiseProcess) -> Sampler:

        return AnnealedLangevin(steps_per_level=5, eps=6.2e-6, denoise=True)

    @property
    def sigmas(self) -> Tensor:
        """The noise levels σ₁ > … > σ_L of the process's ladder."""
        return self.process.sigmas

    def set_sigma_max(self, sigma_max: float) -> None:
        """Swap in a process with σ₁ = ``sigma_max`` (σ_L and the number of levels unchanged)."""
        self.score_model.process = self.process.with_sigma_max(float(sigma_max))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or not self.sigma_max_from_data:
            return
        datamodule = lit_datamodule(self.trainer)
        if datamodule is None:  # a lit_score datamodule declares reference_samples
            raise ValueError("sigma_max_from_data needs a lit_score datamodule (with reference_samples) passed to fit")
        data = datamodule.reference_samples(self.sigma_max_samples, torch.Generator().manual_seed(0))
        value = max_pairwise_distance(data.to(self.device, torch.float64))
        value = float(self.trainer.strategy.broadcast(value, src=0))
        if not math.isfinite(value) or value <= self.process.sigma_min:
            raise ValueError(f"sigma_max_from_data found {value:g}, not above sigma_min={self.process.sigma_min:g}")
        self.set_sigma_max(value)
        rank_zero_info(f"NCSN: sigma_max set from the data to {value:.6g} (max pairwise distance)")
        for logger in self.trainer.loggers:
            logger.log_metrics({"sigma_max": value}, step=0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.sigma_max_from_data:
            checkpoint[_CKPT_KEY] = float(self.process.sigma_max)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if _CKPT_KEY in checkpoint:
            self.set_sigma_max(checkpoint[_CKPT_KEY])
