"""The package's public face: ``import lit_score`` gives its version and subpackages; ``python -m lit_score`` is the
``lit-score`` command."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import lit_score


def test_version_and_subpackages():
    assert lit_score.__version__ == version("lit-score")
    assert lit_score.models.DDPM.__name__ == "DDPM"
    assert lit_score.samplers.DDIM.__name__ == "DDIM"
    assert set(lit_score.__all__) >= {"__version__", "models", "processes", "samplers", "data", "loading"}


def test_every_subpackage_is_listed_and_imports():
    """The lazy list names every package folder (and generation.py) of lit_score, so none goes missing from it."""
    root = Path(lit_score.__file__).parent
    folders = {p.parent.name for p in root.glob("*/__init__.py")}
    assert set(lit_score.SUBPACKAGES) == folders | {"generation"}
    for name in lit_score.SUBPACKAGES:
        assert getattr(lit_score, name).__name__ == f"lit_score.{name}"


def test_python_dash_m_is_the_command():
    out = subprocess.run([sys.executable, "-m", "lit_score", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert "usage: lit-score <subcommand>" in out.stdout and "encode" in out.stdout
