"""Checkpoint files: atomic writes of finite weights, safe loading, and finding the run to resume.

- :class:`AtomicCheckpointIO` (``lit-score fit`` uses it unless a config names another CheckpointIO): a checkpoint
  is written to a temporary file beside its target, flushed to disk and renamed over it, so a kill mid-write
  leaves the previous file intact and loadable; a checkpoint whose weights are not finite is refused (never
  becomes ``last.ckpt``).
- Reading a checkpoint (weights-only, every class it names checked before anything is called) is
  :mod:`lit_score.loading`'s.
- :func:`find_last_checkpoint`: ``--ckpt_path last`` means the newest ``last.ckpt`` under the logger's run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_score.atomic import DiskFullError, disk_full


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to be written with NaN or infinite weights."""


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
            if disk_full(err, target.parent):
                raise DiskFullError(target) from err  # one line; the previous checkpoint is untouched
            raise
        finally:
            if tmp.exists():
                tmp.unlink()
