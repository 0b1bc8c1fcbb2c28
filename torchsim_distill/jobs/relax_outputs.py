"""What a relaxation writes: ``relaxed.extxyz``, ``results.csv`` and ``errors.csv``, in input
order, and the summary that reads them back.

The files are written from the stored chunks (:class:`~torchsim_distill.jobs.chunk_store.ChunkStore`)
one chunk at a time into a temporary folder beside the output folder, then moved into place:
a reader never sees half a file, and memory holds one chunk, whatever the input's size.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ase import Atoms
from ase.io import read, write

from torchsim_distill.jobs.chunk_store import Chunk, ChunkStore
from torchsim_distill.jobs.structure_stream import Item

logger = logging.getLogger(__name__)

#: The output files, in the output folder.
OUTPUT_FILES = ("relaxed.extxyz", "results.csv", "errors.csv")


@dataclass(frozen=True)
class StructureResult:
    """One relaxed structure: a row of ``results.csv``.

    Attributes:
        id: ``path@frame`` for structures read from files (ASE's own index syntax),
            ``atoms.info["id"]`` or the input position for ``Atoms``.
        formula: chemical formula.
        n_atoms: number of atoms.
        energy: final energy, eV.
        energy_per_atom: eV/atom.
        volume: final cell volume, Å³ (0 without a cell).
        max_force: largest atomic force norm at the end, eV/Å.
        steps: FIRE steps taken.
        converged: ``max_force < fmax`` and, with a cell filter, every row of the
            filter's cell force (virial / n_atoms, eV) below ``fmax`` too, as ASE's
            optimizers judge a filtered system.
        uncertainty: the committee's uncertainty at the relaxed structure, eV/Å
            (``None`` without one; then ``results.csv`` has no such column).
    """

    id: str
    formula: str
    n_atoms: int
    energy: float
    energy_per_atom: float
    volume: float
    max_force: float
    steps: int
    converged: bool
    uncertainty: float | None = None


#: the columns of ``results.csv``, in order (``uncertainty`` follows when there is one)
RESULT_COLUMNS = tuple(f.name for f in fields(StructureResult) if f.name != "uncertainty")
_TYPES = {"n_atoms": int, "steps": int, "energy": float, "energy_per_atom": float, "volume": float,
          "max_force": float, "converged": lambda v: v == "True", "uncertainty": float}


@dataclass(frozen=True)
class StructureError:
    """A structure that was not relaxed: a row of ``errors.csv``.

    Attributes:
        file: the file it came from (empty for ``Atoms`` given directly).
        frame: its frame in that file (the input position for ``Atoms``).
        id: as in ``results.csv``.
        reason: one line saying what is wrong (the error ``on_error="stop"`` raises).
        index: position in the whole input (orders the rows; not written).
    """

    file: str
    frame: int
    id: str
    reason: str
    index: int = 0

    @classmethod
    def of(cls, item: Item, reason: str | None = None) -> StructureError:
        return cls(item.source, item.frame, item.id, reason or item.error or "", item.index)


ERROR_COLUMNS = ("file", "frame", "id", "reason")


@dataclass
class RelaxSummary:
    """What :func:`~torchsim_distill.jobs.relax.relax_structures` did. The structures
    themselves are in the output files (read back on demand: a screening run's results
    need not fit in memory).

    Attributes:
        out_dir: where ``relaxed.extxyz``, ``results.csv`` and ``errors.csv`` are.
        n_relaxed, n_converged, n_failed: structures relaxed (converged or stopped at
            ``max_steps``), of those converged, and not relaxed (``errors.csv``).
        wall_time: seconds this process spent relaxing.
        warmup_time: seconds of the one warm-up call before it (kernel loading).
        n_here, atom_steps: structures handled and Σ n_atoms × steps relaxed by this
            process (a resumed run's earlier chunks are not counted in its throughput).
        n_resumed: structures taken from an earlier, interrupted run's stored chunks.
    """

    out_dir: Path
    n_relaxed: int
    n_converged: int
    n_failed: int
    wall_time: float
    warmup_time: float = 0.0
    n_here: int = 0
    atom_steps: int = 0
    n_resumed: int = 0

    @property
    def structures(self) -> list[StructureResult]:
        """The rows of ``results.csv``, in input order."""
        with open(self.out_dir / "results.csv", newline="") as fh:
            return [
                StructureResult(**{k: (_TYPES[k](v) if k in _TYPES and v != "" else v) for k, v in row.items()})
                for row in csv.DictReader(fh)
            ]

    @property
    def relaxed(self) -> list[Atoms]:
        """The relaxed structures of ``relaxed.extxyz`` (energy, forces, stress attached)."""
        path = self.out_dir / "relaxed.extxyz"
        return read(path, index=":") if path.stat().st_size else []

    @property
    def errors(self) -> list[StructureError]:
        """The rows of ``errors.csv``: what was not relaxed, and why."""
        with open(self.out_dir / "errors.csv", newline="") as fh:
            return [StructureError(r["file"], int(r["frame"]), r["id"], r["reason"]) for r in csv.DictReader(fh)]

    @property
    def structures_per_min(self) -> float:
        return 60.0 * self.n_here / self.wall_time if self.wall_time > 0 else float("inf")

    @property
    def atom_steps_per_s(self) -> float:
        return self.atom_steps / self.wall_time if self.wall_time > 0 else float("inf")

    def report(self) -> str:
        """A few lines for people: counts, throughput and where the files are."""
        n = self.n_relaxed
        lines = [
            f"relaxed {n} structure{'s' * (n != 1)} ({self.n_converged} converged, "
            f"{n - self.n_converged} stopped at max steps) in {self.wall_time:.1f} s "
            f"(+{self.warmup_time:.1f} s warm-up)",
        ]
        if self.n_resumed:
            lines.append(f"resumed: {self.n_resumed} structures were done by an earlier run")
        if self.n_failed:
            lines.append(f"{self.n_failed} structure{'s' * (self.n_failed != 1)} not relaxed: see "
                         f"{self.out_dir / 'errors.csv'}")
        lines += [
            f"throughput: {self.structures_per_min:,.1f} structures/min, {self.atom_steps_per_s:,.0f} atom-steps/s",
            f"wrote {self.out_dir / 'relaxed.extxyz'} and {self.out_dir / 'results.csv'}",
        ]
        return "\n".join(lines)


def write_outputs(
    out_dir: Path, store: ChunkStore, n_chunks: int, wall_time: float, warmup_time: float, *,
    n_resumed: int = 0, n_here: int = 0, atom_steps: int = 0,
) -> RelaxSummary:
    """Write the three files from the stored chunks (in order) into a temporary folder beside
    ``out_dir``, then move them in; the summary of the counts."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    counts = {"relaxed": 0, "converged": 0, "failed": 0}
    try:
        # mkdtemp makes the folder private (0700); the renamed output should look made by mkdir
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        has_uncertainty = _first_rows_have_uncertainty(store, n_chunks)
        columns = RESULT_COLUMNS + (("uncertainty",) if has_uncertainty else ())
        with (open(tmp / "relaxed.extxyz", "w") as frames, open(tmp / "results.csv", "w", newline="") as results,
              open(tmp / "errors.csv", "w", newline="") as errors):
            result_writer = csv.DictWriter(results, fieldnames=columns, extrasaction="ignore")
            error_writer = csv.DictWriter(errors, fieldnames=ERROR_COLUMNS, extrasaction="ignore")
            result_writer.writeheader()
            error_writer.writeheader()

            def add(chunk: Chunk) -> None:
                if chunk.relaxed:
                    write(frames, chunk.relaxed, format="extxyz")
                result_writer.writerows(asdict(r) for r in chunk.rows)
                error_writer.writerows(asdict(e) for e in chunk.errors)
                counts["relaxed"] += len(chunk.rows)
                counts["converged"] += sum(r.converged for r in chunk.rows)
                counts["failed"] += len(chunk.errors)

            store.merge(n_chunks, add)
        if out_dir.exists():
            for name in OUTPUT_FILES:
                os.replace(tmp / name, out_dir / name)
            tmp.rmdir()
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RelaxSummary(out_dir, counts["relaxed"], counts["converged"], counts["failed"], wall_time, warmup_time,
                        n_here=n_here, atom_steps=atom_steps, n_resumed=n_resumed)


def _first_rows_have_uncertainty(store: ChunkStore, n_chunks: int) -> bool:
    """Whether the rows carry the committee's uncertainty (all do, or none: one calculator)."""
    for k in range(n_chunks):
        rows = store.read(k).rows
        if rows:
            return rows[0].uncertainty is not None
    return False
