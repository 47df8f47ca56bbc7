"""Sample grids / scatter plots during training, saved as PNG and sent to the configured logger."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_score.checks import check_number
from lit_score.data.base import lit_datamodule
from lit_score.generation import SeedBatches, draw_across_ranks, generate_across_ranks  # noqa: F401 (re-exported)
from lit_score.samplers import Draw, Sampler
from lit_score.visualize import save_samples


def run_dir(trainer: pl.Trainer) -> Path:
    """This run's own directory, ``save_dir/name/version`` as ModelCheckpoint resolves it (call on every rank)."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if logger.save_dir is None:
        return Path(trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    path = Path(logger.save_dir) / str(logger.name) / version
    return Path(trainer.strategy.broadcast(str(path)))


class ValidationSampling(pl.Callback):
    """Base of callbacks that sample at the first validation batch every N epochs and write into ``<run dir>/subdir``.

    At the first validation batch weight-averaging callbacks (EMA) have their averaged weights swapped in,
    so what is sampled there is the EMA model whatever the callback order.
    """

    subdir = "samples"

    def __init__(self, every_n_epochs: int = 1, dirpath: str | None = None) -> None:
        check_number("every_n_epochs", every_n_epochs, ge=1, integer=True)
        self.every_n_epochs = every_n_epochs
        self.dirpath = Path(dirpath) if dirpath is not None else None

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:  # resolving the run directory broadcasts: do it on every rank, here
            self.dirpath = run_dir(trainer) / self.subdir

    def due(self, trainer: pl.Trainer, batch_idx: int, dataloader_idx: int) -> bool:
        """True at the first batch of a validation epoch on the every-N schedule (always under fast_dev_run)."""
        if batch_idx != 0 or trainer.sanity_checking or dataloader_idx != 0:
            return False
        return trainer.current_epoch % self.every_n_epochs == 0 or bool(trainer.fast_dev_run)


class SampleGrid(ValidationSampling):
    """Every ``every_n_epochs`` validation epochs, sample the model and save ``samples/epoch=E.png`` (+ .npz).

    Sampling happens at the first validation batch, where weight-averaging callbacks (EMA) have their
    averaged weights swapped in, so the grid shows the EMA model whatever the callback order; a last
    grid, ``samples/final.png``, is drawn when fit ends (after EMA has copied its weights in). The
    generation is split across DDP ranks; files are written and logged on rank zero. A class-conditional model
    draws every class in turn (its ``condition_labels``) and the grid has one row per class.

    Args:
        every_n_epochs: how often (in validation epochs).
        num_samples: samples per grid / scatter.
        sampler: sampler to use (the model's own when None).
        seed: base seed (fixed, so successive grids are comparable).
        dirpath: where to write (default: ``<run dir>/samples``, beside ``checkpoints/``).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 64,
        sampler: Sampler | None = None,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs, dirpath)
        SeedBatches(num_samples, num_samples, seed)  # a bad seed or count fails here, not mid-training
        self.num_samples, self.sampler, self.seed = num_samples, sampler, seed
        self.last_paths: dict[str, Path] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.due(trainer, batch_idx, dataloader_idx):
            return
        n = min(self.num_samples, 8) if trainer.fast_dev_run else self.num_samples  # a check of the path, not a grid
        drawn = draw_across_ranks(trainer, pl_module, n, self.sampler, self.seed)
        self._write(trainer, pl_module, drawn, f"epoch={trainer.current_epoch:04d}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        """A last grid from the final weights (EMA weights, once the EMA callback has copied them in)."""
        if trainer.fast_dev_run or trainer.interrupted:
            return
        drawn = draw_across_ranks(trainer, pl_module, self.num_samples, self.sampler, self.seed)
        self._write(trainer, pl_module, drawn, "final")

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, pl_module, drawn: Draw, name: str) -> None:
        x = drawn.samples
        datamodule = lit_datamodule(trainer)  # None when fit was given bare loaders or another kind of data module
        data_range = datamodule.data_range if datamodule is not None else (-1.0, 1.0)
        reference = None
        if x.ndim == 2 and datamodule is not None:
            reference = datamodule.reference_samples(x.shape[0], torch.Generator().manual_seed(self.seed))
        stem = self.dirpath / name
        title = f"{type(pl_module).__name__} epoch {trainer.current_epoch}, NFE {drawn.nfe}"
        labels = pl_module.condition_labels(torch.arange(x.shape[0]))  # what generation used, by seed index
        self.last_paths = save_samples(x, stem, data_range, reference, title, {"nfe": drawn.nfe}, labels)
        self._log_image(trainer, self.last_paths["png"])

    @staticmethod
    def _log_image(trainer: pl.Trainer, png: Path) -> None:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(png).convert("RGB"))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", image, trainer.global_step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image("samples", [image], step=trainer.global_step)
