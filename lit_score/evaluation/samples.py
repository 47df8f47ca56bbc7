"""Samples made elsewhere, read for ``evaluate --samples``: an ``.npz`` in the data range (what ``lit-score sample``
writes) or a folder of images mapped from 0 … 255 onto the data range; checked to be real, finite, two or more,
and of the data's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lit_score.data import GenerativeDataModule
from lit_score.data.images import find_images
from lit_score.evaluation.evaluate import EvaluationError
from lit_score.validation import check_array, read_array


def load_image_folder(path: Path, datamodule: GenerativeDataModule) -> tuple[torch.Tensor, dict[str, Any]]:
    """The images of a folder (PNG / JPEG), in the data's channels, mapped onto the data range."""
    files = find_images(path)
    channels = datamodule.sample_shape[0] if datamodule.is_image else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for f in files:
        with Image.open(f) as image:
            arrays.append(np.asarray(image.convert(mode)))
    u = torch.from_numpy(np.stack(arrays))
    u = u[:, None] if u.ndim == 3 else u.permute(0, 3, 1, 2)
    check_array(u.numpy(), f"--samples {path}", min_rows=2)
    lo, hi = datamodule.data_range
    return lo + (hi - lo) * u.float() / 255, {"path": str(path), "format": "image folder", "files": len(files)}


def load_samples(path: str | Path, datamodule: GenerativeDataModule) -> tuple[torch.Tensor, dict[str, Any]]:
    """Samples made elsewhere: an ``.npz`` with ``samples`` in the data range (``lit-score sample`` writes these), or a
    folder of images (PNG / JPEG) mapped from 0 … 255 onto the data range."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path, datamodule)
    if not path.is_file():
        raise EvaluationError(f"samples {path} do not exist: pass an .npz (lit-score sample writes one) or an image"
                              " folder")
    raw, extras = read_array(path, "--samples")
    check_array(raw, f"--samples {path}", min_rows=2)  # real, finite, and a distribution needs two samples
    nfe, labels = extras.get("nfe"), extras.get("labels")
    if tuple(raw.shape[1:]) != tuple(datamodule.sample_shape):
        raise EvaluationError(f"--samples {path} holds samples of shape {tuple(raw.shape[1:])} but the data's are"
                              f" {tuple(datamodule.sample_shape)}: pass samples of this data (or matching --data)")
    if raw.dtype == np.uint8:  # 8-bit images: 0 … 255 onto the data range
        lo, hi = datamodule.data_range
        x = lo + (hi - lo) * torch.from_numpy(raw).float() / 255
    else:
        x = torch.from_numpy(raw.astype(np.float32))
    nfe_value = float(np.mean(nfe)) if nfe is not None else None
    info = {"path": str(path), "format": "npz", "nfe": nfe_value}
    if labels is not None:  # the classes the samples were drawn for (lit-score sample writes them)
        info["labels"] = torch.from_numpy(labels.astype(np.int64))
    return x, info
