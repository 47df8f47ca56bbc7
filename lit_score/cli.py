"""The ``lit-score`` command: LightningCLI for fit/validate/test/predict, and ``sample`` from a checkpoint.

    lit-score fit --config configs/ddpm/toy.yaml
    lit-score sample --ckpt_path runs/ddpm_toy/version_0/checkpoints/last.ckpt --num_samples 2000 \\
        --sampler.class_path lit_score.samplers.DDIM --sampler.init_args.num_steps 50

``sample`` needs no config: the checkpoint records its model class and hyper-parameters.
Bad input ends with one line ``lit-score: error: …`` and exit status 1 (set LIT_SCORE_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from tqdm.auto import tqdm

from lit_score.atomic import outputs, quiet_full_disk_in_threads
from lit_score.callbacks.ranks import RanksDisagreeError
from lit_score.callbacks.resume import (
    FinalCheckpoint,
    GracefulStop,
    NonFiniteGuard,
    NonFiniteStepsError,
    ResumeState,
    TrainingStopped,
)
from lit_score.callbacks.samples import run_dir
from lit_score.checkpointing import AtomicCheckpointIO, NonFiniteWeightsError, find_last_checkpoint, nonfinite_names
from lit_score.data import GenerativeDataModule
from lit_score.generation import SampleCollector, SeedBatches, seed_batch_draw
from lit_score.interrupts import Interrupted, stop_on_signals
from lit_score.loading import checkpoint_class, load_module, read_checkpoint, resolve_class
from lit_score.models import GenerativeModule, NonFiniteLossError
from lit_score.samplers import Sampler
from lit_score.validation import (
    ENCODE_RULES,
    SAMPLE_RULES,
    check_config_data,
    check_finite_argv,
    check_options,
    check_output_stem,
    check_sampler_steps,
    describe_os_error,
    resolve_device,
    writable_folder,
)
from lit_score.visualize import save_picture, save_samples

SUBCOMMANDS_OUTSIDE_LIGHTNING = ("sample", "evaluate", "compare", "encode", "sweep")
SUBCOMMANDS = {
    "fit": "train a model (LightningCLI: --config, --trainer.*, --model.*, --data.*)",
    "validate": "held-out loss of a checkpoint (LightningCLI)",
    "test": "test-split loss of a checkpoint (LightningCLI)",
    "predict": "generate one sample per held-out index and write them under <run>/predictions (LightningCLI)",
    "sample": "draw samples from a checkpoint with any sampler: PNG + .npz with NFE",
    "evaluate": "FID / KID / IS / PR, toy distances with floors and bits/dim of a checkpoint, with the protocol",
    "compare": "train and/or evaluate several families on one protocol and write a report",
    "encode": "probability-flow ODE latents of data (and their decoding), with a latent interpolation grid",
    "sweep": "run a W&B sweep file (sweeps/*.yaml) locally, no W&B server: resumable, ranked summary, best config",
}


class UserError(ValueError):
    """A problem with the user's input, reported as one line."""


def checkpoint_class_path(ckpt_path: str | Path) -> str:
    """The model class a lit-score checkpoint was written by (``hyper_parameters['_class_path']``), after the
    checkpoint was read weights-only and every class it names passed :mod:`lit_score.loading`'s checks."""
    ckpt = read_checkpoint(ckpt_path)
    checkpoint_class(ckpt_path, GenerativeModule, ckpt)
    return ckpt["hyper_parameters"]["_class_path"]


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    """Load a checkpoint as the class that wrote it (a lit-score model) once every class it names passed
    :mod:`lit_score.loading`'s checks; weights that are not finite (a diverged run) are refused in one line."""
    model = load_module(ckpt_path, GenerativeModule, map_location=map_location)
    bad = nonfinite_names(model.named_parameters())
    if bad:
        raise UserError(f"checkpoint {ckpt_path} has non-finite weights ({bad[0]}{' …' if len(bad) > 1 else ''}): the"
                        " run diverged before it was written; sample an earlier checkpoint")
    return model


def check_sampler(model: GenerativeModule, sampler: Sampler) -> None:
    """Refuse, in one line, a sampler the model cannot serve, and warn, in one line, about one that runs but does not
    carry the prior to the data (each by the capability it declares)."""
    problem = model.sampler_problem(sampler)
    if problem is not None:
        hint = "Langevin or ULA" if sampler.requires_energy else "Langevin"
        raise UserError(f"{type(sampler).__name__} cannot sample a {type(model).__name__}: {problem}; use a sampler"
                        f" such as {hint} (or the model's own, {type(model.sampler).__name__})")
    if model.process is not None and not sampler.traverses_noise_levels:
        print(f"lit-score: warning: {type(sampler).__name__} runs one chain at t_min = {model.process.t_min:g} from the"
              f" prior and never visits the noise levels {type(model).__name__} was trained on, so its samples are"
              f" not the model's; use the model's own sampler ({type(model.sampler).__name__}) or AnnealedLangevin",
              file=sys.stderr)
    check_sampler_steps(model, sampler)


def resolve_sampler(
    chosen: Sampler | None, parser: ArgumentParser, argv: list[str], model: GenerativeModule
) -> Sampler:
    """The sampler of a ``sample`` / ``evaluate`` run: the model's own without ``--sampler``; with it, the class it
    names, where every setting the user did not give is the model's when that class is the model's sampler's
    (``--sampler.init_args.num_steps 200`` on an EBM keeps its step size, noise and clamp), the class default
    otherwise. ``chosen`` is the parsed ``--sampler``, instantiated with its class defaults."""
    if chosen is None:
        return model.sampler
    if type(chosen) is not type(model.sampler):
        return chosen
    given = parser.parse_args(argv, defaults=False).get("sampler")
    given_args = given.get("init_args") if given is not None else None
    keys = set(vars(given_args)) if given_args is not None else set()
    settings = chosen.settings()
    return model.sampler.with_settings(**{k: settings[k] for k in keys if k in settings})


def _used_ema(ckpt_path: str | Path) -> bool:
    """Whether the checkpoint's weights are averaged ones (Lightning keeps the raw ones as ``current_model_state``)."""
    return "current_model_state" in torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)


class LitScoreSaveConfig(SaveConfigCallback):
    """Write the resolved config into each run's own directory (with wandb, beside the checkpoints and into
    the wandb run's files, instead of the save_dir all wandb runs share)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":  # validate/test/predict write no run of their own: nothing to record or overwrite
            return
        if self.already_saved:
            return
        wandb = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        directory = run_dir(trainer) if wandb else Path(trainer.log_dir or ".")  # both broadcast: every rank calls
        if (directory / self.config_filename).exists() and getattr(self, "resuming", False):
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

    def before_fit(self) -> None:
        """Before anything is written: a new run must not land in a folder that holds another run; a resumed one
        tells the config writer it continues its folder."""
        resuming = bool(self.config_init["fit"].get("ckpt_path"))
        for cb in self.trainer.callbacks:
            if isinstance(cb, LitScoreSaveConfig):
                cb.resuming = resuming
        self._new_run_dir = None  # (folder, its missing parents): what a fit failing at once removes again
        if not self.trainer.loggers or isinstance(self.trainer.loggers[0], WandbLogger):
            return
        directory = Path(self.trainer.log_dir or ".")  # no broadcast before the process group exists
        if not resuming and ((directory / "config.yaml").exists() or list(directory.glob("checkpoints/*.ckpt"))):
            raise UserError(f"{directory} already holds a run: drop the logger's version to start a new one,"
                            " or continue it with --ckpt_path last")
        if not directory.exists():
            self._new_run_dir = directory, [p for p in [directory, *directory.parents] if not p.exists()]

    def _run_subcommand(self, subcommand: str) -> None:
        """A fit that fails before its first training step leaves no run folder behind (one that trained keeps
        its logs). A fit's W&B run is finished when the fit ends: Lightning leaves it open until the process exits, and
        the next WandbLogger of the same process (the next run of a ``compare``, its report) would log into it."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if subcommand == "fit":
                self._finish_wandb(exit_code=1)
            planned = getattr(self, "_new_run_dir", None) if subcommand == "fit" else None
            if planned is not None and self.trainer.is_global_zero:
                directory, missing = planned
                if directory.exists() and self.trainer.global_step == 0 and not list(directory.rglob("*.ckpt")):
                    import shutil

                    shutil.rmtree(directory, ignore_errors=True)
                    for parent in missing[1:]:
                        if parent.exists() and not any(parent.iterdir()):
                            parent.rmdir()
            raise
        if subcommand == "fit":
            self._finish_wandb(exit_code=0)

    def _finish_wandb(self, exit_code: int) -> None:
        """Finish the W&B run this fit's WandbLogger started (on the rank that has one)."""
        if any(isinstance(logger, WandbLogger) for logger in self.trainer.loggers) and "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.run.finish(exit_code=exit_code)

    def before_predict(self) -> None:
        """``predict`` writes what it generates: ``<run>/predictions/<ckpt>_<sampler>_n<N>_seed<S>.npz`` (+ a PNG),
        the run being the checkpoint's (or ``trainer.default_root_dir`` without one)."""
        if any(isinstance(cb, SampleCollector) for cb in self.trainer.callbacks):
            return
        ckpt = self.config_init["predict"].get("ckpt_path")
        data = self.datamodule
        data._ensure_setup()
        from lit_score.evaluation.evaluate import content_key, describe_sampler

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
        from lightning.fabric.plugins import CheckpointIO

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

    def _logger_root(self) -> tuple[Path | None, object]:
        """Where the fit run's checkpoints live: ``<save_dir>/<name>`` of a TensorBoard / CSV style logger (and its
        config node, whose ``version`` a resumed run sets), ``<save_dir>/<project>`` of a WandbLogger (checkpoints
        under the run id; the run folder is not continued), ``default_root_dir`` without a logger."""
        cfg = self.config["fit"].trainer
        logger = cfg.get("logger")
        if isinstance(logger, list):
            logger = logger[0] if logger else None
        if logger is None or logger is True:
            return Path(cfg.get("default_root_dir") or ".") / "lightning_logs", None
        if logger is False:
            return Path(cfg.get("default_root_dir") or "."), None
        init = logger.get("init_args") if hasattr(logger, "get") else None
        if init is None or init.get("save_dir") is None:
            return None, None
        if str(logger.get("class_path", "")).endswith("WandbLogger"):
            return Path(init.save_dir) / (init.get("project") or "lightning_logs"), None
        if "name" not in init:
            return None, None
        return Path(init.save_dir) / (init.get("name") or ""), init

    def _find_last(self) -> Path:
        """``--ckpt_path last``: the newest last.ckpt of this config's runs (or of a ModelCheckpoint's dirpath)."""
        root, _ = self._logger_root()
        candidates = [find_last_checkpoint(root)] if root is not None else []
        callbacks = self.config["fit"].trainer.get("callbacks") or []
        for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
            dirpath = cb.get("init_args", {}).get("dirpath") if hasattr(cb, "get") else None
            if dirpath and (Path(dirpath) / "last.ckpt").is_file():
                candidates.append(Path(dirpath) / "last.ckpt")
        candidates = [c for c in candidates if c is not None]
        if not candidates:
            where = f"under {root}" if root is not None else "(the logger names no save_dir)"
            raise UserError(f"--ckpt_path last: no last.ckpt {where}: train first, or pass the checkpoint's path")
        return max(candidates, key=lambda p: p.stat().st_mtime)

    def _parse_ckpt_path(self) -> None:
        """Check a checkpoint before anything of it is used: readable weights-only, classes from allowed packages,
        the family the config builds; for ``fit`` also resolve ``last``, continue the checkpoint's run folder and
        refuse a config that differs from the checkpoint where a resumed run cannot honour it."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand == "fit" and ckpt_path == "last":
            ckpt_path = self.config[subcommand].ckpt_path = str(self._find_last())
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise UserError(f"checkpoint {ckpt_path} does not exist: pass the path of a .ckpt file")
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return super()._parse_ckpt_path()
        ckpt = read_checkpoint(ckpt_path)
        checkpoint_class(ckpt_path, GenerativeModule, ckpt)  # every class it names checked before Lightning reads it
        hparams = ckpt["hyper_parameters"]
        wanted = self.config[subcommand].model.class_path
        found_class = hparams["_class_path"]
        if wanted != found_class:
            raise UserError(
                f"checkpoint {ckpt_path} holds a {found_class.rpartition('.')[2]} model but the config builds a"
                f" {wanted.rpartition('.')[2]}: use the {found_class.rpartition('.')[2]} config or a matching"
                " checkpoint"
            )
        if subcommand != "fit":
            return super()._parse_ckpt_path()  # validate / test / predict: the checkpoint's model, as Lightning does
        model_cls = resolve_class(wanted, (GenerativeModule,), "the config", "model.class_path")
        configured = _plain(self.config["fit"].model.get("init_args"))
        differences = resume_differences(configured, hparams, getattr(model_cls, "resume_mutable", ()))
        if differences:
            listed = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
            raise UserError(
                f"the config differs from checkpoint {ckpt_path} in what a resumed run cannot change: {listed} — resume"
                " with the checkpoint's run config (its config.yaml), or start a new run"
            )
        root, logger_init = self._logger_root()
        ckpt_dir = Path(ckpt_path).resolve().parent
        if (logger_init is not None and root is not None and ckpt_dir.name == "checkpoints"
                and ckpt_dir.parent.parent == root.resolve()):
            logger_init.version = ckpt_dir.parent.name  # continue in the checkpoint's own run folder


def _plain(tree):
    """A jsonargparse Namespace tree as dicts and lists."""
    if hasattr(tree, "as_dict"):
        tree = tree.as_dict()
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


def resume_differences(configured: dict | None, saved: dict, mutable: tuple[str, ...] = ()) -> list[str]:
    """``key: checkpoint → config`` for every model argument the config sets differently from the checkpoint,
    except ``mutable`` top-level arguments (the config's value is used) and the linked ``sample_shape``. Keys the
    checkpoint does not record (arguments newer than it) are not compared."""
    out: list[str] = []

    def walk(a, b, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in b:
                if k in a and not k.startswith("_"):
                    walk(a[k], b[k], f"{key}.{k}" if key else k)
            return
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{key}[{i}]")
            return
        if a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
            out.append(f"{key}: {b!r} → {a!r}")

    configured = configured or {}
    for key, value in saved.items():
        if key.startswith("_") or key in mutable or key == "sample_shape" or key not in configured:
            continue
        walk(configured[key], value, key)
    return out


def wandb_credentials() -> bool:
    """Whether wandb can log in without asking: an API key, an identity token file or a netrc entry file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    netrc = [Path(os.environ["NETRC"]).expanduser()] if os.environ.get("NETRC") else [
        Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    return any(path.is_file() for path in netrc)


def check_wandb_login(loggers) -> None:
    """Refuse an online WandbLogger that wandb could not log in, before any run folder exists.

    Without credentials and without a terminal to ask on, ``wandb.init`` raises deep inside Lightning's setup. The
    sources looked at are wandb's own (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, the netrc file that
    ``wandb login`` writes: ``$NETRC``, ``~/.netrc`` or ``~/_netrc``); where any exists, or where wandb can prompt,
    wandb decides. Offline and disabled runs need no login.
    """
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        mode = str(logger._wandb_init.get("mode") or os.environ.get("WANDB_MODE") or "online").lower()
        if logger._offline or mode in ("offline", "dryrun", "disabled"):
            continue
        if wandb_credentials() or (sys.stdin is not None and sys.stdin.isatty()):
            continue
        raise UserError("the WandbLogger has no API key and no terminal to ask for one: run `wandb login` or set"
                        " WANDB_API_KEY, or log offline with WANDB_MODE=offline (upload later with `wandb sync`)")


def check_writable(folder: Path) -> None:
    """The output folder can be made and written to, or one line saying so (before any long work)."""
    writable_folder(folder)


def _reference_beside(ckpt: Path, x: torch.Tensor) -> torch.Tensor | None:
    """Real data to draw beside non-image samples, from the checkpoint's own data module (None for images, or when
    the checkpoint records no data module)."""
    if x.ndim != 2:
        return None
    from lit_score.evaluation.cli import EvaluationError, checkpoint_datamodule

    try:
        data = checkpoint_datamodule(ckpt)
    except (EvaluationError, UserError):
        return None
    data.setup("fit")
    return data.reference_samples(min(x.shape[0], 2000), torch.Generator().manual_seed(0))


def _sample_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="lit-score sample", description="Draw samples from a lit-score checkpoint.", exit_on_error=False
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--num_samples", type=int, default=64, help="how many samples")
    parser.add_subclass_arguments(Sampler, "sampler", required=False, help="sampler (default: the model's own)")
    parser.add_argument("--batch_size", type=int | None, default=None,
                        help="generation batch (default min(N, 1000), as evaluate: the same seed, the same samples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--start", type=str | None, default=None,
                        help="where chains start: the model's default (prior, or an EBM's noise) or one it declares"
                             " (an EBM's buffer: continue the checkpoint's replay-buffer chains)")
    add_condition_arguments(parser)
    parser.add_argument("--init", type=str | None, default=None,
                        help="SDEdit: guide(s) to start from (.npz of samples, or a PNG image), perturbed to the"
                             " log-SNR a fraction `strength` of the way from t_min to t_max and sampled back (sample i"
                             " edits guide i mod M)")
    parser.add_argument("--strength", type=float, default=0.5,
                        help="SDEdit strength in [0, 1]: 0 returns the guide, 1 is ordinary sampling")
    parser.add_argument("--inpaint", type=str | None, default=None,
                        help="inpainting / imputation: known values (.npz, or a PNG image) where --mask is 1")
    parser.add_argument("--mask", type=str | None, default=None,
                        help="1 where --inpaint's values are known (.npz shaped like them, or a PNG: white = known)")
    parser.add_argument("--resample", type=int, default=1,
                        help="RePaint resampling count r (1: plain replacement, which is biased; r ~ 10-20 harmonises)")
    parser.add_argument("--jump_length", type=int, default=1, help="RePaint jump length j (e.g. 10)")
    parser.add_argument("--output", type=str | None, default=None, help="output stem (default: <run>/samples/…)")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace existing output files")
    return parser


def add_condition_arguments(parser: ArgumentParser) -> None:
    """``--class_label``, ``--guidance_scale``, ``--classifier_ckpt``, ``--classifier_scale`` (sample and evaluate)."""
    parser.add_argument("--class_label", type=int | None, default=None,
                        help="class of every sample of a class-conditional model (default: every class in turn, one"
                             " grid row per class; -1: the null label, i.e. the unconditional model)")
    parser.add_argument("--guidance_scale", type=float, default=0.0,
                        help="classifier-free guidance w: (1 + w) s(x, t, y) - w s(x, t, none) (0: conditional)")
    parser.add_argument("--classifier_ckpt", type=str | None, default=None,
                        help="a noise-conditional classifier (lit-score fit --config configs/classifier/...) for"
                             " classifier guidance")
    parser.add_argument("--classifier_scale", type=float, default=0.0,
                        help="classifier guidance w_c: s + w_c grad log p(y | x_t, t)")


def build_edit(model: GenerativeModule, cfg):
    """The SDEdit / inpainting :class:`~lit_score.control.edit.Edit` of ``--init`` / ``--inpaint --mask`` (None
    without them); one line for a model without a noise process, both at once, or a file that does not fit."""
    from lit_score.control.edit import Edit, load_array

    if cfg.init is None and cfg.inpaint is None:
        if cfg.mask is not None:
            raise UserError("a mask (--mask) goes with --inpaint FILE (the known values)")
        return None
    if cfg.init is not None and cfg.inpaint is not None:
        raise UserError("--init (SDEdit) and --inpaint are two different edits: pass one of them")
    if model.process is None:
        raise UserError(f"{type(model).__name__} has no noise process: SDEdit and inpainting need a diffusion, score or"
                        " flow model")
    shape, data_range = model.require_shape(), _data_range(model)
    if cfg.init is not None:
        return Edit("sdedit", load_array(cfg.init, shape, data_range, "--init"), strength=cfg.strength)
    if cfg.mask is None:
        raise UserError("inpainting (--inpaint) needs --mask FILE: 1 (white) where the values are known")
    known = load_array(cfg.inpaint, shape, data_range, "--inpaint")
    mask = load_array(cfg.mask, shape, data_range, "--mask", mask=True)
    if mask.shape[0] not in (1, known.shape[0]):
        raise UserError(f"--mask holds {mask.shape[0]} masks for {known.shape[0]} rows of --inpaint: give one mask or"
                        " one per row")
    return Edit("inpaint", known, mask, resample=cfg.resample, jump_length=cfg.jump_length)


def _data_range(model: GenerativeModule) -> tuple[float, float]:
    """The data range the model's samples live in: images in [−1, 1], an EBM's own range, unbounded otherwise."""
    if hasattr(model, "data_range"):
        return tuple(model.data_range)
    return (-1.0, 1.0)


def apply_condition(model: GenerativeModule, cfg, device: torch.device) -> None:
    """Set the model's labels and guidance from the parsed ``add_condition_arguments`` (one line on a mismatch)."""
    classifier = None
    if cfg.classifier_ckpt:
        classifier = load_model(cfg.classifier_ckpt, map_location=device)
        if not callable(getattr(classifier, "log_prob", None)):
            raise UserError(f"{cfg.classifier_ckpt} holds a {type(classifier).__name__}, not a noise-conditional"
                            " classifier: train one with lit-score fit --config configs/classifier/digits.yaml")
        classifier.eval()
        mismatch = classifier.process_mismatch(model.process) if model.process is not None else None
        if mismatch:
            raise UserError(f"{cfg.classifier_ckpt} cannot guide this model: {mismatch} — train the classifier on"
                            " the model's process (configs/classifier/*.yaml)")
        if not cfg.classifier_scale:
            raise UserError("--classifier_ckpt needs --classifier_scale > 0 (the guidance strength w_c)")
    model.set_condition(cfg.class_label, cfg.guidance_scale, classifier, cfg.classifier_scale)


def sample_main(argv: list[str]) -> dict[str, Path]:
    """``lit-score sample``: load a checkpoint, sample, write PNG + NPZ next to the run."""
    parser = _sample_parser()
    cfg = parser.parse_args(argv)
    if cfg.num_samples < 1 or (cfg.batch_size is not None and cfg.batch_size < 1):
        raise UserError(f"need --num_samples >= 1 and --batch_size >= 1, got {cfg.num_samples} and {cfg.batch_size}")
    check_options(cfg, SAMPLE_RULES)
    check_output_stem(cfg.output)
    device = resolve_device(cfg.accelerator)
    model = load_model(cfg.ckpt_path, map_location=device)
    model.set_sample_start(cfg.start)
    apply_condition(model, cfg, device)
    edit = build_edit(model, cfg)
    sampler = resolve_sampler(parser.instantiate_classes(cfg).sampler, parser, argv, model)
    check_sampler(model, sampler)
    ckpt = Path(cfg.ckpt_path)
    condition = model.condition
    tag = "".join(f"_{key}{condition[key]:g}" for key in ("guidance_scale", "classifier_scale") if condition[key])
    tag += f"_class{condition['class_label']}" if condition["class_label"] is not None else ""
    tag += "" if edit is None else (f"_sdedit{edit.strength:g}" if edit.kind == "sdedit" else
                                    f"_inpaint_r{edit.resample}j{edit.jump_length}")
    tag = tag.replace(".", "p")  # 1.5 -> 1p5: the stem takes .png / .npz suffixes
    stem = Path(cfg.output) if cfg.output else (
        ckpt.parent.parent / "samples" / f"{ckpt.stem}_{type(sampler).__name__}_n{cfg.num_samples}_seed{cfg.seed}{tag}"
    )
    existing = [p for p in (stem.with_suffix(".png"), stem.with_suffix(".npz")) if p.exists()]
    if existing and not cfg.overwrite:
        raise UserError(f"{existing[0]} exists: pass --output elsewhere or --overwrite true")
    check_writable(stem.parent)  # before any sampling, not after it
    batches = SeedBatches(cfg.num_samples, cfg.batch_size or min(cfg.num_samples, 1000), cfg.seed)  # = evaluate's
    chunks, nfe, measured = [], 0, {}
    for k in tqdm(range(len(batches)), desc="batches", disable=len(batches) == 1):
        drawn = seed_batch_draw(model, batches[k], sampler, progress=True, edit=edit)
        chunks.append(drawn.samples.cpu())
        nfe, measured = drawn.nfe, drawn.measurements
    x = torch.cat(chunks)
    labels = model.condition_labels(torch.arange(cfg.num_samples))
    conditional = {k: v for k, v in condition.items() if k != "classifier"} if labels is not None else {}
    if conditional.get("class_label") is None:
        conditional.pop("class_label", None)  # None: every class in turn, given per sample by "labels"
    metadata = {
        "nfe": nfe,
        "start": model.sample_start,
        **conditional,
        **({"classifier_ckpt": cfg.classifier_ckpt} if cfg.classifier_ckpt else {}),
        **({} if edit is None else {**edit.describe(), "edit_file": cfg.init or cfg.inpaint}),
        **measured,  # what the sampler measured on the last batch (an MCMC kernel's acceptance and adapted step)
        "sampler": repr(sampler),
        "model": type(model).__name__,
        "ckpt_path": str(ckpt),
        "seed": cfg.seed,
        "ema": _used_ema(ckpt),
    }
    title = f"{type(model).__name__} · {type(sampler).__name__} · NFE {nfe}"
    if labels is not None:
        title += f" · {_condition_words(condition)}"
    reference = _reference_beside(ckpt, x)
    with outputs():  # the PNG and the .npz both, or neither
        paths = save_samples(x, stem, title=title, metadata=metadata, reference=reference,
                             labels=None if labels is None else labels.cpu())
    finite = torch.isfinite(x).all().item()
    extra = "".join(f", {k} {v:.4g}" for k, v in drawn.scalars().items())
    extra += f", {_condition_words(condition)}" if labels is not None else ""
    origin = f"from {model.sample_start}" if edit is None else (
        f"by SDEdit at strength {edit.strength:g} from {edit.data.shape[0]} guide(s)" if edit.kind == "sdedit" else
        f"inpainted ({edit.describe()['known_fraction']:.0%} known, resample {edit.resample}) from"
        f" {edit.data.shape[0]} row(s)")
    print(f"wrote {paths['png']} and {paths['npz']} ({cfg.num_samples} samples {origin}, NFE {nfe}"
          f"{extra}, EMA {metadata['ema']})")
    if not finite:
        print("lit-score: warning: some samples are not finite (the model or sampler diverged)", file=sys.stderr)
    return paths


def _condition_words(condition: dict) -> str:
    """"class 3, CFG w=2" for titles and summaries."""
    label = condition["class_label"]
    words = ["every class" if label is None else ("no label" if label == -1 else f"class {label}")]
    if condition["guidance_scale"]:
        words.append(f"CFG w={condition['guidance_scale']:g}")
    if condition["classifier_scale"]:
        words.append(f"classifier w={condition['classifier_scale']:g}")
    return ", ".join(words)


def _encode_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-score encode", exit_on_error=False,
                            description="Encode data into the prior's latent space by the probability-flow ODE (DDIM"
                                        " inversion), decode it back, and interpolate between encodings (slerp).")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--input", type=str | None, default=None,
                        help="data to encode: .npz (samples, or the first array) or a PNG image; default: the"
                             " checkpoint's held-out split")
    parser.add_argument("--num_samples", type=int, default=16, help="how many held-out samples (without --input)")
    parser.add_subclass_arguments(Sampler, "sampler", required=False,
                                  help="a reversible ODE sampler (default DPMSolver, 20 steps; also Heun, Euler,"
                                       " AdaptiveODE, DDIM with eta 0, EDMHeun without churn)")
    parser.add_argument("--interpolate", type=int, default=8,
                        help="points on each slerp path between consecutive inputs (0: no interpolation grid)")
    parser.add_argument("--class_label", type=int | None, default=None,
                        help="a class-conditional model's class for the ODE (default: the null label)")
    parser.add_argument("--output", type=str | None, default=None, help="output stem (default: <run>/latents/…)")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace existing output files")
    return parser


def encode_main(argv: list[str]) -> dict[str, Path]:
    """``lit-score encode``: latents z = ODE(x) of data, the reconstruction decode(z), and slerp paths between
    consecutive inputs, written as ``<stem>.npz`` (x, z, reconstruction, its error, NFE) and PNGs."""
    from lit_score.control import decode, encode, interpolate
    from lit_score.control.edit import load_array
    from lit_score.samplers import DPMSolver

    parser = _encode_parser()
    cfg = parser.parse_args(argv)
    if cfg.num_samples < 1 or cfg.interpolate < 0 or cfg.interpolate == 1:
        raise UserError(f"need --num_samples >= 1 and --interpolate 0 or >= 2, got {cfg.num_samples} and"
                        f" {cfg.interpolate}")
    check_options(cfg, ENCODE_RULES)
    check_output_stem(cfg.output)
    device = resolve_device(cfg.accelerator)
    model = load_model(cfg.ckpt_path, map_location=device).eval()
    if model.process is None:
        raise UserError(f"{type(model).__name__} has no noise process, so no probability-flow ODE: encode a"
                        " diffusion, score or flow model")
    chosen = parser.instantiate_classes(cfg).sampler
    sampler = chosen if chosen is not None else DPMSolver(num_steps=20)
    if not sampler.reversible:
        raise UserError(f"{type(sampler).__name__} cannot run backwards in time: encode with DPMSolver, Heun, Euler,"
                        " AdaptiveODE, DDIM (eta 0) or EDMHeun (S_churn 0)")
    check_sampler(model, sampler)
    ckpt = Path(cfg.ckpt_path)
    if cfg.input is not None:
        x = load_array(cfg.input, model.require_shape(), _data_range(model), "--input")
    else:
        from lit_score.evaluation.cli import checkpoint_datamodule

        data = checkpoint_datamodule(ckpt)
        held_out = data.split_dataset("test")
        x = torch.stack([held_out[i] for i in range(min(cfg.num_samples, len(held_out)))])
    stem = Path(cfg.output) if cfg.output else ckpt.parent.parent / "latents" / f"{ckpt.stem}_{type(sampler).__name__}"
    targets = [stem.with_suffix(".npz"), stem.with_suffix(".png"), stem.with_name(stem.name + "_interpolation.png")]
    existing = [p for p in targets if p.exists()]
    if existing and not cfg.overwrite:
        raise UserError(f"{existing[0]} exists: pass --output elsewhere or --overwrite true")
    check_writable(stem.parent)
    x = x.to(device)
    labels = None
    if cfg.class_label is not None:
        model.set_condition(cfg.class_label)
        labels = torch.tensor(cfg.class_label, device=device)  # one label: the view repeats it for any batch
    with torch.no_grad():
        score_fn = model.conditioned_score(labels)
        encoded = encode(score_fn, model.process, sampler, x, progress=True)
        z, nfe = encoded.samples, encoded.nfe
        back = decode(score_fn, model.process, sampler, z, progress=True).samples
        path = None
        if cfg.interpolate and x.shape[0] >= 2:
            pairs = x.shape[0] // 2
            path = interpolate(score_fn, model.process, sampler, x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2],
                               num=cfg.interpolate).samples  # (num, pairs, ...)
    # every file is written once the work has succeeded
    error = (back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    metadata = {"latents": z.cpu().numpy(), "reconstruction": back.cpu().numpy(),
                "relative_error": error.cpu().numpy(), "nfe": nfe, "sampler": repr(sampler), "ckpt_path": str(ckpt)}
    if cfg.class_label is not None:
        metadata["class_label"] = cfg.class_label
    with outputs():  # every file, or none
        paths = save_samples(x.cpu(), stem, data_range=_data_range(model),
                             title=f"inputs of {type(model).__name__}", metadata=metadata)
        paths = {"npz": paths["npz"]}
        if path is not None:
            rows = path.transpose(0, 1).flatten(0, 1).cpu()  # one row per pair: x_a … x_b
            if rows.ndim == 4:
                from lit_score.visualize import save_image_grid

                save_image_grid(rows, targets[2], _data_range(model), nrow=cfg.interpolate)
            else:
                save_picture(rows, targets[2], title=f"slerp paths between {pairs} pairs ({cfg.interpolate} points)")
            paths["interpolation"] = targets[2]
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({x.shape[0]} inputs, NFE {nfe} each way, median"
          f" relative reconstruction error {float(error.median()):.2e})")
    return paths


_NOISE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path", "Not a valid subclass")


def one_line(err: BaseException) -> str:
    """One line from an error message: the key path and the innermost cause (jsonargparse nests them)."""
    text = str(err)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    causes = []
    for line in text.splitlines():
        line = re.sub(r'^Parser key "[^"]+":', "", line.strip()).strip()
        line = re.sub(r"^-+\s+", "", line).strip()  # a bullet, not an option such as --output
        if line and not line.startswith(_NOISE):
            causes.append(line)
    # a constructor's own range check ("decay must be …", lit_score.checks) is the real reason among a Union's errors
    checked = [c for c in causes if re.search(r"\w must be ", c)]
    cause = checked[0] if checked else causes[-1] if causes else type(err).__name__
    return f"{'.'.join(keys)}: {cause}" if keys else cause


def print_help(file=sys.stdout) -> None:
    """``lit-score --help``: every subcommand, the ones LightningCLI does not know included."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: lit-score <subcommand> [options]   (lit-score <subcommand> --help for its options)", "",
             "subcommands:"] + [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    print("\n".join(lines), file=file)


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML, or one line naming the file, the line and the reason."""
    import yaml

    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            inline = ":" in name or name.lstrip().startswith(("{", "["))
            if inline and path.suffix not in (".yaml", ".yml", ".json"):
                continue  # an inline config string, which jsonargparse parses itself
            raise UserError(f"config file {name} does not exist: pass the path of a YAML file"
                            " (e.g. configs/ddpm/toy.yaml)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"config file {name}{where}: {reason} — fix the YAML there") from err
        check_config_data(name, data)


def did_you_mean(parser, argv: list[str], message: str) -> str:
    """" — did you mean --x?" for an unrecognized ``--key`` close to one the subcommand's parser knows."""
    import difflib

    match = re.search(r"unrecognized arguments: --([\w.]+)", message)
    if not match:
        return ""
    subparsers = getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {})
    sub = subparsers.get(argv[0]) if argv else None
    keys = [a.dest for a in (sub or parser)._actions if a.dest and a.dest != "help"]
    close = difflib.get_close_matches(match.group(1), keys, n=1, cutoff=0.75)
    return f" — did you mean --{close[0]}?" if close else ""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lit-score``."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        check_config_files(argv)
        check_finite_argv(argv)
        quiet_full_disk_in_threads()
        if not argv or argv[0] in ("-h", "--help"):
            print_help(sys.stdout if argv else sys.stderr)
            if not argv:
                raise SystemExit(2)
            return
        if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
            import difflib

            close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ArgumentError(None, f"unknown subcommand {argv[0]!r}: {hint}choose from {', '.join(SUBCOMMANDS)}")
        if argv[0] == "sample":
            with stop_on_signals():
                sample_main(argv[1:])
            return
        if argv[0] == "evaluate":
            from lit_score.evaluation.cli import evaluate_main

            with stop_on_signals():
                evaluate_main(argv[1:])
            return
        if argv[0] == "encode":
            with stop_on_signals():
                encode_main(argv[1:])
            return
        if argv[0] == "sweep":
            from lit_score.sweeps.local import sweep_main

            sweep_main(argv[1:])
            return
        if argv[0] == "compare":
            from lit_score.evaluation.compare import compare_main

            with stop_on_signals():
                compare_main(argv[1:])
            return
        with warnings.catch_warnings():
            # compare and sweep run `fit` in-process with their own argv: Lightning's warning that both args and
            # sys.argv were given is about exactly that, and says nothing to the user.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            LitScoreCLI(args=args)
    except MisconfigurationException as err:
        if os.environ.get("LIT_SCORE_DEBUG"):
            raise
        text = " ".join(str(err).split())
        hint = (" — on this machine use --trainer.accelerator cpu (or auto) and drop GPU presets such as"
                " configs/trainer/gpu.yaml" if any(w in text for w in ("not available", "CUDA", "gpu backend")) else "")
        print(f"lit-score: error: {text}{hint}", file=sys.stderr)
        raise SystemExit(1) from err
    except (TrainingStopped, Interrupted) as err:
        print(f"lit-score: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from err
    except KeyboardInterrupt as err:  # Ctrl-C outside a command's own handlers
        print(f"lit-score: {Interrupted(2)}", file=sys.stderr)
        raise SystemExit(130) from err
    except (UserError, ValueError, OSError, NonFiniteLossError, NonFiniteStepsError, NonFiniteWeightsError,
            RanksDisagreeError, ArgumentError) as err:
        if os.environ.get("LIT_SCORE_DEBUG"):
            raise
        command = f"lit-score {argv[0]}" if argv and argv[0] in SUBCOMMANDS else "lit-score"
        hint = f" (see `{command} --help`)" if isinstance(err, ArgumentError) else ""
        text = describe_os_error(err) if isinstance(err, OSError) else one_line(err)
        print(f"lit-score: error: {text}{hint}", file=sys.stderr)
        raise SystemExit(1 if not isinstance(err, ArgumentError) else 2) from err
    except Exception as err:
        if type(err).__module__.startswith("wandb.") and not os.environ.get("LIT_SCORE_DEBUG"):
            print(f"lit-score: error: wandb: {one_line(err)} (or log offline with WANDB_MODE=offline)", file=sys.stderr)
            raise SystemExit(1) from err
        raise


if __name__ == "__main__":
    main()
