"""What a teacher costs on this machine: its elements, its precision and its time per atom.

Loading a teacher takes seconds (SevenNet: its checkpoint, e3nn's tensor products), so the
listing of ``torchsim-distill teachers`` shows what was measured here before, and
``torchsim-distill teachers --measure`` measures again and caches it::

    record = measure_teacher("7net-l3i5")   # {"us_per_atom": ..., "elements": [...], "dtype": "float32", ...}

The cost is that of one energy-forces-stress call on one rattled bulk cell of up to 64
atoms (Si diamond when the teacher covers Si, else Cu, else its first element), the
median of several calls after a warm-up, with the torch threads this process has.
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import torch
import torch_sim as ts
from ase import Atoms
from ase.build import bulk
from ase.data import chemical_symbols

from torchsim_distill.distill.teachers import ASECalculatorTeacher, DtypeCastTeacher, load_teacher
from torchsim_distill.models.teacher_registry import TeacherSpec, record_measurement, resolve_teacher
from torchsim_distill.utils.timing import default_dtype

#: Elements tried first for the timing cell (the issue's case is Si; EMT covers Cu).
PREFERRED = ("Si", "Cu", "Al", "Ni", "Fe", "C")


def measure_teacher(
    name: str, *, device: str = "cpu", n_atoms: int = 64, min_seconds: float = 1.0, max_calls: int = 10,
    cache: bool = True,
) -> dict[str, Any]:
    """Load the teacher ``name``, read what it covers and time it per atom; cache the result.

    Args:
        name: any teacher name or file :func:`~torchsim_distill.distill.teachers.load_teacher` takes.
        device: where it runs.
        n_atoms: about how many atoms the timing cell has (a bulk cell repeated up to it).
        min_seconds, max_calls: calls are timed until both ``min_seconds`` have passed and
            three calls were made, or ``max_calls`` were made.
        cache: record it for ``torchsim-distill teachers`` (keyed by name and device).

    Returns:
        ``elements`` (symbols; None: not known), ``modals`` (a multi-fidelity SevenNet
        model's, timed with the first), ``dtype`` (the model's own), ``us_per_atom``
        (µs per atom and call: energy, forces and stress), ``cell`` (formula timed),
        ``calls``, ``load_s`` (seconds to load), ``threads``, ``device``, ``machine``, ``measured`` (UTC).
    """
    spec = resolve_teacher(name)
    modals = sevenn_modals(spec) if spec.kind == "sevenn" and spec.modal is None else []
    t0 = time.perf_counter()
    # a multi-fidelity model named without its modal is timed with its first (all cost the same)
    teacher = load_teacher(name, device=device, dtype=torch.float64, modal=modals[0] if modals else None)
    load_s = time.perf_counter() - t0
    elements = teacher_elements(teacher) or (list(spec.elements) if spec.elements else None)
    atoms = timing_cell(elements, n_atoms)
    state = ts.io.atoms_to_state([atoms], teacher.device, teacher.dtype)
    teacher(state)  # warm-up: first-call allocations, lazy graph builds
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < 3 or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        teacher(state)
        times.append(time.perf_counter() - t)
    record = {
        "elements": elements, "dtype": str(own_dtype(teacher)).removeprefix("torch."),
        "us_per_atom": statistics.median(times) / len(atoms) * 1e6, "cell": atoms.get_chemical_formula(),
        "calls": len(times), "load_s": load_s, "threads": torch.get_num_threads(), "device": device,
        "machine": platform.node(), "measured": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if modals:
        record["modals"] = modals
    if cache:
        record_measurement(spec, device, record)
    return record


def sevenn_modals(spec: TeacherSpec) -> list[str]:
    """The modals (fidelities) of a SevenNet checkpoint, read from its config ([]: one fidelity)."""
    from sevenn.checkpoint import SevenNetCheckpoint

    if spec.file is None or not spec.file.is_file():
        return []
    with default_dtype(torch.float32):
        config = SevenNetCheckpoint(str(spec.file)).config
    return list(config.get("_modal_map") or config.get("modal_list") or [])


def own_dtype(teacher: Any) -> torch.dtype:
    """The precision a teacher computes in (inside any dtype cast; float64 for ASE calculators)."""
    while isinstance(teacher, DtypeCastTeacher):
        teacher = teacher.model
    return teacher.dtype


def teacher_elements(teacher: Any) -> list[str] | None:
    """The chemical symbols a loaded teacher covers, when it says (None: not known)."""
    while hasattr(teacher, "model") and not hasattr(teacher, "type_map") and not hasattr(teacher, "type_names"):
        teacher = teacher.model
    if isinstance(teacher, ASECalculatorTeacher):
        from ase.calculators.emt import EMT, parameters

        return sorted(parameters) if isinstance(teacher.calculator, EMT) else None
    type_map = getattr(teacher, "type_map", None)  # SevenNet: atomic number → type index
    if isinstance(type_map, dict) and type_map:
        return [chemical_symbols[int(z)] for z in sorted(type_map)]
    names = getattr(teacher, "type_names", None)  # a nequip student
    return list(names) if names else None


def timing_cell(elements: list[str] | None, n_atoms: int = 64) -> Atoms:
    """A rattled bulk cell of about ``n_atoms`` atoms of an element the teacher covers."""
    candidates = [e for e in PREFERRED if elements is None or e in elements] + list(elements or [])
    for symbol in candidates:
        try:
            atoms = bulk(symbol, cubic=True)
        except (ValueError, KeyError, RuntimeError):
            try:
                atoms = bulk(symbol)
            except (ValueError, KeyError, RuntimeError):
                continue
        reps = max(1, int((n_atoms / len(atoms)) ** (1 / 3) + 1e-9))  # at most n_atoms
        atoms = atoms.repeat((reps, reps, reps))
        atoms.rattle(0.03, seed=0)
        return atoms
    raise ValueError(f"no bulk cell of ASE's reference states for any of the elements {elements}")


def time_per_atom(model: Any, seeds: list[Atoms]) -> tuple[float, float]:
    """``(per_system_s, per_atom_s)`` of one call of ``model`` (a torch-sim model): least
    squares on the smallest seed (rattled) and its 2×2×2 supercell, the least of two timed
    calls after a warm-up each. What the budget planner and the exploration's driver choice
    rest on; a call costs ``per_system_s`` per system plus ``per_atom_s`` per atom."""
    small = min(seeds, key=len).copy()
    small.calc = None
    small.rattle(0.05, seed=0)
    big = small.repeat((2, 2, 2)) if all(small.pbc) else small
    times = {}
    for atoms in (small, big):
        state = ts.io.atoms_to_state([atoms], model.device, model.dtype)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            model(state)
            runs.append(time.perf_counter() - t)
        times[len(atoms)] = min(runs[1:])  # the first call warms up
    (n1, t1), (n2, t2) = sorted(times.items())
    per_atom = max((t2 - t1) / (n2 - n1), 0.0) if n2 > n1 else t1 / n1
    return max(t1 - per_atom * n1, 0.0), per_atom
