"""Finished chunks of a long relaxation kept on disk, so that a killed run resumes without
losing or repeating work, and the outputs are written in input order at the end.

Both screening paths use it: the single-process run stores each chunk as it finishes, the
Ray run each shard an actor returns. A chunk is pickled whole to a temporary name and
renamed (on disk entirely or not at all); :meth:`ChunkStore.merge` then streams the
chunks in order into the output files, so memory stays bounded by one chunk::

    store = ChunkStore.beside(out_dir, run_key(inputs, model, options))
    if not store.has(k): store.write(k, Chunk(rows, relaxed, errors))
    store.merge(out_dir, n_chunks, write_chunk)   # then the store folder is removed

The folder is ``.OUT.parts-KEY/`` beside the output folder; ``KEY`` hashes the input
files' bytes, the model and the options, so another run never picks up these chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from torchsim_distill.utils.files import sha256_file


@dataclass
class Chunk:
    """What a finished chunk holds: rows, relaxed structures (same order) and failures.

    Attributes:
        rows: one result row per relaxed structure (whatever the caller stores).
        relaxed: the relaxed ``Atoms``, in the order of ``rows``.
        errors: one row per structure that could not be relaxed.
        seconds: time spent relaxing this chunk.
    """

    rows: list[Any] = field(default_factory=list)
    relaxed: list[Atoms] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    seconds: float = 0.0


def run_key(structures: Sequence[str | Path | Atoms], model: str | Path, settings: dict[str, Any]) -> str:
    """16 hex digits that change with anything that changes a chunk's result: the input
    (file bytes, or an ``Atoms``' species, positions, cell and pbc), the model (its file's
    bytes, or its name) and the settings (which must include the chunk size)."""
    h = hashlib.sha256()
    path = Path(model) if isinstance(model, (str, Path)) else None
    model_id = sha256_file(path) if path is not None and path.is_file() else str(model)
    h.update(json.dumps([model_id, settings], sort_keys=True, default=str).encode())
    for k, entry in enumerate(structures):
        if isinstance(entry, Atoms):
            h.update(str(entry.info.get("id", k)).encode())
            for array in (entry.numbers, entry.positions, entry.cell.array, entry.pbc):
                h.update(np.ascontiguousarray(array).tobytes())
        else:
            h.update(str(entry).encode())
            h.update(sha256_file(Path(entry)).encode())
    return h.hexdigest()[:16]


class ChunkStore:
    """Finished chunks of one run, by number (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def beside(cls, out_dir: Path, key: str) -> ChunkStore:
        """The store of run ``key`` writing into ``out_dir``: a hidden folder next to it."""
        out_dir = Path(out_dir)
        return cls(out_dir.parent / f".{out_dir.name}.parts-{key}")

    def path(self, k: int) -> Path:
        return self.root / f"chunk-{k:07d}.pkl"

    def has(self, k: int) -> bool:
        return self.path(k).is_file()

    def read(self, k: int) -> Chunk:
        with open(self.path(k), "rb") as f:
            return pickle.load(f)

    def write(self, k: int, chunk: Chunk) -> None:
        """Pickle to a temporary name, fsync, rename: a chunk is on disk whole or not at all."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(k)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as f:
            pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def merge(self, n_chunks: int, write: Callable[[Chunk], None]) -> None:
        """Hand chunks ``0..n_chunks-1`` to ``write`` in order, one in memory at a time."""
        for k in range(n_chunks):
            write(self.read(k))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
