"""Files a command reads and places it writes: input paths, arrays read from ``.npz`` / ``.npy`` files (real, finite
numbers with enough rows; a mask of 0 and 1 only), and output stems and folders (not a folder where a file stem is
meant, writable) — checked before the work, without touching the disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lit_score.validation.errors import InvalidInput


# --- inputs ---------------------------------------------------------------------------------------------------------
def check_input_path(path: Any, what: str) -> Path:
    """An existing file (or folder) to read, or one line saying which and what to pass."""
    text = str(path)
    if not text.strip():
        raise InvalidInput(f"{what} is empty: pass the path of a file")
    p = Path(text)
    if not p.exists():
        raise InvalidInput(f"{what} {p} does not exist: pass the path of an existing file")
    if not os.access(p, os.R_OK):
        raise InvalidInput(f"{what} {p} cannot be read (permission denied): make it readable or copy it")
    return p


# --- arrays from files ------------------------------------------------------------------------------------------------
def read_array(path: str | Path, what: str, key: str = "samples") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The array ``key`` of an ``.npz`` (else its first array) or the array of an ``.npy``, and the other arrays of
    the ``.npz``; no pickles; one line for a missing, empty or unreadable file."""
    path = check_input_path(path, what)
    if path.is_dir():
        raise InvalidInput(f"{what} {path} is a folder: pass an .npz file")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise InvalidInput(f"{what} {path}: use an .npz (numpy.savez(path, {key}=x)) or an .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, {}
        with loaded:
            names = list(loaded.files)
            if not names:
                raise InvalidInput(f"{what} {path} holds no array: save one with numpy.savez(path, {key}=x)")
            main = key if key in names else names[0]
            arrays = {name: np.asarray(loaded[name]) for name in names}
    except InvalidInput:
        raise
    except (OSError, ValueError, EOFError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidInput(f"{what} {path} is not a readable .npz / .npy ({reason}): write it again with"
                           f" numpy.savez(path, {key}=x)") from err
    return arrays.pop(main), arrays


def check_array(x: np.ndarray, what: str, min_rows: int = 1) -> np.ndarray:
    """Real, finite numbers in at least ``min_rows`` rows (samples along the first axis)."""
    if x.dtype.kind not in "biuf":
        raise InvalidInput(f"{what} holds {x.dtype} values, not real numbers: save real (float) samples")
    if x.ndim == 0 or x.shape[0] < min_rows:
        rows = 0 if x.ndim == 0 else x.shape[0]
        raise InvalidInput(f"{what} holds {rows} sample(s) (shape {x.shape}): give at least {min_rows}")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        if bad.any():
            raise InvalidInput(f"{what} has {int(bad.sum())} of {x.shape[0]} samples with NaN or infinite values"
                               f" (the first: row {int(np.argmax(bad))}): drop or fix them")
    return x


def check_mask(x: np.ndarray, what: str) -> np.ndarray:
    """A mask of 0 (unknown) and 1 (known) only — no fractions, no NaN."""
    check_array(x, what)
    values = np.unique(x)
    if not np.isin(values, (0, 1)).all():
        other = values[~np.isin(values, (0, 1))][0]
        raise InvalidInput(f"{what} holds {other:g} where only 0 (unknown) and 1 (known) are allowed: save a mask"
                           " of 0s and 1s")
    return x


# --- outputs --------------------------------------------------------------------------------------------------------
def writable_folder(folder: Path, option: str = "--output") -> None:
    """The folder exists and can be written to, or can be made: its nearest existing ancestor is a writable folder on
    a file system mounted read-write. One line otherwise; the check itself changes nothing on disk."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists() or p == p.parent)
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = "read-only file system"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = "permission denied"
    if reason is not None:
        raise InvalidInput(f"cannot write to {folder} ({reason}): pass {option} somewhere writable")


def check_output_stem(output: str | None, option: str = "--output") -> None:
    """A file stem (``dir/name``; .png / .npz are added): not a folder, not ending in a path separator."""
    if output is None:
        return
    text = str(output)
    if not text.strip() or text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise InvalidInput(f"{option} {text!r} names a folder, not a file stem: give a stem such as"
                           f" {str(Path(text or '.') / 'samples')!r} (.png and .npz are added)")


def check_output_folder(folder: Path, option: str = "--output") -> None:
    """An output folder: not an existing file, and writable."""
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"{option} {folder} is a file, not a folder: pass a folder path (it is made if missing)")
    writable_folder(folder, option)

