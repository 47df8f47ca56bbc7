"""A sweep folder's state and lock: ``<output>/sweep.json`` (every proposal, its state and metric; written before a
run starts and after it ends) and ``<output>/.lock`` (one ``lit-score sweep`` at a time per folder)."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lit_score.atomic import make_parents, remove_made
from lit_score.sweeps.spec import SweepError

STATE_FILE = "sweep.json"


@contextmanager
def locked(output: Path) -> Iterator[None]:
    """One ``lit-score sweep`` at a time per folder. The lock file goes when the sweep ends (however it ends),
    and so does the folder when the sweep made it and left nothing in it."""
    made = make_parents(output)
    lock = output / ".lock"
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise SweepError(f"another lit-score sweep is running in {output}: wait for it, or pass another"
                             " --output") from err
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # still holding the lock: no other sweep can have taken it
            remove_made(made)


def read_state(path: Path, sweep: dict[str, Any], output: Path) -> dict[str, Any]:
    """The state a folder holds, refused in one line when it is not readable or belongs to another sweep (other
    parameters or command)."""
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SweepError(f"{path} is not readable JSON ({err}): move it away to start again") from err
    for key in ("parameters", "command"):
        if state.get(key) != json.loads(json.dumps(sweep[key])):
            raise SweepError(f"{output} holds a sweep with other {key} (from {state.get('sweep_file')}):"
                             " pass another --output, or remove that folder to start again")
    return state
