"""Stop signals of the commands that run outside Lightning's training loop (``sample``, ``evaluate``, ``encode``,
``compare``): SIGINT and SIGTERM end the command with one line and exit 130 / 143, and — since every output is written
atomically at the end (:mod:`lit_score.atomic`) — leave no partial file.

SIGINT raises :class:`Interrupted` rather than ``KeyboardInterrupt``: Lightning's ``trainer.predict`` (the generation
path) catches ``KeyboardInterrupt`` itself and exits 1 after its "graceful shutdown"; any other exception it re-raises
after tearing down, which is what we want. (``fit`` has its own handlers: :class:`~lit_score.callbacks.GracefulStop`.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """A stop signal arrived; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {NAMES.get(signum, signal.Signals(signum).name)}: stopped before writing"
                         " anything, no partial output is left; run the command again")
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` (main thread only); the previous handlers come
    back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in NAMES}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["Interrupted", "stop_on_signals"]
