"""The metrics a run logged, one row per validation: a JSON file a sweep reads, and a table for W&B.

``lit-score sweep`` adds one to every run it launches (``path`` in the sweep's folder); ``configs/logger/wandb.yaml``
adds one that logs the rows as a W&B table (``table_key``).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_score.atomic import write_json
from lit_score.callbacks.samples import run_dir


class MetricHistory(pl.Callback):
    """After every validation run (and at the end of fit), the metrics logged *since the last row* as one row
    ``{epoch, step, <name>: value, …}``; ``last`` holds each metric's latest value (W&B's summary semantics).

    Lightning's ``callback_metrics`` keep a metric's old value at validations where it is not logged again
    (``SampleQuality`` measures every n-th one); a value counts as new when Lightning put a new tensor there, so a
    row never repeats a stale value. The rows are kept in checkpoints: a resumed run continues its history.

    Args:
        path: JSON file ``{"rows": […], "last": {…}, "run_dir": …, "finished": bool}`` rewritten (atomically, on
            rank zero) after every row; default ``<run dir>/metrics.json``. Under ``fast_dev_run`` (no run
            folder) only an explicit path is written.
        prefix: record only metrics whose name starts with it (``""``: every metric).
        table_key: also log the rows as a table under this key to every WandbLogger (``None``: no table).
    """

    def __init__(self, path: str | None = None, prefix: str = "", table_key: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.prefix, self.table_key = prefix, table_key
        self.rows: list[dict[str, float | int]] = []
        self.last: dict[str, float] = {}
        self._seen: dict[str, object] = {}
        self._run_dir: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=str(self.path), prefix=self.prefix, table_key=self.table_key)

    def state_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows], "last": dict(self.last)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self.last = dict(state_dict.get("last", {}))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.fast_dev_run:
            self._run_dir = None
        else:
            self._run_dir = str(run_dir(trainer))  # broadcasts: every rank calls it
        if self.path is None and self._run_dir is not None:
            self.path = Path(self._run_dir) / "metrics.json"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, finished=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, finished=not trainer.interrupted, always_write=True)

    def _fresh(self, trainer: pl.Trainer) -> dict[str, float]:
        fresh = {}
        for name, value in trainer.callback_metrics.items():
            if not name.startswith(self.prefix) or self._seen.get(name) is value:
                continue
            self._seen[name] = value
            try:
                fresh[name] = float(value)
            except (TypeError, ValueError):  # a non-scalar: not a row entry
                continue
        return fresh

    def _record(self, trainer: pl.Trainer, finished: bool, always_write: bool = False) -> None:
        fresh = self._fresh(trainer)
        if fresh:
            self.rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **fresh})
            self.last.update(fresh)
        if fresh or always_write:
            self._write(trainer, finished)
        if fresh and self.table_key is not None:
            self._log_table(trainer)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, finished: bool) -> None:
        if self.path is None:
            return
        write_json(self.path, {"rows": self.rows, "last": self.last, "run_dir": self._run_dir, "finished": finished,
                               "global_step": trainer.global_step})

    def columns(self) -> list[str]:
        """``epoch``, ``step`` and every metric name in the order first logged."""
        names = dict.fromkeys(["epoch", "step"])
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    @rank_zero_only
    def _log_table(self, trainer: pl.Trainer) -> None:
        columns = self.columns()
        data = [[_cell(row.get(c)) for c in columns] for row in self.rows]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=self.table_key, columns=columns, data=data)


def _cell(value):
    """A table cell: None for a metric not logged in that row or a non-finite value (W&B tables reject NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value
