"""Checkpoint files: atomic writes of finite weights, safe loading, and finding the run to resume.

- :class:`AtomicCheckpointIO` (``lit-score fit`` uses it unless a config names another CheckpointIO): a checkpoint
  is written to a temporary file beside its target, flushed to disk and renamed over it, so a kill mid-write
  leaves the previous file intact and loadable; a checkpoint whose weights are not finite is refused (never
  becomes ``last.ckpt``).
- Safe loading: checkpoints load weights-only (tensors and plain types; no pickled objects), and every class a
  checkpoint names (its model, process, network, sampler, optimizer …) must come from an allowed package *before*
  anything is imported: ``lit_score``, ``torch``, ``lightning`` and the packages listed in
  ``LIT_SCORE_ALLOWED_PACKAGES`` (comma-separated, e.g. ``LIT_SCORE_ALLOWED_PACKAGES=my_models,my_lab.nets``).
- :func:`find_last_checkpoint`: ``--ckpt_path last`` means the newest ``last.ckpt`` under the logger's run folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

ALLOWED_PACKAGES = ("lit_score", "torch", "lightning")
ALLOWED_ENV = "LIT_SCORE_ALLOWED_PACKAGES"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, unsafe or of another kind); reported as one line."""


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to be written with NaN or infinite weights."""


def allowed_packages() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(ALLOWED_ENV, "").split(",") if p.strip()]
    return ALLOWED_PACKAGES + tuple(extra)


def check_allowed(class_path: str, source: str = "the checkpoint") -> None:
    """Refuse ``class_path`` unless its top package (or a dotted prefix) is allowed; nothing is imported."""
    if not isinstance(class_path, str) or not class_path:
        raise CheckpointError(f"{source} names an invalid class {class_path!r}")
    allowed = allowed_packages()
    if not any(class_path == p or class_path.startswith(p + ".") for p in allowed):
        raise CheckpointError(
            f"{source} names the class {class_path}, outside the allowed packages ({', '.join(allowed)}): it was not"
            f" imported; if you trust it, add its package to {ALLOWED_ENV} (comma-separated)"
        )


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _importable_path(value: str) -> bool:
    """A dotted name whose top-level module exists here: jsonargparse would import it for a class or callable
    argument (``optimizer: "some.module.fn"``). Locating the module runs none of its code."""
    if not _DOTTED.match(value):
        return False
    try:
        return importlib.util.find_spec(value.split(".", 1)[0]) is not None
    except (ImportError, ValueError):
        return False


def class_paths(tree: Any) -> list[str]:
    """Every ``class_path`` / ``_class_path`` / ``_instantiator`` value in a nested hyper-parameter tree, and every
    other string that names something importable (a callable given by its dotted path)."""
    found: list[str] = []
    if isinstance(tree, str):
        return [tree] if _importable_path(tree) else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("class_path", "_class_path", "_instantiator") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(class_paths(value))
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            found.extend(class_paths(value))
    return found


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint weights-only onto the CPU, or stop with one line saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .ckpt file written by"
                              " lit-score fit")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / ValueError for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = ("it holds pickled objects, which lit-score never loads" if "weights_only" in str(err)
                  else f"it is truncated or not a checkpoint ({first[:120]})")
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}; use a .ckpt written by lit-score fit") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no model weights: use a .ckpt written by lit-score fit")
    return ckpt


def checked_hyperparameters(path: str | Path, ckpt: dict | None = None) -> dict:
    """The checkpoint's hyper-parameters after every class it names passed :func:`check_allowed`."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hparams = ckpt.get("hyper_parameters") or {}
    if "_class_path" not in hparams:
        raise CheckpointError(f"checkpoint {path} records no model class: it was not written by `lit-score fit`")
    for class_path in class_paths(hparams):
        check_allowed(class_path, f"checkpoint {path}")
    return hparams


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The newest ``last.ckpt`` under ``root``: any ``<version>/checkpoints/last.ckpt`` (``root`` being
    ``<save_dir>/<name>``) or ``checkpoints/last.ckpt`` (a run without a logger)."""
    root = Path(root)
    patterns = ("*/checkpoints/last.ckpt", "checkpoints/last.ckpt")
    candidates = [p for pat in patterns for p in root.glob(pat) if p.is_file()] if root.is_dir() else []
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def nonfinite_names(named_tensors) -> list[str]:
    """Names of the floating-point tensors in ``(name, tensor)`` pairs that hold a NaN or an infinity (one host
    synchronisation for all of them). The one check behind writing, loading and saving weights."""
    named = [(name, t.detach()) for name, t in named_tensors if torch.is_tensor(t) and t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into ``<target>.tmp-<pid>`` beside the target, fsync, then ``os.replace`` (local paths); weights
    that are not finite are refused. Remote URLs go through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        bad = nonfinite_names(checkpoint.get("state_dict", {}).items())
        if bad:
            raise NonFiniteWeightsError(
                f"refusing to write {path}: weights {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} are not"
                " finite (the run diverged); the previous checkpoints are intact"
            )
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as err:
            from lit_score.atomic import DiskFullError, disk_full

            if disk_full(err, target.parent):
                raise DiskFullError(target) from err  # one line; the previous checkpoint is untouched
            raise
        finally:
            if tmp.exists():
                tmp.unlink()
