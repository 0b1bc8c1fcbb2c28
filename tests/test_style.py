"""The style partner of the layer test: ``ruff check`` with the project's configuration
(``[tool.ruff]`` in pyproject.toml: pyflakes, pycodestyle, sorted imports, PEP 8 names).

Skipped where ruff is not installed (it is in the ``test`` extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    """ruff as a command: beside this interpreter (a venv), on PATH, or as a module."""
    here = Path(sys.executable).with_name("ruff")
    if here.is_file():
        return [str(here)]
    if shutil.which("ruff"):
        return ["ruff"]
    try:
        import ruff  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


def test_ruff_passes():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    paths = [p for p in ("torchsim_distill", "tests", "benchmarks", "recipes", "compile") if (ROOT / p).exists()]
    proc = subprocess.run([*ruff, "check", *paths], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
