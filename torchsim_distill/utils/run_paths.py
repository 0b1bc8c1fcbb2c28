"""Paths in a run's records (``run.json``) written relative to the run directory.

A run directory is committed, copied to a cluster, or handed to a colleague; absolute paths
of the machine it was made on (``/home/alice/...``) would name files that do not exist there
and leak that machine's layout. So every path inside the run directory is recorded relative
to it, and a reader resolves it against wherever the directory now is. Paths outside it (the
user's seed files elsewhere, a teacher's weights) are kept as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: What ``run.json`` says its relative paths are relative to (readers check it).
RELATIVE_TO = "run directory"


def relative_to_run(value: Any, run_dir: str | Path) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with each string that is a path inside
    ``run_dir`` (absolute, or relative to the working directory) made relative to ``run_dir``
    (``"."`` for the directory itself). An existing file given relative to the working
    directory but outside ``run_dir`` becomes absolute, so that no relative path in the
    records means anything but "inside the run". Other strings are returned unchanged."""
    root = Path(run_dir).resolve()
    if isinstance(value, dict):
        return {k: relative_to_run(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_to_run(v, root) for v in value]
    if isinstance(value, str) and value and ("/" in value or value == str(run_dir) or Path(value).exists()):
        if not Path(value).is_absolute() and (root / value).exists():
            return value  # already relative to the run (records read back and written again)
        path = Path(os.path.abspath(value))  # not resolve(): a link the user made stays a link
        if path == root or root in path.parents:
            return path.relative_to(root).as_posix() or "."
        if not Path(value).is_absolute() and Path(value).exists():
            return str(path)
    return value


def resolve_in_run(path: str | None, run_dir: str | Path) -> str | None:
    """A path read from a run's records: relative ones are relative to ``run_dir``."""
    if path is None or Path(path).is_absolute():
        return path
    return str(Path(run_dir) / path) if path != "." else str(run_dir)
