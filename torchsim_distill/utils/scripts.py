"""Launch nequip's command-line tools (``nequip-train``, ``nequip-compile``,
``nequip-package``) with the interpreter that runs this package::

    proc = run_nequip("compile", [src, out, "--mode", "aotinductor"])

``python -m nequip.scripts.<tool>`` needs no console script on ``PATH`` and no venv
layout, so it works wherever nequip imports (a script path next to ``sys.executable``
does not exist outside a venv).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: nequip's tools and the modules that implement them.
NEQUIP_TOOLS = {"train": "nequip.scripts.train", "compile": "nequip.scripts.compile", "package": "nequip.scripts.package"}


def nequip_command(tool: str, args: Sequence[str | Path]) -> list[str]:
    """The argv that runs ``nequip-<tool> args...`` with this interpreter."""
    if tool not in NEQUIP_TOOLS:
        raise ValueError(f"unknown nequip tool {tool!r}; known: {', '.join(NEQUIP_TOOLS)}")
    return [sys.executable, "-m", NEQUIP_TOOLS[tool], *map(str, args)]


def run_nequip(tool: str, args: Sequence[str | Path], **kwargs) -> subprocess.CompletedProcess:
    """Run ``nequip-<tool>`` to completion, capturing its output as text (``kwargs`` go to
    :func:`subprocess.run`, e.g. ``cwd``, ``env``, ``capture_output=False``)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(nequip_command(tool, args), **kwargs)
