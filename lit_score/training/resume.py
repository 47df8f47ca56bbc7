"""What ``fit --ckpt_path`` checks before a checkpoint is used, and where a resumed run continues.

==============================  ===================================================================================
name                            what it does
==============================  ===================================================================================
:func:`logger_root`             where a fit's runs live (``<save_dir>/<name>``, a W&B project, ``default_root_dir``)
:func:`find_last`               ``--ckpt_path last``: the newest ``last.ckpt`` of the config's runs
:func:`checked_hyperparameters` the checkpoint's hyper-parameters, once its classes passed the allow-list and its
                                family is the config's
:func:`check_resume`            a config that differs where a resumed run cannot honour it is refused; the run
                                continues in the checkpoint's own folder
:func:`resume_differences`      ``key: checkpoint → config`` for every model argument that differs
==============================  ===================================================================================
"""

from __future__ import annotations

from pathlib import Path

from lit_score.checkpointing import find_last_checkpoint
from lit_score.loading import checkpoint_class, read_checkpoint, resolve_class
from lit_score.models import GenerativeModule
from lit_score.validation import InvalidInput


def logger_root(trainer_cfg) -> tuple[Path | None, object]:
    """Where the fit run's checkpoints live: ``<save_dir>/<name>`` of a TensorBoard / CSV style logger (and its
    config node, whose ``version`` a resumed run sets), ``<save_dir>/<project>`` of a WandbLogger (checkpoints
    under the run id; the run folder is not continued), ``default_root_dir`` without a logger."""
    logger = trainer_cfg.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if logger is None or logger is True:
        return Path(trainer_cfg.get("default_root_dir") or ".") / "lightning_logs", None
    if logger is False:
        return Path(trainer_cfg.get("default_root_dir") or "."), None
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is None or init.get("save_dir") is None:
        return None, None
    if str(logger.get("class_path", "")).endswith("WandbLogger"):
        return Path(init.save_dir) / (init.get("project") or "lightning_logs"), None
    if "name" not in init:
        return None, None
    return Path(init.save_dir) / (init.get("name") or ""), init


def find_last(trainer_cfg) -> Path:
    """``--ckpt_path last``: the newest last.ckpt of this config's runs (or of a ModelCheckpoint's dirpath)."""
    root, _ = logger_root(trainer_cfg)
    candidates = [find_last_checkpoint(root)] if root is not None else []
    callbacks = trainer_cfg.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        dirpath = cb.get("init_args", {}).get("dirpath") if hasattr(cb, "get") else None
        if dirpath and (Path(dirpath) / "last.ckpt").is_file():
            candidates.append(Path(dirpath) / "last.ckpt")
    candidates = [c for c in candidates if c is not None]
    if not candidates:
        where = f"under {root}" if root is not None else "(the logger names no save_dir)"
        raise InvalidInput(f"--ckpt_path last: no last.ckpt {where}: train first, or pass the checkpoint's path")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def checked_hyperparameters(ckpt_path: str, wanted: str) -> dict:
    """The hyper-parameters of a checkpoint whose every class passed the allow-list (before Lightning reads it) and
    whose model class is ``wanted``, the class the config builds."""
    ckpt = read_checkpoint(ckpt_path)
    checkpoint_class(ckpt_path, GenerativeModule, ckpt)
    hparams = ckpt["hyper_parameters"]
    found_class = hparams["_class_path"]
    if wanted != found_class:
        raise InvalidInput(
            f"checkpoint {ckpt_path} holds a {found_class.rpartition('.')[2]} model but the config builds a"
            f" {wanted.rpartition('.')[2]}: use the {found_class.rpartition('.')[2]} config or a matching"
            " checkpoint"
        )
    return hparams


def check_resume(fit_cfg, ckpt_path: str, hparams: dict) -> None:
    """Refuse a config that differs from the checkpoint where a resumed run cannot honour it, and continue the
    checkpoint's own run folder (the logger's ``version``)."""
    model_cls = resolve_class(fit_cfg.model.class_path, (GenerativeModule,), "the config", "model.class_path")
    configured = plain(fit_cfg.model.get("init_args"))
    differences = resume_differences(configured, hparams, model_cls.resume_mutable)
    if differences:
        listed = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise InvalidInput(
            f"the config differs from checkpoint {ckpt_path} in what a resumed run cannot change: {listed} — resume"
            " with the checkpoint's run config (its config.yaml), or start a new run"
        )
    root, logger_init = logger_root(fit_cfg.trainer)
    ckpt_dir = Path(ckpt_path).resolve().parent
    if (logger_init is not None and root is not None and ckpt_dir.name == "checkpoints"
            and ckpt_dir.parent.parent == root.resolve()):
        logger_init.version = ckpt_dir.parent.name  # continue in the checkpoint's own run folder


def plain(tree):
    """A jsonargparse Namespace tree as dicts and lists."""
    if hasattr(tree, "as_dict"):
        tree = tree.as_dict()
    if isinstance(tree, dict):
        return {k: plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain(v) for v in tree]
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
