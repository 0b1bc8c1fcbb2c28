"""Files written so that an interrupted run never leaves half of one, and file hashes.

A run directory is resumed by looking at what exists, so each file must appear whole or
not at all: write to a temporary name in the same folder, then rename (atomic on POSIX)::

    write_frames_atomic(frames, run_dir / "candidates.xyz")   # extxyz; an empty list, an empty file
    write_text_atomic(run_dir / "scores.json", json.dumps(scores))
    with replace_atomic(path) as tmp:                          # any writer: fill tmp, renamed on success
        tmp.write_bytes(data)
    sha256_file("student.nequip.zip")

Every atomic write in the package goes through :func:`replace_atomic`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ase import Atoms
from ase.io import write


def cache_dir() -> Path:
    """The package's cache on this machine: compiled students, committees, measured teacher
    costs (``$TORCHSIM_DISTILL_CACHE`` overrides ``~/.cache/torchsim_distill``)."""
    root = os.environ.get("TORCHSIM_DISTILL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "torchsim_distill"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def replace_atomic(path: str | Path, *, suffix: str = ".partial", fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    without an error (atomic on POSIX: readers see the old file or the new one, never half),
    removed when it raises. The parent folder is created.

    Args:
        path: the file to (re)place.
        suffix: added to ``path``'s name for the temporary file (a writer that picks its
            format by the extension needs the right one, e.g. ``".partial.xyz"``).
        fsync: flush the temporary file to disk before the rename (a crash of the machine,
            not only of the process, then leaves the old file or the whole new one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    with replace_atomic(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_frames_atomic(frames: Sequence[Atoms], path: str | Path) -> Path:
    """Write ``frames`` as extxyz to ``path`` through a temporary file renamed into place
    (no frames: an empty file, which ASE reads back as no frames)."""
    with replace_atomic(path, suffix=".partial.xyz") as tmp:
        if frames:
            write(tmp, list(frames), format="extxyz")
        else:
            tmp.write_text("")
    return Path(path)
