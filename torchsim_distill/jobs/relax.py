"""Relax many structures at once with a compiled student: batched FIRE in torch-sim.

Structures (files ASE reads, any number of frames each, or ``Atoms``) are checked
first, relaxed together with FIRE and (by default) the Fréchet cell filter, with
finished structures swapped out of the batch for waiting ones, then written as
``relaxed.extxyz`` and ``results.csv`` (input order) and ``errors.csv``::

    summary = relax_structures(["alloys.xyz", "slabs.extxyz"], "student.nequip.pt2", "relaxed/")
    summary.structures[0].energy, summary.structures[0].converged
    torchsim-distill relax alloys.xyz slabs.extxyz --model student.nequip.pt2 --out relaxed/

Screening-sized inputs (10⁴–10⁶ structures) are streamed: read lazily, relaxed in
chunks of ``chunk_size`` and stored as each chunk finishes (``.OUT.parts-KEY/`` beside
the output folder), so memory is bounded by a chunk and a killed run, started again
with the same arguments, relaxes only what it had not finished; the output files are
written from the stored chunks in input order at the end, identical to an uninterrupted
run's. A structure that fails a check or whose relaxation fails goes to ``errors.csv``
(file, frame, id, reason) and the rest run (``on_error="skip"``, the default), or stops
the run before any work (``"stop"``: all or nothing, nothing written).

A calculator with a committee and ``uncertainty`` on adds an ``uncertainty`` column
(eV/Å, the committee's force spread at the relaxed structure) and logs a warning
naming the structures above ``uncertainty_threshold``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from itertools import batched
from pathlib import Path
from typing import Any

# torch-sim's, nequip's and Warp's first imports, quietly (see torchsim_distill.utils.quiet)
import torchsim_distill.runtime  # noqa: F401

# isort: split
import torch
import torch_sim as ts
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from tqdm.auto import tqdm

from torchsim_distill.jobs.chunk_store import Chunk, ChunkStore, run_key
from torchsim_distill.jobs.relax_options import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE  # re-exported
from torchsim_distill.jobs.relax_options import ON_ERROR as ON_ERROR  # re-exported
from torchsim_distill.jobs.relax_options import UNCERTAINTY_THRESHOLD as UNCERTAINTY_THRESHOLD  # re-exported
from torchsim_distill.jobs.relax_options import RelaxOptions
from torchsim_distill.jobs.relax_outputs import (
    RESULT_COLUMNS,
    RelaxSummary,
    StructureError,
    StructureResult,
    write_outputs,
)
from torchsim_distill.jobs.structure_stream import (
    Item,
    RelaxInputError,
    check_paths,
    count_structures,
    iter_structures,
)
from torchsim_distill.models.registry import load_student
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.batching import group_by_pbc
from torchsim_distill.utils.progress import Progress

__all__ = [
    "RESULT_COLUMNS", "RelaxInputError", "RelaxOptions", "RelaxSummary", "StructureError", "StructureResult",
    "checked_input", "load_model", "read_structures", "relax_chunk", "relax_structures",
]

logger = logging.getLogger(__name__)

#: Default ``max_memory_scaler`` on CPU: torch-sim's ``n_atoms_x_density`` metric is
#: n_atoms × atoms/nm³, about 85 per atom for dense fcc metals, so this admits about
#: 2,000 such atoms per batch. A CPU is saturated well below that, so a larger batch
#: buys no speed, only memory (a few kB per edge for the forward/backward pass).
CPU_MAX_MEMORY_SCALER = 2.0e5
#: How often convergence is checked and finished structures are swapped out, in
#: optimizer steps (torch-sim's ``steps_between_swaps``).
STEPS_BETWEEN_CHECKS = 5


def relax_structures(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    model: str | Path | DistilledTorchSimCalc,
    out_dir: str | Path,
    *,
    options: RelaxOptions | dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    summary: bool | None = None,
    **overrides: Any,
) -> RelaxSummary:
    """Relax structures with FIRE, streamed in chunks, and write the results in input order.

    Structures are read lazily and relaxed ``options.chunk_size`` at a time (torch-sim's
    in-flight batching inside a chunk); each finished chunk is stored beside ``out_dir``, so a
    killed run started again with the same arguments relaxes only what it had not finished,
    and the final files are those of an uninterrupted run. Memory is bounded by a chunk.

    Args:
        structures: files ASE reads (every frame is used) and/or ``Atoms``.
        model: what :func:`load_model` takes: a student's name (``"default"``), a compiled
            ``.nequip.pt2``, a package or checkpoint (compiled on first use), or a
            :class:`DistilledTorchSimCalc`.
        out_dir: output folder; created, or its result files replaced.
        options: how to relax (:class:`RelaxOptions`: thresholds, cell filter, ``on_error``,
            ``chunk_size``, ``progress_every``; default: its defaults).
        device: where a model loaded here runs (a given calculator keeps its own).
        progress: show progress: a bar on a terminal, else a line every
            ``options.progress_every`` seconds on stderr (a batch job's log).
        summary: log a summary at the end (the CLI shows it); ``None``: with ``progress``.
        overrides: :class:`RelaxOptions` fields as keywords (``fmax=0.02, on_error="stop"``),
            on top of ``options``.

    Raises:
        RelaxInputError: (``on_error="stop"``) a structure that fails a check, naming it;
            in either mode, a folder given as a file or no input at all.
        FileNotFoundError: a structure file or the model file does not exist.
        ValueError: bad settings.
    """
    out_dir = Path(out_dir)
    options = RelaxOptions.of(options, **overrides)
    on_error = options.on_error
    _check_output(out_dir)
    items = check_paths(structures)
    calc = load_model(model, device, cell_filter=options.cell_filter, dispersion=options.dispersion,
                      functional=options.functional)
    checks = dict(known_elements=set(calc.species.species_to_type), need_cell=options.cell_filter is not None)
    if on_error == "stop":  # all or nothing: every structure checked before any work
        first = next((item for item in iter_structures(items, **checks) if item.error), None)
        if first is not None:
            raise RelaxInputError(first.error)
    chunk_size, uncertainty_threshold = options.chunk_size, options.uncertainty_threshold
    relaxation = options.relaxation()
    settings = dict(relaxation, chunk_size=chunk_size, on_error=on_error, uncertainty=calc.uncertainty,
                    dispersion=options.dispersion, functional=options.functional,
                    committee=[str(m.path) for m in getattr(calc.committee, "members", [])] if calc.uncertainty else [])
    store = ChunkStore.beside(out_dir, run_key(items, _model_id(model, calc), settings))
    total = count_structures(items)
    chunks = batched(iter_structures(items, **checks), chunk_size)
    n_done_before = 0
    stats = _RunStats()
    molecules: list[str] = []
    with Progress(total, verb="relaxed", unit="structures", enabled=progress, every=options.progress_every) as bar:
        warmup_time, n_chunks = None, 0
        for k, chunk in enumerate(chunks):
            n_chunks = k + 1
            if store.has(k):  # finished by an earlier, interrupted run
                n_done_before += len(chunk)
                bar.skip(len(chunk))
                continue
            if warmup_time is None:
                warmup_time = _warm_up(calc, chunk)
            molecules += [item.id for item in chunk if item.error is None and not item.atoms.pbc.any()]
            stored = relax_chunk(chunk, calc, relaxation, on_error=on_error,
                                 uncertainty_threshold=uncertainty_threshold)
            store.write(k, stored)
            stats.add(stored)
            bar.update(len(chunk))
    result = write_outputs(out_dir, store, n_chunks, stats.wall_time, warmup_time or 0.0, n_resumed=n_done_before,
                           n_here=stats.n, atom_steps=stats.atom_steps)
    store.remove()
    if molecules:
        from torchsim_distill.jobs.single_points import training_pbc_of, warn_if_outside_training_pbc

        warn_if_outside_training_pbc(training_pbc_of(model), molecules, str(model))
    if progress if summary is None else summary:
        logger.info(result.report())
    return result


def _check_output(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RelaxInputError(f"output {str(out_dir)!r} exists and is not a folder")


def _model_id(model: str | Path | DistilledTorchSimCalc, calc: DistilledTorchSimCalc) -> str | Path:
    """What identifies the model in the run key: its name or file, or a calculator's compiled file."""
    if isinstance(model, DistilledTorchSimCalc):
        return calc.artifact.path
    return model


def _warm_up(calc: DistilledTorchSimCalc, chunk: Sequence[Item]) -> float:
    """Seconds of one call on the chunk's first good structure: the first call in a process
    loads the compiled model's kernels (about a second), paid once, outside the throughput."""
    first = next((item.atoms for item in chunk if item.error is None), None)
    if first is None:
        return 0.0
    t0 = time.perf_counter()
    with _committee_off(calc):
        calc(ts.io.atoms_to_state([first], calc.device, calc.dtype))
    return time.perf_counter() - t0


@contextmanager
def _committee_off(calc: DistilledTorchSimCalc) -> Iterator[None]:
    """FIRE needs the main student only: the committee's members stay idle meanwhile."""
    with_uncertainty = calc.uncertainty
    calc.uncertainty = False
    try:
        yield
    finally:
        calc.uncertainty = with_uncertainty


def relax_chunk(
    chunk: Sequence[Item],
    calc: DistilledTorchSimCalc,
    options: dict,
    *,
    on_error: str = "skip",
    uncertainty_threshold: float = UNCERTAINTY_THRESHOLD,
) -> Chunk:
    """Relax the good structures of ``chunk`` in one batched run; failed checks become error
    rows. If the batched run raises (a structure the checks could not foresee), each
    structure is relaxed alone, so that only the one at fault goes to the errors
    (``on_error="stop"``: the error is raised)."""
    good = [item for item in chunk if item.error is None]
    errors = [StructureError.of(item) for item in chunk if item.error is not None]
    t0 = time.perf_counter()
    try:
        rows, relaxed = _relax_items(good, calc, options)
    except Exception as err:
        if on_error == "stop" or len(good) == 1:
            if on_error == "stop":
                raise
            rows, relaxed = [], []
            errors.append(StructureError.of(good[0], f"relaxation of {good[0].id} failed: {_one_line(err)}"))
        else:
            rows, relaxed = [], []
            for item in good:
                try:
                    one_row, one_atoms = _relax_items([item], calc, options)
                except Exception as one_err:
                    errors.append(StructureError.of(item, f"relaxation of {item.id} failed: {_one_line(one_err)}"))
                    continue
                rows += one_row
                relaxed += one_atoms
    if rows and calc.uncertainty:
        rows = _with_uncertainty(rows, relaxed, calc, uncertainty_threshold)
    errors.sort(key=lambda e: e.index)
    return Chunk(rows, relaxed, errors, time.perf_counter() - t0)


def _relax_items(items: Sequence[Item], calc: DistilledTorchSimCalc, options: dict) -> tuple[list, list[Atoms]]:
    """Rows and relaxed ``Atoms`` of ``items`` (all good), in their order; a non-finite result raises."""
    if not items:
        return [], []
    atoms_list = [item.atoms for item in items]
    with _committee_off(calc):
        finals, steps, converged = _relax_all(atoms_list, calc, progress=False, **options)
    rows, relaxed = [], []
    for item, state, n, c in zip(items, finals, steps, converged, strict=True):
        row, out_atoms = _result(item.id, item.atoms, state, n, c)
        if not (math.isfinite(row.energy) and math.isfinite(row.max_force)):
            raise FloatingPointError(f"structure {item.id} relaxed to a non-finite energy or force")
        rows.append(row)
        relaxed.append(out_atoms)
    return rows, relaxed


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class _RunStats:
    """What this process relaxed (a resumed run's throughput counts its own work only)."""

    def __init__(self) -> None:
        self.wall_time = 0.0
        self.n = 0
        self.atom_steps = 0

    def add(self, chunk: Chunk) -> None:
        self.wall_time += chunk.seconds
        self.n += len(chunk.rows) + len(chunk.errors)
        self.atom_steps += sum(r.n_atoms * r.steps for r in chunk.rows)


# -- input -------------------------------------------------------------------------


def checked_input(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    model: str | Path | DistilledTorchSimCalc,
    out_dir: Path,
    *,
    device: str,
    options: RelaxOptions,
) -> tuple[list[str], list[Atoms], DistilledTorchSimCalc]:
    """Every check a relaxation makes before any work (output folder, structures, model,
    elements), all or nothing, for callers that hold every structure in memory; the ids,
    structures and model. The settings are checked by :class:`RelaxOptions` itself.

    Raises:
        ValueError, RelaxInputError, FileNotFoundError: as :func:`relax_structures` with
        ``on_error="stop"``.
    """
    _check_output(out_dir)
    items = check_paths(structures)
    calc = load_model(model, device, cell_filter=options.cell_filter, dispersion=options.dispersion,
                      functional=options.functional)
    ids, atoms_list = [], []
    for item in iter_structures(items, known_elements=set(calc.species.species_to_type),
                                need_cell=options.cell_filter is not None):
        if item.error:
            raise RelaxInputError(item.error)
        ids.append(item.id)
        atoms_list.append(item.atoms)
    return ids, atoms_list, calc


def read_structures(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
) -> tuple[list[str], list[Atoms]]:
    """Read every frame of every file (and take ``Atoms`` as they are), with ids.

    Raises:
        FileNotFoundError: a path that is not a file.
        RelaxInputError: a file ASE cannot read or with no frames; no input at all.
    """
    ids: list[str] = []
    atoms_list: list[Atoms] = []
    for item in iter_structures(structures):
        if item.atoms is None:  # unreadable, or a file without structures
            raise RelaxInputError(item.error)
        ids.append(item.id)
        atoms_list.append(item.atoms)
    return ids, atoms_list


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


# -- relaxation ----------------------------------------------------------------------


def _relax_all(
    atoms_list: list[Atoms], calc: DistilledTorchSimCalc, *, progress: bool, **options
) -> tuple[list[ts.SimState], list[int], list[bool]]:
    """Relax every structure, one batched run per ``pbc`` (a SimState has one), and
    return final states, steps and convergence in input order."""
    finals: list[ts.SimState | None] = [None] * len(atoms_list)
    steps = [0] * len(atoms_list)
    converged = [False] * len(atoms_list)
    with tqdm(total=len(atoms_list), desc="relax", unit="structure", disable=not progress) as bar:
        for group in group_by_pbc(atoms_list):
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
    from torchsim_distill.runtime.uncertainty import committee_uncertainty

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
