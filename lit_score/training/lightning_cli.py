"""The LightningCLI of lit-score: every family and data module, resume checks, run folders, W&B and predictions.

================================  ==================================================================================
name                              what it adds to Lightning's
================================  ==================================================================================
:class:`LitScoreSaveConfig`       the resolved config in each run's own folder (beside a W&B run's checkpoints and in
                                  its files); a resumed run keeps the first config beside its own
:class:`LitScoreCLI`              the data → model shape link; a checkpoint checked (allow-list, family, resumable
                                  config) before Lightning reads it; no run folder left by a fit failing at once;
                                  exact-resume state, stop signals, a final ``last.ckpt``, non-finite guards and
                                  atomic checkpoint writes on every trainer; ``predict`` writes what it generates
================================  ==================================================================================
"""

from __future__ import annotations

import shutil
import sys
from argparse import ArgumentError
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lit_score.callbacks.resume import FinalCheckpoint, GracefulStop, NonFiniteGuard, ResumeState
from lit_score.callbacks.samples import run_dir
from lit_score.checkpointing import AtomicCheckpointIO
from lit_score.data import GenerativeDataModule
from lit_score.evaluation.evaluate import content_key, describe_sampler
from lit_score.generation import SampleCollector
from lit_score.loading.sampler import data_range_problem
from lit_score.models import GenerativeModule
from lit_score.training.arguments import did_you_mean, one_line
from lit_score.training.resume import check_resume, checked_hyperparameters, find_last
from lit_score.training.wandb_login import check_wandb_login, finish_wandb
from lit_score.validation import InvalidInput
from lit_score.visualize import save_picture

CHECKPOINT_WORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


class LitScoreSaveConfig(SaveConfigCallback):
    """Write the resolved config into each run's own directory (with wandb, beside the checkpoints and into
    the wandb run's files, instead of the save_dir all wandb runs share)."""

    resuming: bool = False  # set by LitScoreCLI.before_fit: the run continues its folder

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":  # validate/test/predict write no run of their own: nothing to record or overwrite
            return
        if self.already_saved:
            return
        wandb = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        directory = run_dir(trainer) if wandb else Path(trainer.log_dir or ".")  # both broadcast: every rank calls
        if (directory / self.config_filename).exists() and self.resuming:
            k = 1  # a resumed run keeps the first config beside its own
            while (directory / f"config_resume_{k}.yaml").exists():
                k += 1
            self.config_filename = f"config_resume_{k}.yaml"
        if not wandb:
            return super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:
            for target in (directory, Path(wandb[0].experiment.dir)):
                target.mkdir(parents=True, exist_ok=True)
                self.parser.save(self.config, target / self.config_filename, skip_none=False, overwrite=True)
        self.already_saved = True


class LitScoreCLI(LightningCLI):
    """LightningCLI over every lit-score family and data module, with the data → model shape link."""

    #: (folder, its missing parents) a new fit will create: what a fit failing at once removes again
    _new_run_dir: tuple[Path, list[Path]] | None = None

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", GenerativeModule)
        kwargs.setdefault("datamodule_class", GenerativeDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", LitScoreSaveConfig)
        no_exit = {"exit_on_error": False}
        kwargs.setdefault("parser_kwargs", {**no_exit, **{name: dict(no_exit) for name in self.subcommands()}})
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            hint = did_you_mean(parser, list(args or sys.argv[1:]), str(err))
            if not hint:
                raise
            raise ArgumentError(None, f"{one_line(err)}{hint}") from err

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        """Lightning restores a ``--ckpt_path`` weights-only (tensors and plain types) unless told otherwise: a
        checkpoint never unpickles objects, here as in :mod:`lit_score.loading`."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            parser.set_defaults(weights_only=True)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data", "model.init_args.sample_shape", compute_fn=lambda data: data.sample_shape, apply_on="instantiate"
        )

    def check_sampler_data(self) -> None:
        """The model's sampler must fit the data: its x̂₀ thresholding needs the data's range (one line, before any
        training or generation; :func:`~lit_score.loading.sampler.data_range_problem`)."""
        problem = data_range_problem(self.model.sampler, self.datamodule)
        if problem is not None:
            raise InvalidInput(f"model.sampler {type(self.model.sampler).__name__} cannot sample"
                               f" {self.datamodule.label}: {problem}")

    def before_fit(self) -> None:
        """Before anything is written: the model's sampler must fit the data (:meth:`check_sampler_data`); a new run
        must not land in a folder that holds another run; a resumed one tells the config writer it continues its
        folder."""
        self.check_sampler_data()
        resuming = bool(self.config_init["fit"].get("ckpt_path"))
        for cb in self.trainer.callbacks:
            if isinstance(cb, LitScoreSaveConfig):
                cb.resuming = resuming
        self._new_run_dir = None
        if not self.trainer.loggers or isinstance(self.trainer.loggers[0], WandbLogger):
            return
        directory = Path(self.trainer.log_dir or ".")  # no broadcast before the process group exists
        if not resuming and ((directory / "config.yaml").exists() or list(directory.glob("checkpoints/*.ckpt"))):
            raise InvalidInput(f"{directory} already holds a run: drop the logger's version to start a new one,"
                               " or continue it with --ckpt_path last")
        if not directory.exists():
            self._new_run_dir = directory, [p for p in [directory, *directory.parents] if not p.exists()]

    def _run_subcommand(self, subcommand: str) -> None:
        """A fit that fails before its first training step leaves no run folder behind (one that trained keeps
        its logs). A fit's W&B run is finished when the fit ends
        (:func:`~lit_score.training.wandb_login.finish_wandb`)."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if subcommand == "fit":
                finish_wandb(self.trainer.loggers, exit_code=1)
                self._remove_new_run_dir()
            raise
        if subcommand == "fit":
            finish_wandb(self.trainer.loggers, exit_code=0)

    def _remove_new_run_dir(self) -> None:
        """Remove the folder this fit created (and its parents it created) when it trained no step and saved nothing."""
        if self._new_run_dir is None or not self.trainer.is_global_zero:
            return
        directory, missing = self._new_run_dir
        if directory.exists() and self.trainer.global_step == 0 and not list(directory.rglob("*.ckpt")):
            shutil.rmtree(directory, ignore_errors=True)
            for parent in missing[1:]:
                if parent.exists() and not any(parent.iterdir()):
                    parent.rmdir()

    def before_predict(self) -> None:
        """``predict`` writes what it generates: ``<run>/predictions/<ckpt>_<sampler>_n<N>_seed<S>.npz`` (+ a PNG),
        the run being the checkpoint's (or ``trainer.default_root_dir`` without one); the model's sampler must fit
        the data (:meth:`check_sampler_data`)."""
        self.check_sampler_data()
        if any(isinstance(cb, SampleCollector) for cb in self.trainer.callbacks):
            return
        ckpt = self.config_init["predict"].get("ckpt_path")
        data = self.datamodule
        data._ensure_setup()
        sampler = f"{type(self.model.sampler).__name__}-{content_key(describe_sampler(self.model.sampler), 6)}"
        run = Path(ckpt).parent.parent if ckpt and Path(ckpt).is_file() else Path(self.trainer.default_root_dir)
        name = f"{Path(ckpt).stem if ckpt else 'model'}_{sampler}_n{len(data.val_dataset)}_seed{data.seed}.npz"
        collector = SampleCollector(run / "predictions" / name, {"sampler": repr(self.model.sampler)})
        self.trainer.callbacks.append(collector)

    def after_predict(self) -> None:
        collector = next(cb for cb in self.trainer.callbacks if isinstance(cb, SampleCollector))
        if self.trainer.is_global_zero and collector.samples is not None and collector.path is not None:
            save_picture(collector.samples, collector.path.with_suffix(".png"), self.datamodule.data_range)
            print(f"wrote {collector.path} and its picture ({collector.samples.shape[0]} samples)")

    def instantiate_trainer(self, **kwargs):
        """The configured trainer plus what every lit-score run gets: exact-resume state, saving on a stop signal,
        a final last.ckpt, non-finite step skipping (each unless the config lists its own) and atomic checkpoint
        writes."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        check_wandb_login(trainer.loggers)
        for cls in (ResumeState, NonFiniteGuard, GracefulStop):  # after the config's (so after an EMA update)
            if not any(isinstance(cb, cls) for cb in trainer.callbacks):
                trainer.callbacks.append(cls())
        if not any(isinstance(cb, FinalCheckpoint) for cb in trainer.callbacks):
            trainer.callbacks.insert(0, FinalCheckpoint())  # its on_train_end runs before EMA's copies the average
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Check a checkpoint before anything of it is used: readable weights-only, classes from allowed packages,
        the family the config builds; for ``fit`` also resolve ``last``, continue the checkpoint's run folder and
        refuse a config that differs from the checkpoint where a resumed run cannot honour it."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand == "fit" and ckpt_path == "last":
            ckpt_path = self.config[subcommand].ckpt_path = str(find_last(self.config["fit"].trainer))
        if ckpt_path and ckpt_path not in CHECKPOINT_WORDS and not Path(ckpt_path).is_file():
            raise InvalidInput(f"checkpoint {ckpt_path} does not exist: pass the path of a .ckpt file")
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return super()._parse_ckpt_path()
        hparams = checked_hyperparameters(ckpt_path, self.config[subcommand].model.class_path)
        if subcommand != "fit":
            return super()._parse_ckpt_path()  # validate / test / predict: the checkpoint's model, as Lightning does
        check_resume(self.config["fit"], ckpt_path, hparams)
