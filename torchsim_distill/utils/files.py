"""Files written so that an interrupted run never leaves half of one, and file hashes.

A run directory is resumed by looking at what exists, so each file must appear whole or
not at all: write to a temporary name in the same folder, then rename (atomic on POSIX)::

    write_frames_atomic(frames, run_dir / "candidates.xyz")   # extxyz; an empty list, an empty file
    write_text_atomic(run_dir / "scores.json", json.dumps(scores))
    sha256_file("student.nequip.zip")
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms
from ase.io import write


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_frames_atomic(frames: Sequence[Atoms], path: str | Path) -> Path:
    """Write ``frames`` as extxyz to ``path`` through a temporary file renamed into place
    (no frames: an empty file, which ASE reads back as no frames)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.xyz")
    if frames:
        write(tmp, list(frames), format="extxyz")
    else:
        tmp.write_text("")
    os.replace(tmp, path)
    return path
