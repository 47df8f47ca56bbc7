"""Saved time grids: a grid made for one process (in closed form, or fitted to a model) as a small JSON file that any
sampler takes as its ``spacing`` (``spacing: grids/vp_8.json``): every sampler's grid comes from
``NoiseProcess.time_grid``, which reads the file, checks it against the process and returns its times exactly.

| key | what |
|---|---|
| ``format`` | ``"lit-score grid"`` (``version`` 1) |
| ``process`` | the class name of the process it was made for; ``process_settings`` its ``extra_repr`` (information) |
| ``t_max``, ``t_min`` | the process's range when the grid was made |
| ``n`` | steps (intervals): ``len(times) − 1`` |
| ``times`` | t_0 = t_max > … > t_n = t_min |
| ``sigmas`` | σ̃_i = σ(t_i)/α(t_i) at those times: on load they must match the process (same class and range |
|  | but another schedule is refused) |
| ``protocol`` | how it was made: ``method`` (``kl_optimal``, ``fitted``, ``watson`` …) and what that method used |
|  | (checkpoint, sampler, objective and its value) |

Loading is data only (``json.loads``): nothing the file names is imported or called. Writing goes through
:mod:`lit_score.atomic` (a kill leaves the old file or the new one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lit_score.atomic import write_json

if TYPE_CHECKING:  # the process module imports this one to read files; a type only here
    from lit_score.processes.base import NoiseProcess

FORMAT, VERSION = "lit-score grid", 1
KEYS = ("process", "t_max", "t_min", "n", "times", "sigmas", "protocol")


@dataclass(frozen=True)
class StoredGrid:
    """One saved grid: the times, the process it was made for and how it was made (module docstring)."""

    process: str
    t_max: float
    t_min: float
    times: tuple[float, ...]
    sigmas: tuple[float, ...]
    protocol: dict[str, Any] = field(default_factory=dict)
    process_settings: str = ""

    @property
    def n(self) -> int:
        """Steps (intervals) of the grid."""
        return len(self.times) - 1

    @classmethod
    def for_process(cls, process: NoiseProcess, times: Tensor, protocol: dict[str, Any]) -> StoredGrid:
        """The record of ``times`` (decreasing, t_max → t_min of ``process``) made by ``protocol``."""
        t = times.detach().to(dtype=torch.float64, device=process.device)
        sigmas = (process.sigma(t) / process.alpha(t)).tolist()
        grid = cls(type(process).__name__, process.t_max, process.t_min, tuple(t.tolist()), tuple(sigmas),
                   dict(protocol), process.extra_repr())
        grid.check_shape("a new grid")
        return grid

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "process": self.process,
                "process_settings": self.process_settings,
                "t_max": self.t_max, "t_min": self.t_min, "n": self.n, "times": list(self.times),
                "sigmas": list(self.sigmas), "protocol": self.protocol}

    def check_shape(self, source: str) -> None:
        """Finite, strictly decreasing times from t_max to t_min, one σ̃ per time (ValueError naming ``source``)."""
        t = self.times
        if len(t) < 2 or len(self.sigmas) != len(t) or not all(math.isfinite(v) for v in (*t, *self.sigmas)):
            raise ValueError(f"{source}: need at least two finite times and one finite sigma per time, got"
                             f" {len(t)} times and {len(self.sigmas)} sigmas: rewrite it with `lit-score grid`")
        if any(b >= a for a, b in zip(t, t[1:])):
            raise ValueError(f"{source}: the times must decrease strictly from t_max to t_min, got {list(t)}: rewrite"
                             " it with `lit-score grid`")
        if not (math.isclose(t[0], self.t_max, rel_tol=1e-9, abs_tol=1e-12)
                and math.isclose(t[-1], self.t_min, rel_tol=1e-9, abs_tol=1e-12)):
            raise ValueError(f"{source}: the times run {t[0]:g} → {t[-1]:g}, not t_max {self.t_max:g} → t_min"
                             f" {self.t_min:g}: rewrite it with `lit-score grid`")

    def times_for(self, process: NoiseProcess, n_steps: int, source: str = "grid file") -> Tensor:
        """The stored times as a float64 tensor, after checking that they were made for ``process`` (class, range,
        σ̃ at each time) and hold ``n_steps`` steps; ValueError naming the problem and the fix otherwise."""
        here = type(process).__name__
        if self.process != here:
            raise ValueError(f"{source} was made for a {self.process} process, not this model's {here}: make one for"
                             " this model (`lit-score grid`) or give a spacing name (uniform, karras, …)")
        hi, lo = max(process.t_max, process.t_min), min(process.t_max, process.t_min)
        same_range = math.isclose(hi, self.t_max, rel_tol=1e-9) and math.isclose(lo, self.t_min, rel_tol=1e-9,
                                                                                  abs_tol=1e-12)
        if not same_range:
            raise ValueError(f"{source} spans t {self.t_max:g} → {self.t_min:g}, the process runs {hi:g} → {lo:g} (a"
                             " window: SDEdit, inpainting, or another range): make a grid for this range or give a"
                             " spacing name")
        if self.n != n_steps:
            raise ValueError(f"{source} holds a grid of n = {self.n} steps but {n_steps} were asked: set the sampler's"
                             f" num_steps to {self.n} (+1 with denoise) or make a grid of {n_steps} steps")
        t = torch.tensor(self.times, dtype=torch.float64, device=process.device)
        sigmas = (process.sigma(t) / process.alpha(t)).cpu()
        if not torch.allclose(sigmas, torch.tensor(self.sigmas, dtype=torch.float64), rtol=1e-6, atol=0.0):
            raise ValueError(f"{source}: σ/α at its times differs from this {here}'s ({process.extra_repr()}; the"
                             f" grid was made for {self.process_settings or 'another schedule'}): make one for this"
                             " model with `lit-score grid`")
        if not torch.equal(process.discretize(t), t):
            raise ValueError(f"{source}: its times are not on the steps of this discrete {here}: make one for this"
                             " model with `lit-score grid`")
        return t


def save_grid(grid: StoredGrid, path: str | Path) -> Path:
    """Write ``grid`` as JSON, atomically."""
    return write_json(Path(path), grid.to_dict())


def load_grid(path: str | Path) -> StoredGrid:
    """Read and check a grid file (data only: ``json.loads``, nothing it names is called)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no grid file {str(path)!r}: a spacing is uniform, quadratic, karras, logsnr, kl_optimal or"
                         " the path of a grid file written by `lit-score grid`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"grid file {path} is not JSON ({err}): rewrite it with `lit-score grid`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path} is not a lit-score grid file (format {FORMAT!r}, version {VERSION}): rewrite it with"
                         " `lit-score grid`")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ValueError(f"grid file {path} lacks {missing}: rewrite it with `lit-score grid`")
    try:
        grid = StoredGrid(str(data["process"]), float(data["t_max"]), float(data["t_min"]),
                          tuple(float(v) for v in data["times"]), tuple(float(v) for v in data["sigmas"]),
                          dict(data["protocol"]), str(data.get("process_settings", "")))
        n = int(data["n"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"grid file {path} holds a malformed value ({err}): rewrite it with"
                         " `lit-score grid`") from None
    grid.check_shape(f"grid file {path}")
    if n != grid.n:
        raise ValueError(f"grid file {path} says n = {n} but holds {grid.n} steps: rewrite it with"
                         " `lit-score grid`")
    return grid


__all__ = ["StoredGrid", "load_grid", "save_grid"]
