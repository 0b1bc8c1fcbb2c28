"""Relax many structures at once with a compiled student: batched FIRE in torch-sim.

Structures (files ASE reads, any number of frames each, or ``Atoms``) are checked
first, relaxed together with FIRE and (by default) the Fréchet cell filter, with
finished structures swapped out of the batch for waiting ones, then written as
``relaxed.extxyz`` (input order) and ``results.csv``::

    summary = relax_structures(["alloys.xyz", "slabs.extxyz"], "student.nequip.pt2", "relaxed/")
    summary.structures[0].energy, summary.structures[0].converged
    torchsim-distill relax alloys.xyz slabs.extxyz --model student.nequip.pt2 --out relaxed/

Nothing is written unless every structure is readable and every element is known
to the model: results go to a temporary folder beside ``out_dir`` and are moved
into place only when the run has finished.

A calculator with a committee and ``uncertainty`` on adds an ``uncertainty`` column
(eV/Å, the committee's force spread at the relaxed structure) and logs a warning
naming the structures above ``uncertainty_threshold``.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch_sim as ts
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.stress import full_3x3_to_voigt_6_stress
from tqdm.auto import tqdm

from torchsim_distill.models.registry import load_student
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

logger = logging.getLogger(__name__)

#: Default ``max_memory_scaler`` on CPU: torch-sim's ``n_atoms_x_density`` metric is
#: n_atoms × atoms/nm³, about 85 per atom for dense fcc metals, so this admits about
#: 2,000 such atoms per batch. A CPU is saturated well below that, so a larger batch
#: buys no speed, only memory (a few kB per edge for the forward/backward pass).
CPU_MAX_MEMORY_SCALER = 2.0e5
#: How often convergence is checked and finished structures are swapped out, in
#: optimizer steps (torch-sim's ``steps_between_swaps``).
STEPS_BETWEEN_CHECKS = 5
#: Default uncertainty (eV/Å, max over atoms of the committee's force spread) above
#: which a relaxed structure is reported as unreliable: DP-GEN's customary upper trust
#: level for its model deviation (``model_devi_f_trust_hi``). Measure what it catches
#: for a given committee with :func:`torchsim_distill.distill.calibration.calibrate`.
UNCERTAINTY_THRESHOLD = 0.15


class RelaxInputError(ValueError):
    """Input that cannot be relaxed (the message names the file, structure or element)."""


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


@dataclass
class RelaxSummary:
    """What :func:`relax_structures` did.

    Attributes:
        out_dir: where ``relaxed.extxyz`` and ``results.csv`` are.
        structures: one result per input structure, in input order.
        relaxed: the relaxed structures, in input order (with their energy, forces
            and stress as single-point results).
        wall_time: seconds spent relaxing (optimizer set-up and steps).
        warmup_time: seconds of the one warm-up call before it (kernel loading).
    """

    out_dir: Path
    structures: list[StructureResult]
    relaxed: list[Atoms]
    wall_time: float
    warmup_time: float = 0.0

    @property
    def n_converged(self) -> int:
        return sum(r.converged for r in self.structures)

    @property
    def atom_steps(self) -> int:
        """Σ n_atoms × steps over the structures."""
        return sum(r.n_atoms * r.steps for r in self.structures)

    @property
    def structures_per_min(self) -> float:
        return 60.0 * len(self.structures) / self.wall_time if self.wall_time > 0 else float("inf")

    @property
    def atom_steps_per_s(self) -> float:
        return self.atom_steps / self.wall_time if self.wall_time > 0 else float("inf")

    def report(self) -> str:
        """A few lines for people: counts, throughput and where the files are."""
        n = len(self.structures)
        lines = [
            f"relaxed {n} structure{'s' * (n != 1)} ({self.n_converged} converged, "
            f"{n - self.n_converged} stopped at max steps) in {self.wall_time:.1f} s "
            f"(+{self.warmup_time:.1f} s warm-up)",
            f"throughput: {self.structures_per_min:,.1f} structures/min, {self.atom_steps_per_s:,.0f} atom-steps/s",
            f"wrote {self.out_dir / 'relaxed.extxyz'} and {self.out_dir / 'results.csv'}",
        ]
        return "\n".join(lines)


def relax_structures(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    model: str | Path | DistilledTorchSimCalc,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    fmax: float = 0.05,
    max_steps: int = 500,
    cell_filter: str | None = "frechet",
    max_memory_scaler: float | None = None,
    progress: bool = True,
    uncertainty_threshold: float = UNCERTAINTY_THRESHOLD,
    summary: bool | None = None,
    dispersion: str | None = None,
    functional: str = "pbe",
) -> RelaxSummary:
    """Relax structures with FIRE in one batched torch-sim run and write the results.

    Args:
        structures: files ASE reads (every frame is used) and/or ``Atoms``.
        model: what :func:`load_model` takes: a student's name (``"default"``), a compiled
            ``.nequip.pt2``, a package or checkpoint (compiled on first use), or a
            :class:`DistilledTorchSimCalc`.
        out_dir: output folder; created, or its two result files replaced.
        device: where a model loaded here runs (a given calculator keeps its own).
        fmax: force convergence threshold, eV/Å.
        max_steps: FIRE steps at most per structure.
        cell_filter: ``"frechet"`` (relax cell and positions), ``"unit"`` or None
            (positions only, fixed cell).
        max_memory_scaler: batch size limit in torch-sim's ``n_atoms_x_density``
            metric. Default: :data:`CPU_MAX_MEMORY_SCALER` on CPU (raised to the
            largest structure if needed); estimated by torch-sim on CUDA.
        progress: show a progress bar.
        uncertainty_threshold: eV/Å; with a calculator that has ``uncertainty`` on,
            relaxed structures above it are named in a warning. Their uncertainty is
            computed once, at the end; the relaxation itself runs the main student only.
        summary: log a summary at the end (the CLI shows it); ``None``: with the progress bar.
        dispersion, functional: a correction on top of a student loaded here (``"d3bj"``
            with the teacher's functional; see :func:`load_model`); a given calculator keeps
            its own.

    Raises:
        RelaxInputError: an unreadable or empty input, an element the model does not
            know, a structure with no atoms, constraints, or (with a cell filter) no
            cell volume. Nothing is written then.
        FileNotFoundError: a structure file or the model file does not exist.
    """
    out_dir = Path(out_dir)
    ids, atoms_list, calc = checked_input(
        structures, model, out_dir, device=device, fmax=fmax, max_steps=max_steps, cell_filter=cell_filter,
        dispersion=dispersion, functional=functional,
    )
    (finals, steps, converged), warmup_time, wall_time = _timed_relax(
        atoms_list, calc, fmax=fmax, max_steps=max_steps, cell_filter=cell_filter,
        max_memory_scaler=max_memory_scaler, progress=progress,
    )
    results, relaxed = [], []
    for id_, atoms, state, n, c in zip(ids, atoms_list, finals, steps, converged, strict=True):
        result, out_atoms = _result(id_, atoms, state, n, c)
        results.append(result)
        relaxed.append(out_atoms)
    if calc.uncertainty:
        results = _with_uncertainty(results, relaxed, calc, uncertainty_threshold)
    _write_outputs(out_dir, results, relaxed)
    result = RelaxSummary(out_dir, results, relaxed, wall_time, warmup_time)
    if progress if summary is None else summary:
        logger.info(result.report())
    return result


# -- input -------------------------------------------------------------------------


def checked_input(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    model: str | Path | DistilledTorchSimCalc,
    out_dir: Path,
    *,
    device: str,
    fmax: float,
    max_steps: int,
    cell_filter: str | None,
    dispersion: str | None = None,
    functional: str = "pbe",
) -> tuple[list[str], list[Atoms], DistilledTorchSimCalc]:
    """Every check a relaxation makes before any work (settings, output folder, structures,
    model, elements), in one order for every way of running it; the ids, structures and model.

    Raises:
        ValueError, RelaxInputError, FileNotFoundError: as :func:`relax_structures`.
    """
    if fmax <= 0:
        raise ValueError(f"fmax must be positive (eV/Å), got {fmax}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if cell_filter is not None and cell_filter not in ("frechet", "unit"):
        raise ValueError(f"cell_filter must be 'frechet', 'unit' or None, got {cell_filter!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise RelaxInputError(f"output {str(out_dir)!r} exists and is not a folder")
    ids, atoms_list = read_structures(structures)
    _check_structures(ids, atoms_list, cell_filter)
    calc = load_model(model, device, cell_filter=cell_filter, dispersion=dispersion, functional=functional)
    _check_elements(ids, atoms_list, calc)
    return ids, atoms_list, calc


def read_structures(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
) -> tuple[list[str], list[Atoms]]:
    """Read every frame of every file (and take ``Atoms`` as they are), with ids.

    Raises:
        FileNotFoundError: a path that is not a file.
        RelaxInputError: a file ASE cannot read or with no frames; no input at all.
    """
    if isinstance(structures, (str, Path, Atoms)):
        structures = [structures]
    ids: list[str] = []
    atoms_list: list[Atoms] = []
    for k, item in enumerate(structures):
        if isinstance(item, Atoms):
            ids.append(str(item.info.get("id", k)))
            atoms_list.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            raise RelaxInputError(f"{str(item)!r} is a folder, not a structure file; give the files in it")
        if not path.is_file():
            raise FileNotFoundError(f"structure file {str(item)!r} does not exist")
        try:
            frames = read(path, index=":")
        except Exception as err:  # ASE raises many kinds for unreadable files
            raise RelaxInputError(f"cannot read structures from {str(item)!r}: {err}") from err
        if not isinstance(frames, list):
            frames = [frames]
        if not frames:
            raise RelaxInputError(f"{str(item)!r} holds no structures")
        ids += [f"{item}@{i}" for i in range(len(frames))]
        atoms_list += frames
    if not atoms_list:
        raise RelaxInputError("no structures to relax: the input is empty")
    return ids, atoms_list


def _check_structures(ids: list[str], atoms_list: list[Atoms], cell_filter: str | None) -> None:
    for id_, atoms in zip(ids, atoms_list, strict=True):
        if len(atoms) == 0:
            raise RelaxInputError(f"structure {id_} has no atoms")
        if atoms.constraints:
            # torch-sim does not read ASE constraints: fixed atoms would move
            raise RelaxInputError(
                f"structure {id_} has constraints ({', '.join(type(c).__name__ for c in atoms.constraints)}), "
                "which this batched relaxation cannot honour; remove them or relax it with ASE and DistilledCalculator"
            )
        if cell_filter is not None and atoms.cell.rank < 3:
            raise RelaxInputError(
                f"structure {id_} has no 3D cell, so its cell cannot be relaxed; "
                "give it a cell or use cell_filter=None (--cell-filter none)"
            )


def load_model(
    model: str | Path | DistilledTorchSimCalc,
    device: str = "cpu",
    *,
    cell_filter: str | None = None,
    dispersion: str | None = None,
    functional: str = "pbe",
) -> DistilledTorchSimCalc:
    """A calculator for ``model``: what :func:`~torchsim_distill.models.registry.load_student`
    takes (a student's name such as ``"default"``, a package, checkpoint or compiled student),
    or a calculator as it is. ``dispersion="d3bj"`` adds D3(BJ) of ``functional`` on top of a
    student loaded here (a calculator given ready keeps its own ``dispersion``).

    Raises:
        UnknownStudentError: (a ``ValueError``) neither a known student nor a student file.
        FileNotFoundError: a registered student missing from this install.
        ValueError: a cell filter with a calculator without stress.
    """
    if isinstance(model, DistilledTorchSimCalc):
        calc = model
    else:
        # a cell filter changes the cell every step, which invalidates a Verlet skin's
        # cached pairs every step: then the skin only costs (more candidate pairs)
        calc = load_student(
            model, device, skin=None if cell_filter else 0.3, dispersion=dispersion, functional=functional
        )
    if cell_filter is not None and not calc.compute_stress:
        raise ValueError("a cell filter needs stress: build the calculator with compute_stress=True")
    return calc


def _check_elements(ids: list[str], atoms_list: list[Atoms], calc: DistilledTorchSimCalc) -> None:
    known = calc.species.species_to_type
    for id_, atoms in zip(ids, atoms_list, strict=True):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(known))
        if unknown:
            raise RelaxInputError(
                f"structure {id_} contains element(s) {', '.join(unknown)} that the model "
                f"does not know; it knows {', '.join(sorted(known))}"
            )


def _group_by_pbc(atoms_list: list[Atoms]) -> list[list[int]]:
    """Indices of structures sharing one pbc (a SimState has a single pbc)."""
    groups: dict[tuple[bool, ...], list[int]] = {}
    for i, atoms in enumerate(atoms_list):
        groups.setdefault(tuple(bool(p) for p in atoms.pbc), []).append(i)
    return list(groups.values())


# -- relaxation ----------------------------------------------------------------------


def _timed_relax(
    atoms_list: list[Atoms], calc: DistilledTorchSimCalc, **options
) -> tuple[tuple[list[ts.SimState], list[int], list[bool]], float, float]:
    """:func:`_relax_all` after one warm-up call, with the committee off (FIRE needs the
    main student only): its results, the warm-up seconds and the relaxation seconds."""
    with_uncertainty = calc.uncertainty
    calc.uncertainty = False
    try:
        # the first call in a process loads the compiled model's kernels (about a second):
        # paid once here, so the reported throughput is the relaxation's
        t0 = time.perf_counter()
        calc(ts.io.atoms_to_state([atoms_list[0]], calc.device, calc.dtype))
        warmup_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        relaxed = _relax_all(atoms_list, calc, **options)
        return relaxed, warmup_time, time.perf_counter() - t0
    finally:
        calc.uncertainty = with_uncertainty


def _relax_all(
    atoms_list: list[Atoms], calc: DistilledTorchSimCalc, *, progress: bool, **options
) -> tuple[list[ts.SimState], list[int], list[bool]]:
    """Relax every structure, one batched run per ``pbc`` (a SimState has one), and
    return final states, steps and convergence in input order."""
    finals: list[ts.SimState | None] = [None] * len(atoms_list)
    steps = [0] * len(atoms_list)
    converged = [False] * len(atoms_list)
    with tqdm(total=len(atoms_list), desc="relax", unit="structure", disable=not progress) as bar:
        for group in _group_by_pbc(atoms_list):
            states, group_steps, group_converged = _relax_group([atoms_list[i] for i in group], calc, bar=bar, **options)
            for i, state, n, c in zip(group, states, group_steps, group_converged, strict=True):
                finals[i], steps[i], converged[i] = state, n, c
    return finals, steps, converged


def _relax_group(
    atoms_list: list[Atoms],
    calc: DistilledTorchSimCalc,
    *,
    fmax: float,
    max_steps: int,
    cell_filter: str | None,
    max_memory_scaler: float | None,
    bar: tqdm,
) -> tuple[list[ts.SimState], list[int], list[bool]]:
    """FIRE on structures with one pbc; finished ones leave the batch, waiting ones join.

    ``ts.optimize`` does the same but keeps per-structure step counts to itself and
    only checks ``max_steps`` every few steps, so this is its loop with both kept
    exact: each block runs at most as many steps as the most advanced structure in
    the batch has left.

    Returns:
        final optimizer states (one system each), steps taken and convergence, in
        the order of ``atoms_list``.
    """
    state = ts.io.atoms_to_state(atoms_list, calc.device, calc.dtype)
    scales_with = calc.memory_scales_with
    if max_memory_scaler is None and calc.device.type == "cpu":
        # torch-sim can only measure GPU memory; a CPU run needs a limit given
        largest = max(ts.autobatching.calculate_memory_scalers(state, scales_with))
        max_memory_scaler = max(CPU_MAX_MEMORY_SCALER, largest)
    init_kwargs = {} if cell_filter is None else {"cell_filter": ts.CellFilter(cell_filter)}
    converged_fn = ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=cell_filter is not None)

    # optimizer set-up in memory-sized chunks (as ts.optimize does); the chunker
    # estimates the memory limit once on CUDA when none is given
    binning = ts.BinningAutoBatcher(
        model=calc, memory_scales_with=scales_with, max_memory_scaler=max_memory_scaler, max_memory_padding=0.9,
    )
    binning.load_states(state)
    initialized = [ts.fire_init(state=chunk, model=calc, **init_kwargs) for chunk, _ in binning]
    in_flight = ts.InFlightAutoBatcher(
        model=calc, memory_scales_with=scales_with, max_memory_scaler=binning.max_memory_scaler,
    )
    in_flight.load_states(binning.restore_original_order(initialized))

    n = len(atoms_list)
    steps = torch.zeros(n, dtype=torch.long)
    converged = torch.zeros(n, dtype=torch.bool)
    finished: list[ts.SimState] = []
    batch, is_done = None, None
    while True:
        batch, newly_finished = in_flight.next_batch(batch, is_done)
        finished += newly_finished
        bar.update(len(newly_finished))
        if batch is None:
            break
        idx = torch.tensor(in_flight.current_idx)
        n_block = min(STEPS_BETWEEN_CHECKS, max_steps - int(steps[idx].max()))
        for _ in range(n_block):
            batch = ts.fire_step(state=batch, model=calc)
        steps[idx] += n_block
        batch_converged = converged_fn(batch).cpu()
        converged[idx] = batch_converged
        is_done = (batch_converged | (steps[idx] >= max_steps)).to(calc.device)
    return in_flight.restore_original_order(finished), steps.tolist(), converged.tolist()


# -- output --------------------------------------------------------------------------


def _result(id_: str, atoms: Atoms, state: ts.SimState, steps: int, converged: bool) -> tuple[StructureResult, Atoms]:
    """The CSV row and the relaxed ``Atoms`` (the input's info and arrays kept)."""
    relaxed = atoms.copy()
    relaxed.set_cell(state.row_vector_cell[0].detach().cpu().numpy(), scale_atoms=False)
    relaxed.set_positions(state.positions.detach().cpu().numpy())
    energy = float(state.energy[0])
    forces = state.forces.detach().cpu().numpy()
    results = {"energy": energy, "free_energy": energy, "forces": forces}
    if relaxed.cell.rank == 3 and getattr(state, "stress", None) is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(state.stress[0].detach().cpu().numpy())
    relaxed.calc = SinglePointCalculator(relaxed, **results)
    max_force = float(torch.linalg.norm(state.forces, dim=1).max())
    relaxed.info.update(id=id_, steps=steps, converged=converged)
    row = StructureResult(
        id=id_, formula=relaxed.get_chemical_formula(), n_atoms=len(relaxed), energy=energy,
        energy_per_atom=energy / len(relaxed), volume=float(abs(relaxed.cell.volume)),
        max_force=max_force, steps=steps, converged=converged,
    )
    return row, relaxed


def _with_uncertainty(
    results: list[StructureResult], relaxed: list[Atoms], calc: DistilledTorchSimCalc, threshold: float
) -> list[StructureResult]:
    """Rows with the committee's uncertainty at each relaxed structure (also in its ``info``);
    warns naming the structures above ``threshold`` eV/Å."""
    # function-local: the calibration module (and the distill package) load only when asked
    from torchsim_distill.distill.calibration import committee_uncertainty

    values = committee_uncertainty(calc, relaxed)["uncertainty"]
    for atoms, value in zip(relaxed, values, strict=True):
        atoms.info["uncertainty"] = float(value)
    above = [(r.id, float(u)) for r, u in zip(results, values, strict=True) if u > threshold]
    if above:
        logger.warning(
            "%d relaxed structure(s) above the uncertainty threshold %.3g eV/Å (the student is "
            "unsure there; check them with the teacher): %s",
            len(above), threshold, ", ".join(f"{id_} ({u:.3g} eV/Å)" for id_, u in above),
        )
    return [replace(r, uncertainty=float(u)) for r, u in zip(results, values, strict=True)]


def _write_outputs(out_dir: Path, results: list[StructureResult], relaxed: list[Atoms]) -> None:
    """Write both files into a temporary folder beside ``out_dir``, then move them in."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # mkdtemp makes the folder private (0700); the renamed output should look made by mkdir
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        write(tmp / "relaxed.extxyz", relaxed, format="extxyz")
        columns = RESULT_COLUMNS + (("uncertainty",) if any(r.uncertainty is not None for r in results) else ())
        with open(tmp / "results.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(asdict(r) for r in results)
        if out_dir.exists():
            for name in ("relaxed.extxyz", "results.csv"):
                os.replace(tmp / name, out_dir / name)
            tmp.rmdir()
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
