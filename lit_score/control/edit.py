"""An edit a sampling run applies to every sample: SDEdit from guides, or inpainting of known values (issue 10).

``lit-score sample --init FILE --strength 0.6`` and ``--inpaint FILE --mask FILE`` build an :class:`Edit`; the one
generation path (:func:`~lit_score.generation.draw_seed_batch`) hands each generation batch the rows of its
seed indices (sample i edits row i mod M of the M given), and ``GenerativeModule.sample(edit=...)`` runs it with the
model's (conditioned, guided) score function in place of plain sampling. Files: an ``.npz`` whose ``samples`` (what
``lit-score sample`` writes) or first array holds (M, *sample_shape) or one sample, in the data range; for images a PNG
(one image, 8-bit, mapped onto the data range); a mask PNG is known where a pixel is brighter than half.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.control.inpaint import inpaint
from lit_score.control.sdedit import sdedit
from lit_score.samplers.base import Draw
from lit_score.validation import check_array, check_mask, read_array


@dataclass
class Edit:
    """SDEdit (``kind="sdedit"``: ``data`` are guides, ``strength`` ∈ [0, 1]) or inpainting (``kind="inpaint"``:
    ``data`` are known values where ``mask`` is 1, with RePaint's ``resample`` / ``jump_length``)."""

    kind: Literal["sdedit", "inpaint"]
    data: Tensor
    mask: Tensor | None = None
    strength: float = 0.5
    resample: int = 1
    jump_length: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("sdedit", "inpaint"):
            raise ValueError(f"unknown edit {self.kind!r}: use sdedit or inpaint")
        if self.kind == "inpaint" and self.mask is None:
            raise ValueError("inpainting needs a mask (1 where the values are known): pass --mask FILE")
        check_number("strength", self.strength, ge=0.0, le=1.0)
        check_number("resample", self.resample, ge=1, integer=True)
        check_number("jump_length", self.jump_length, ge=1, integer=True)

    def rows(self, index: Tensor) -> Edit:
        """The edit of the samples with seed indices ``index``: row i mod M of the data (and of a per-sample mask)."""
        pick = index.cpu().long() % self.data.shape[0]
        mask = self.mask
        if mask is not None and mask.shape[0] == self.data.shape[0] and mask.shape[0] > 1:
            mask = mask[pick]
        return replace(self, data=self.data[pick], mask=mask)

    def __call__(self, score_fn, process, sampler, generator=None, progress: bool = False) -> Draw:
        """Run the edit on this (batch-sized) data with ``sampler``: the :class:`~lit_score.samplers.base.Draw`."""
        if process is None:
            raise ValueError(f"{self.kind} runs a sampler down a noise process: this model has none (an EBM)")
        device = process.device
        data = self.data.to(device)
        if self.kind == "sdedit":
            return sdedit(score_fn, process, sampler, data, self.strength, generator=generator, progress=progress)
        return inpaint(score_fn, process, sampler, data, self.mask.to(device), resample=self.resample,
                       jump_length=self.jump_length, generator=generator, progress=progress)

    def describe(self) -> dict:
        """What the sample file's metadata records about the edit."""
        out = {"edit": self.kind, "edit_rows": int(self.data.shape[0])}
        if self.kind == "sdedit":
            out["strength"] = self.strength
        else:
            out.update(resample=self.resample, jump_length=self.jump_length,
                       known_fraction=float(self.mask.float().mean()))
        return out


def load_array(path: str | Path, sample_shape: tuple[int, ...], data_range: tuple[float, float], what: str,
               mask: bool = False) -> Tensor:
    """(M, *sample_shape) float from an ``.npz`` (``samples``, else its first array) or, for images, a PNG; a mask
    (``mask``) may also broadcast over channels, and holds only 0 and 1. One clear line for a missing, misshapen or
    non-finite file (the checks of :mod:`lit_score.validation`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist: pass an .npz (or a PNG for images)")
    if path.suffix.lower() in (".npz", ".npy"):
        array, _ = read_array(path, what)
        (check_mask if mask else check_array)(array, f"{what} {path}")
        x = torch.from_numpy(array.astype(np.float32))
    elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        if len(sample_shape) != 3:
            raise ValueError(f"{what} {path} is an image but the model's samples have shape {sample_shape}: pass an"
                             " .npz")
        from PIL import Image

        channels = 1 if mask else sample_shape[0]
        with Image.open(path) as image:
            u = torch.from_numpy(np.asarray(image.convert("L" if channels == 1 else "RGB"))).float()
        u = u[None] if u.ndim == 2 else u.permute(2, 0, 1)
        lo, hi = (0.0, 1.0) if mask else data_range
        x = (lo + (hi - lo) * u / 255)[None]
    else:
        raise ValueError(f"{what} {path}: use an .npz (any data) or a PNG (images)")
    if mask:
        x = (x > 0.5).float()  # a PNG's brightness; an .npz mask holds exactly 0 and 1 (checked above)
    if tuple(x.shape) == tuple(sample_shape):
        x = x[None]
    shape = tuple(x.shape[1:])
    fits = shape == tuple(sample_shape) or (mask and len(shape) == len(sample_shape) and all(
        a in (1, b) for a, b in zip(shape, sample_shape)))
    if not fits:
        raise ValueError(f"{what} {path} holds {tuple(x.shape)}, not samples of shape {tuple(sample_shape)}: give"
                         f" (M, {', '.join(map(str, sample_shape))}) or one sample")
    return x


__all__ = ["Edit", "load_array"]
