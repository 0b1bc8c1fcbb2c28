"""Energies, forces and stresses of many structures, one table: ``torchsim-distill evaluate``.

A screening user's first pass: every structure evaluated once (no relaxation), streamed in
batches, a row per structure with its file and frame, and the bad ones reported by file and
frame with the same one-line reasons as ``relax``::

    summary = evaluate_structures(["candidates.extxyz"], "default", "results.csv")
    torchsim-distill evaluate default candidates.extxyz --out results.csv --uncertainty

Columns (``COLUMNS``): file, frame, id, formula, n_atoms, energy (eV), energy_per_atom
(eV/atom), max_force (eV/Å), pressure_gpa (−trace(σ)/3, positive under compression), the
stress in Voigt order xx, yy, zz, yz, xz, xy (GPa, ASE's sign: positive under tension; empty
without a cell volume), and with a committee ``uncertainty`` (eV/Å) and
``energy_uncertainty`` (eV/atom).
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import batched
from pathlib import Path

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms, units
from ase.stress import full_3x3_to_voigt_6_stress

from torchsim_distill.jobs.relax_outputs import StructureError
from torchsim_distill.jobs.structure_stream import RelaxInputError, check_paths, iter_structures
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

#: Structures per model call.
DEFAULT_BATCH_SIZE = 32
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")
COLUMNS = ("file", "frame", "id", "formula", "n_atoms", "energy", "energy_per_atom", "max_force", "pressure_gpa",
           *(f"stress_{c}_gpa" for c in VOIGT))
UNCERTAINTY_COLUMNS = ("uncertainty", "energy_uncertainty")


@dataclass
class EvaluationSummary:
    """What :func:`evaluate_structures` did: the rows (in input order), what failed, and the
    ids of the structures without any periodic direction (molecules, clusters)."""

    rows: list[dict[str, object]] = field(default_factory=list)
    errors: list[StructureError] = field(default_factory=list)
    molecules: list[str] = field(default_factory=list)


def evaluate_structures(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    calc: DistilledTorchSimCalc,
    out: str | Path | None = None,
    *,
    on_error: str = "skip",
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_row: Callable[[dict[str, object]], None] | None = None,
) -> EvaluationSummary:
    """Evaluate every structure once, ``batch_size`` per call, and (with ``out``) write the CSV.

    Args:
        structures: files ASE reads (every frame) and/or ``Atoms``.
        calc: the student (with ``uncertainty`` on: the committee's columns too).
        out: CSV file to write (through a temporary name: whole or not at all).
        on_error: ``"skip"``: bad structures become :class:`StructureError` rows and the rest
            are evaluated; ``"stop"``: every structure is checked first and the first bad one
            raises :class:`RelaxInputError` (nothing written).
        batch_size: structures per model call.
        on_row: called with each row as it is computed (the command prints them).
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = check_paths(structures)
    known = set(calc.species.species_to_type)
    if on_error == "stop":
        first = next((item for item in iter_structures(items, known_elements=known) if item.error), None)
        if first is not None:
            raise RelaxInputError(first.error)
    summary = EvaluationSummary()
    for chunk in batched(iter_structures(items, known_elements=known), batch_size):
        summary.errors += [StructureError.of(item) for item in chunk if item.error is not None]
        good = [item for item in chunk if item.error is None]
        summary.molecules += [item.id for item in good if not item.atoms.pbc.any()]
        for pbc in dict.fromkeys(tuple(bool(p) for p in item.atoms.pbc) for item in good):  # a state has one pbc
            group = [item for item in good if tuple(bool(p) for p in item.atoms.pbc) == pbc]
            for row in _rows(group, calc):
                summary.rows.append(row)
                if on_row is not None:
                    on_row(row)
    summary.rows.sort(key=lambda row: row["_index"])
    if out is not None:
        _write_csv(Path(out), summary.rows, calc.uncertainty)
    return summary


def _rows(items, calc: DistilledTorchSimCalc) -> list[dict[str, object]]:
    """One call of the model on ``items`` (one pbc); a row each."""
    atoms_list = [item.atoms for item in items]
    state = ts.io.atoms_to_state(atoms_list, calc.device, torch.float64)
    out = calc(state)
    forces = out["forces"].detach().cpu().numpy()
    ends = np.cumsum([len(a) for a in atoms_list])
    rows = []
    for k, (item, atoms, end) in enumerate(zip(items, atoms_list, ends, strict=True)):
        energy = float(out["energy"][k])
        row: dict[str, object] = {
            "_index": item.index, "file": item.source, "frame": item.frame, "id": item.id,
            "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms), "energy": energy,
            "energy_per_atom": energy / len(atoms),
            "max_force": float(np.linalg.norm(forces[end - len(atoms):end], axis=1).max()),
        }
        if atoms.cell.rank == 3 and "stress" in out:
            voigt = full_3x3_to_voigt_6_stress(out["stress"][k].detach().cpu().numpy()) / units.GPa
            row["pressure_gpa"] = float(-voigt[:3].mean())
            row.update({f"stress_{c}_gpa": float(v) for c, v in zip(VOIGT, voigt, strict=True)})
        for key in UNCERTAINTY_COLUMNS:
            if key in out:
                row[key] = float(out[key][k])
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, object]], uncertainty: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS + (UNCERTAINTY_COLUMNS if uncertainty else ()),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def warn_if_outside_training_pbc(training_pbc: Sequence[Sequence[bool]], ids: Sequence[str], model: str) -> None:
    """Warn (once) when structures without any periodic direction meet a student trained on
    periodic cells only: its energies there can be far from the teacher's."""
    if not ids or not training_pbc or not all(any(p) for p in training_pbc):
        return
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    warnings.warn(
        f"student {model!r} was trained on periodic cells only; {len(ids)} structure(s) have no periodic direction "
        f"(molecules or clusters: {shown}), which is outside its training data: their results may be far from the "
        "teacher's (--uncertainty gives the committee's spread)",
        UserWarning, stacklevel=2,
    )


def training_pbc_of(model: object) -> list[tuple[bool, ...]]:
    """The pbc of the frames a student was trained on, from its package's metadata (empty when
    unknown: a calculator object, a checkpoint or a compiled file)."""
    from torchsim_distill.distill.packaging import read_distill_metadata
    from torchsim_distill.models.registry import resolve_student

    if not isinstance(model, (str, Path)):
        return []
    path = resolve_student(model)
    if not path.name.endswith(".nequip.zip"):
        return []
    return [tuple(p) for p in read_distill_metadata(path).get("training_pbc", [])]
