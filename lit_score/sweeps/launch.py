"""Launching one run of a sweep: ``python -m lit_score.cli <argv>`` as its own process, as the W&B agent runs it.

A separate process because that is what the agent does, because DDP's launcher re-runs the process's own command line,
and because a crash or a leak of one run cannot touch the next one. A :data:`Launcher` returns (exit status, the signal
the sweep itself received meanwhile, or None); tests pass one that runs the command in-process
(:func:`lit_score.cli.launch_in_process`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

Launcher = Callable[[list[str], Path, dict[str, str]], tuple[int, int | None]]


def launch_process(argv: list[str], log: Path, env: dict[str, str]) -> tuple[int, int | None]:
    """Run ``python -m lit_score.cli <argv>`` with its output appended to ``log``; returns (exit status, the signal
    the sweep itself received meanwhile, or None).

    The run has its own process group, so a Ctrl-C at the terminal reaches the sweep only; the sweep passes each
    SIGINT / SIGTERM on (a SIGHUP, the terminal closing, as SIGTERM), and the run's GracefulStop writes ``last.ckpt``
    and exits (a second Ctrl-C stops it at once)."""
    received: list[int] = []
    with open(log, "a") as out:
        out.write(f"$ lit-score {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "lit_score.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)

        def forward(signum, frame) -> None:
            signum = signal.SIGTERM if signum == signal.SIGHUP else signum
            received.append(signum)
            if proc.poll() is None:
                proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return code, (received[0] if received else None)


def last_error(log: Path) -> str:
    """The run's one-line error (``lit-score: error: …``), else the last line of its log."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lit-score: error:")]
    return (errors or lines or ["no output"])[-1][:300]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
