"""Every file lit-score writes goes through here: a temporary file beside the target, flushed and fsynced, then
renamed over it (``os.replace``), so a kill, a full disk or an error leaves either the old file or the new one —
never half a file.

A command that writes several files (a PNG and its ``.npz``, an evaluation folder) wraps them in :func:`outputs`:
inside it the renames wait until the block ends, and a failure anywhere removes every temporary file and every folder
the block created, so a command writes all of its outputs or none.

A write that fails because the disk is full raises :class:`DiskFullError`, one line naming the folder and the fix.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
>>> with atomic_file(target, "w") as f:
...     _ = f.write("done")
>>> target.read_text()
'done'
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

FULL = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE = 1 << 20  # bytes: below this a failed write is put down to a full disk (torch.save: "write failed")


class DiskFullError(OSError):
    """The disk (or the quota) holding an output is full: one line naming the folder and the fix."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on the disk holding {path.parent} (writing {path.name}):"
                                       " free space there or write elsewhere; nothing was half-written")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (an OSError, or torch's RuntimeError "file write failed") comes from a full disk."""
    if isinstance(err, OSError) and err.errno in FULL:
        return True
    if isinstance(err, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < LOW_SPACE
        except OSError:
            return False
    return False


class _Batch:
    """What one :func:`outputs` block has written (temporary file → target) and the folders it made."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []
        self.made: list[Path] = []


_batches: list[_Batch] = []


def make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (so they can be removed again)."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_made(folders: list[Path]) -> None:
    """Remove the folders a failed write created, innermost first, where they are (still) empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside ``path`` for writing; on success it becomes ``path`` (now, or at the end of the
    enclosing :func:`outputs` block); on any failure (an interrupt included) it is removed."""
    target = Path(path)
    batch = _batches[-1] if _batches else None
    made = make_parents(target.parent)
    if batch is not None:
        batch.made.extend(made)
    tmp = _temporary(target)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if batch is None:
            os.replace(tmp, target)
        else:
            batch.pending.append((tmp, target))
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if batch is None:
            remove_made(made)
        if disk_full(err, target.parent):
            raise DiskFullError(target) from err
        raise


@contextmanager
def outputs() -> Iterator[None]:
    """All-or-nothing for the files written inside the block: renamed into place when it ends, all removed (with the
    folders it created) when it fails."""
    batch = _Batch()
    _batches.append(batch)
    try:
        yield
        _batches.pop()
        for tmp, target in batch.pending:
            os.replace(tmp, target)
    except BaseException:
        if _batches and _batches[-1] is batch:
            _batches.pop()
        for tmp, _ in batch.pending:
            tmp.unlink(missing_ok=True)
        remove_made(batch.made)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def savez(path: str | Path, compressed: bool = False, **arrays: Any) -> Path:
    """``numpy.savez`` (or ``savez_compressed``) of ``arrays`` into ``path``, atomically."""
    import numpy as np

    with atomic_file(path, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return Path(path)


def torch_save(obj: Any, path: str | Path) -> Path:
    with atomic_file(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def save_figure(fig, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` into ``path`` atomically (the format from the path's suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, **kwargs)
    return path


def save_image(image, path: str | Path) -> Path:
    """A PIL image into ``path`` atomically (the format from the path's suffix)."""
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        image.save(handle, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    return path


__all__ = ["DiskFullError", "atomic_file", "disk_full", "jsonable", "outputs", "quiet_full_disk_in_threads",
           "save_figure", "save_image", "savez", "torch_save", "write_bytes", "write_json", "write_text"]


def quiet_full_disk_in_threads() -> None:
    """A background writer thread (TensorBoard's event file writer) that hits the full disk the command has already
    reported in one line must not add a thread traceback at exit; every other thread error is printed as before."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "lit_score_quiet", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in FULL:
            return
        previous(args)

    hook.lit_score_quiet = True
    threading.excepthook = hook


def jsonable(value: Any) -> Any:
    """Plain JSON values: tensors and numpy to lists / floats, non-finite floats to None, objects to their repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically (a temp file renamed into place): a kill never leaves half a file."""
    return write_text(path, json.dumps(jsonable(data), indent=2) + "\n")
