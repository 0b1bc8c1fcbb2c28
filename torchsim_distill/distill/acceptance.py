"""Property acceptance suite: teacher and student measured by the same code, side by side, gated.

The teacher's side is cached as JSON in ``cache_dir`` (keyed by the seeds, the options and
the teacher), so a resumed run measures only the student::

    report = acceptance_suite(student_calc, "emt", [phase("Cu"), phase("Au"), phase("Cu3Au")], cache_dir=run_dir)
    report.passed, [r.property for r in report.failures]
    card["acceptance"], markdown = report.to_dict(), report.to_markdown()

Properties (see :mod:`torchsim_distill.distill.properties` for each formula): energy and
volume per atom after relaxation, Birch–Murnaghan bulk modulus, cubic C11/C12/C44,
formation energies relative to the pure-element seeds (gated as mixing energies for random
alloys), vacancy formation energies of elemental seeds, surface energies of elemental
slabs, extensivity, NVE energy drift, hot-MD closest approach and the Jensen–Shannon divergence of the pair-distance
distributions from short NVE MD, and harmonic phonons of the ordered bulk seeds (with phonopy
installed; see :mod:`.phonons`). What passes is decided in :mod:`.acceptance_gates`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from torch_sim.models.interface import ModelInterface

from torchsim_distill.distill import phonons as ph
from torchsim_distill.distill import properties as props
from torchsim_distill.distill.acceptance_gates import AcceptanceGates, AcceptanceRow, compare
from torchsim_distill.distill.crystals import same_crystal_groups
from torchsim_distill.distill.sampling import SamplingOptions
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.utils.atoms_info import RANDOM_ALLOY_KEY
from torchsim_distill.utils.files import write_text_atomic
from torchsim_distill.utils.jsonable import jsonable

logger = logging.getLogger(__name__)

#: Bumped when what a cached teacher file holds (or how it is measured) changes.
CACHE_VERSION = 3  # 2: surface energies; 3: phonons
CACHE_PREFIX = "acceptance-teacher-"


@dataclass(frozen=True)
class AcceptanceOptions:
    """How the properties are measured (frozen; part of the teacher cache key).

    Attributes:
        relax_fmax: FIRE force (and cell-force) tolerance, eV/Å.
        relax_max_steps: FIRE step limit of every relaxation.
        eos_volume_range: EOS volumes span ``V₀·(1 ± eos_volume_range)``.
        eos_points: number of EOS volumes.
        elastic_strain: ± strain of the stress–strain finite differences.
        vacancy_min_atoms: elemental cells are repeated to at least this many atoms
            before an atom is removed.
        extensivity_repeat: the k-fold supercell of the extensivity check.
        extensivity_rattle: Gaussian displacement (Å) of its cells.
        md_timestep: MD time step, fs.
        md_temperature: K, initial Maxwell–Boltzmann temperature of the NVE runs (drift
            and RDF); a crystal equilibrates near half of it.
        nve_steps: NVE steps (drift fit and RDF snapshots).
        md_stride: steps between MD snapshots.
        sampling_temperatures: the distillation's NVT sampling temperatures, K.
        hot_factor: hot NVT Langevin MD runs at ``hot_factor × max(sampling_temperatures)``.
        hot_steps: hot-MD steps.
        rdf_r_max: pair distances up to this (Å) enter the RDF histogram.
        rdf_bins: its number of bins.
        random_seed: seeds the MD velocities and the extensivity rattle (both sides alike).
        phonons: measure harmonic phonons (needs phonopy; skipped, and said so, without it)
            of the ordered bulk seeds (not random alloys) whose conventional cell has at
            most ``phonon_max_atoms`` atoms; see :mod:`.phonons`.
        phonon_min_length: Å, the phonon supercell (``n × n × n`` conventional cells) has
            every plane spacing at least this: 4 × 4 × 4 (256 atoms) for fcc Cu, Au, Cu3Au
            (3 × 3 × 3 is too small for SevenNet-0's reach; see :mod:`.phonons`).
        phonon_displacement: Å, phonopy's ± finite displacement.
        phonon_mesh: the Γ-centred q-grid of the primitive cell the frequencies are compared on.
        phonon_band_points: q-points along the band path of the plots.
        phonon_max_atoms: larger conventional cells are left out (their displaced supercells
            grow as atoms × directions).
        merge_same_crystals: seeds that are one crystal in different supercells (or
            translated, or with their atoms in another order; see :mod:`.crystals`) are
            measured once, on the smallest cubic one (else the smallest), and the report
            says which were merged; every property is the same for all of them, and each
            copy multiplied the teacher's cost. Not part of the cache key (the measured
            seeds are).
    """

    relax_fmax: float = 0.002
    relax_max_steps: int = 500
    eos_volume_range: float = 0.06
    eos_points: int = 7
    elastic_strain: float = 0.005
    vacancy_min_atoms: int = 24
    extensivity_repeat: tuple[int, int, int] = (2, 1, 1)
    extensivity_rattle: float = 0.05
    md_timestep: float = 2.0
    md_temperature: float = 600.0
    nve_steps: int = 500
    md_stride: int = 10
    sampling_temperatures: tuple[float, ...] = SamplingOptions.temperatures
    hot_factor: float = 1.5
    hot_steps: int = 200
    rdf_r_max: float = 6.0
    rdf_bins: int = 120
    random_seed: int = 0
    phonons: bool = True
    phonon_min_length: float = 14.0
    phonon_displacement: float = 0.01
    phonon_mesh: tuple[int, int, int] = (8, 8, 8)
    phonon_band_points: int = 100
    phonon_max_atoms: int = 8
    merge_same_crystals: bool = True

    def __post_init__(self) -> None:
        for name in ("extensivity_repeat", "sampling_temperatures", "phonon_mesh"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def hot_temperature(self) -> float:
        """K: ``hot_factor × max(sampling_temperatures)``."""
        return self.hot_factor * max(self.sampling_temperatures)


@dataclass
class AcceptanceReport:
    """Rows, timings and the settings of one acceptance run.

    Attributes:
        rows: one per (property, system), in property order.
        teacher_seconds: seconds the teacher's side took when it was measured.
        student_seconds: seconds the student's side took.
        seconds: wall time of this call (teacher side included unless cached).
        teacher_cached: the teacher's side was read from the cache.
        skipped: systems left out, with the reason.
        merged: per measured system, the seeds that are the same crystal and were not
            measured again (``{"Si": ["Si#2", "Si#3"]}``).
        errors: measurements that raised, ``"side: what" → message``.
        phonons: the phonon spectra behind the phonon rows, ``{"teacher"|"student": {system:
            spectra}}`` (see :func:`.phonons.measure_phonons`), for the band-structure plots;
            not in :meth:`to_dict` (the teacher cache keeps the teacher's).
    """

    rows: list[AcceptanceRow]
    teacher_seconds: float
    student_seconds: float
    seconds: float
    teacher_cached: bool
    options: AcceptanceOptions
    gates: AcceptanceGates
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    merged: dict[str, list[str]] = field(default_factory=dict)
    phonons: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def failures(self) -> list[AcceptanceRow]:
        return [r for r in self.rows if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able: ``json.dumps(report.to_dict(), allow_nan=False)`` works."""
        out = jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "phonons"})
        out.update(passed=self.passed, n_failures=len(self.failures), hot_temperature=self.options.hot_temperature)
        return out  # type: ignore[return-value]

    def to_markdown(self) -> str:
        """A section for the model card: teacher and student side by side, ✓/✗ per gate."""
        cached = " (cached from an earlier run)" if self.teacher_cached else ""
        n_ok = len(self.rows) - len(self.failures)
        lines = [
            "## Property acceptance",
            "",
            f"{n_ok}/{len(self.rows)} gates passed. Took {self.seconds:.1f} s: teacher side "
            f"{self.teacher_seconds:.1f} s{cached}, student side {self.student_seconds:.1f} s.",
            "",
            "| property | system | teacher | student | Δ | unit | gate | |",
            "|---|---|---:|---:|---:|---|---|:-:|",
        ]
        for r in self.rows:
            cells = (
                r.property, r.system, _fmt(r.teacher), _fmt(r.student), _fmt(r.difference, signed=True),
                r.unit, r.gate, "✓" if r.passed else "✗",
            )
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if self.merged:
            same = "; ".join(f"{', '.join(copies)} as {name}" for name, copies in self.merged.items())
            lines += ["", f"Measured once (the same crystal in another supercell): {same}."]
        for label, items in (("Skipped", self.skipped), ("Errors", self.errors)):
            if items:
                lines += ["", f"{label}: " + "; ".join(f"{k}: {v}" for k, v in items.items())]
        return "\n".join(lines) + "\n"


def _fmt(x: float | None, *, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


# -- the suite ------------------------------------------------------------------------------


def acceptance_suite(
    student: ModelInterface | BaseCalculator | str | Path,
    teacher: ModelInterface | BaseCalculator | str | Path,
    seeds: Sequence[Atoms],
    *,
    options: AcceptanceOptions | None = None,
    gates: AcceptanceGates | None = None,
    cache_dir: str | Path | None = None,
    teacher_id: str | None = None,
) -> AcceptanceReport:
    """Measure every property with teacher and student and gate the student.

    Args:
        student, teacher: anything :func:`~torchsim_distill.distill.teachers.load_teacher`
            takes (a torch-sim model, an ASE calculator, ``"emt"``, a ``.nequip.pt2`` path).
        seeds: the structures; fully periodic ones are used (others are skipped), bulk
            ones (no vacuum) for the equilibrium properties; those whose ``info`` has
            ``random_alloy`` set are random alloys (see :mod:`.acceptance_gates`).
        options, gates: defaults :class:`AcceptanceOptions`, :class:`AcceptanceGates`.
        cache_dir: where the teacher's measurements are cached as JSON (None: not cached).
        teacher_id: names the teacher in the cache key; default: its name or path, or
            its class (and an ASE calculator's class and parameters).
    """
    options = options or AcceptanceOptions()
    gates = gates or AcceptanceGates()
    t0 = time.perf_counter()
    names, used, skipped, merged = _select(seeds, merge=options.merge_same_crystals)
    used_seeds = [seeds[i] for i in used]
    disordered = {name for name, i in zip(names, used, strict=True) if seeds[i].info.get(RANDOM_ALLOY_KEY)}
    teacher_results, cached = teacher_properties(teacher, seeds, options=options, cache_dir=cache_dir, teacher_id=teacher_id)
    student_results = measure_properties(load_teacher(student), used_seeds, names=names, options=options)
    errors = {f"teacher: {k}": v for k, v in teacher_results["errors"].items()}
    errors.update({f"student: {k}": v for k, v in student_results["errors"].items()})
    if options.phonons and not ph.phonopy_available():
        skipped["phonons"] = "phonopy is not installed (pip install 'torchsim-distill[phonons]')"
    report = AcceptanceReport(
        rows=compare(teacher_results, student_results, gates, disordered=disordered)
        + ph.phonon_rows(teacher_results, student_results, gates),
        teacher_seconds=teacher_results["seconds"], student_seconds=student_results["seconds"],
        seconds=time.perf_counter() - t0, teacher_cached=cached, options=options, gates=gates,
        skipped=skipped, errors=errors, merged=merged, phonons={
            side: {n: s[ph.KEY] for n, s in r["systems"].items() if ph.KEY in s}
            for side, r in (("teacher", teacher_results), ("student", student_results))
        },
    )
    logger.info(
        "acceptance: %d/%d gates passed in %.1f s", len(report.rows) - len(report.failures), len(report.rows), report.seconds
    )
    return report


def teacher_properties(
    teacher: ModelInterface | BaseCalculator | str | Path,
    seeds: Sequence[Atoms],
    *,
    options: AcceptanceOptions | None = None,
    cache_dir: str | Path | None = None,
    teacher_id: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """The teacher's side of :func:`acceptance_suite` (arguments as there), measured or read
    from its cache, and whether it was read. Called ahead of a distillation, it measures a slow
    teacher while the student trains."""
    options = options or AcceptanceOptions()
    names, used, _, _ = _select(seeds, merge=options.merge_same_crystals)
    used_seeds = [seeds[i] for i in used]
    if not used_seeds:
        raise ValueError("no fully periodic seed structure to measure")
    key = cache_key(used_seeds, options, teacher_id or _describe(teacher))
    path = Path(cache_dir) / f"{CACHE_PREFIX}{key[:16]}.json" if cache_dir is not None else None
    results = _read_cache(path)
    if results is not None:
        logger.info("acceptance: teacher properties read from %s", path)
        return _renamed(results, names), True
    results = measure_properties(load_teacher(teacher), used_seeds, names=names, options=options)
    if path is not None:
        _write_cache(path, results)
    return results, False


def _select(
    seeds: Sequence[Atoms], *, merge: bool = True
) -> tuple[list[str], list[int], dict[str, str], dict[str, list[str]]]:
    """Unique system names of the fully periodic seeds to measure, their indices, the
    skipped ones, and (``merge``) the seeds left out as the same crystal as a measured one."""
    names, used, skipped, seen, all_names = [], [], {}, {}, []
    for atoms in seeds:
        base = str(atoms.info.get("name") or atoms.symbols.formula.reduce()[0].format("metal"))
        seen[base] = seen.get(base, 0) + 1
        all_names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    periodic = []
    for i, atoms in enumerate(seeds):
        if all(atoms.pbc) and atoms.cell.rank == 3:
            periodic.append(i)
        else:
            skipped[all_names[i]] = "not periodic in 3D"
    groups = same_crystal_groups([seeds[i] for i in periodic]) if merge else [[k] for k in range(len(periodic))]
    chosen: dict[int, list[int]] = {}
    for group in groups:
        members = [periodic[k] for k in group]
        # the cheapest copy that still shows the cubic elastic constants
        keep = min(members, key=lambda i: (not props.is_cubic(seeds[i]), len(seeds[i]), i))
        chosen[keep] = [i for i in members if i != keep]
    merged = {}
    for i in sorted(chosen):
        names.append(all_names[i])
        used.append(i)
        if chosen[i]:
            merged[all_names[i]] = [all_names[j] for j in chosen[i]]
    return names, used, skipped, merged


def cache_key(seeds: Sequence[Atoms], options: AcceptanceOptions, teacher_id: str) -> str:
    """sha256 of the seeds (numbers, positions, cell, pbc), the options and the teacher."""
    measured = {k: v for k, v in jsonable(options).items() if k != "merge_same_crystals"}  # the seeds say it
    payload = {
        "version": CACHE_VERSION,
        "teacher": teacher_id,
        "options": measured,
        "seeds": [
            [a.numbers.tolist(), a.positions.tolist(), a.cell.array.tolist(), [bool(p) for p in a.pbc]] for a in seeds
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _describe(model: object) -> str:
    """A teacher's identity for the cache key: its name or path, else its (calculator's) class."""
    if isinstance(model, str | Path):
        return str(model)
    calc = model if isinstance(model, BaseCalculator) else getattr(model, "calculator", None)
    if calc is not None:
        return f"{type(calc).__module__}.{type(calc).__name__}{json.dumps(jsonable(getattr(calc, 'parameters', {})), sort_keys=True)}"
    return f"{type(model).__module__}.{type(model).__name__}"


def _read_cache(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("acceptance: ignoring unreadable teacher cache %s: %s", path, err)
        return None
    return data if data.get("version") == CACHE_VERSION else None


def _renamed(results: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Cached results under today's system names. The cache is keyed by the structures, not
    their names (``info["name"]`` may be added or corrected later without re-measuring a
    teacher for an hour): its systems are stored in the seeds' order, so they take the
    names of the same seeds now."""
    systems = results.get("systems", {})
    if list(systems) == list(names) or len(systems) != len(names):
        return results
    renamed = dict(zip(names, systems.values(), strict=True))
    errors = results.get("errors") or {}
    old_to_new = dict(zip(systems, names, strict=True))
    if isinstance(errors, dict):
        errors = {old_to_new.get(k, k): v for k, v in errors.items()}
    return {**results, "systems": renamed, "errors": errors}


def _write_cache(path: Path, results: dict[str, Any]) -> None:
    """Write atomically (a temporary file renamed), so an interrupted run leaves no half file."""
    write_text_atomic(path, json.dumps(results, allow_nan=False))


# -- measuring one model ---------------------------------------------------------------------


def measure_properties(
    model: ModelInterface, seeds: Sequence[Atoms], *, names: Sequence[str], options: AcceptanceOptions
) -> dict[str, Any]:
    """Every property of one model on fully periodic ``seeds`` (strict-JSON-able).

    Returns ``{"version", "seconds", "systems": {name: {property: value}}, "errors"}``;
    values are floats in the units of :data:`PROPERTIES` (None where a measurement
    failed), plus ``"shortest_bond"`` (Å, relaxed) and ``"rdf"`` (the histogram).
    """
    t0 = time.perf_counter()
    systems: dict[str, dict[str, Any]] = {name: {} for name in names}
    errors: dict[str, str] = {}

    def attempt(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as err:  # one failed measurement must not hide the others
            logger.warning("acceptance: %s failed: %s", what, err, exc_info=True)
            errors[what] = f"{type(err).__name__}: {err}"

    bulk = [i for i, a in enumerate(seeds) if props.is_bulk(a)]
    relaxed: dict[int, props.Relaxed] = {}
    attempt("relax", lambda: relaxed.update(_relax_all(model, seeds, bulk, options)))
    for i, r in relaxed.items():
        systems[names[i]]["shortest_bond"] = props.shortest_bond(r.atoms)
        if i in bulk:
            systems[names[i]].update(energy_per_atom=r.energy_per_atom, volume_per_atom=r.volume_per_atom)
    bulk_relaxed = {i: relaxed[i] for i in bulk if i in relaxed}
    attempt("eos", lambda: _eos(model, bulk_relaxed, names, systems, options))
    attempt("elastic", lambda: _elastic(model, seeds, bulk_relaxed, names, systems, options))
    attempt("vacancy", lambda: _vacancy_energies(model, bulk_relaxed, names, systems, options))
    attempt("formation", lambda: _formation(bulk_relaxed, names, systems))
    attempt("surface", lambda: _surfaces(relaxed, bulk_relaxed, names, systems))
    attempt("extensivity", lambda: _extensivity(model, seeds, names, systems, options))
    # MD starts from this model's own relaxed structures (the seeds where relaxation failed)
    starts = [relaxed[i].atoms if i in relaxed else seeds[i] for i in range(len(seeds))]
    attempt("nve", lambda: _nve(model, starts, names, systems, options))
    attempt("hot md", lambda: _hot_md(model, starts, names, systems, options))
    if options.phonons and ph.phonopy_available():
        attempt("phonons", lambda: _phonons(model, seeds, bulk_relaxed, names, systems, options))
    seconds = time.perf_counter() - t0
    logger.info("acceptance: measured %d systems in %.1f s", len(seeds), seconds)
    return jsonable({"version": CACHE_VERSION, "seconds": seconds, "systems": systems, "errors": errors})  # type: ignore[return-value]


def _relax_all(
    model: ModelInterface, seeds: Sequence[Atoms], bulk: list[int], options: AcceptanceOptions
) -> dict[int, props.Relaxed]:
    """Bulk seeds with their cell (Fréchet filter), the others (slabs) at fixed cell."""
    out: dict[int, props.Relaxed] = {}
    other = [i for i in range(len(seeds)) if i not in bulk]
    for idx, cell in ((bulk, True), (other, False)):
        found = props.relax(
            model, [seeds[i] for i in idx], cell=cell, fmax=options.relax_fmax, max_steps=options.relax_max_steps
        )
        out.update(zip(idx, found, strict=True))
    return out


def _eos(model, relaxed: dict[int, props.Relaxed], names, systems, options: AcceptanceOptions) -> None:
    fits = props.equation_of_state(
        model, [r.atoms for r in relaxed.values()], volume_range=options.eos_volume_range, n_points=options.eos_points
    )
    for i, fit in zip(relaxed, fits, strict=True):
        systems[names[i]]["bulk_modulus"] = fit.bulk_modulus


def _elastic(model, seeds, relaxed: dict[int, props.Relaxed], names, systems, options: AcceptanceOptions) -> None:
    """Cubic seeds (decided on the seed, so both sides measure the same systems)."""
    cubic = [i for i in relaxed if props.is_cubic(seeds[i])]
    constants = props.cubic_elastic_constants(
        model, [relaxed[i].atoms for i in cubic], strain=options.elastic_strain,
        fmax=options.relax_fmax, max_steps=options.relax_max_steps,
    )
    for i, c in zip(cubic, constants, strict=True):
        systems[names[i]].update(c)


def _vacancy_energies(model, relaxed: dict[int, props.Relaxed], names, systems, options: AcceptanceOptions) -> None:
    """Elemental seeds only: for a compound, (N−1)/N·E(N) is no reference (chemical potentials)."""
    elemental = [i for i, r in relaxed.items() if len(set(r.atoms.numbers)) == 1]
    energies = props.vacancy_formation_energies(
        model, [relaxed[i].atoms for i in elemental], min_atoms=options.vacancy_min_atoms,
        fmax=options.relax_fmax, max_steps=options.relax_max_steps,
    )
    for i, e in zip(elemental, energies, strict=True):
        systems[names[i]]["vacancy_formation_energy"] = e


def _references(bulk: dict[int, props.Relaxed]) -> dict[str, float]:
    """Each element's relaxed energy per atom: the lowest of its elemental bulk seeds."""
    references: dict[str, float] = {}
    for r in bulk.values():
        symbols = set(r.atoms.get_chemical_symbols())
        if len(symbols) == 1:
            (s,) = symbols
            references[s] = min(references.get(s, math.inf), r.energy_per_atom)
    return references


def _formation(relaxed: dict[int, props.Relaxed], names, systems) -> None:
    """Compounds whose every element has an elemental seed (the lowest one per element is the reference)."""
    references = _references(relaxed)
    for i, r in relaxed.items():
        symbols = set(r.atoms.get_chemical_symbols())
        if len(symbols) > 1 and symbols <= set(references):
            systems[names[i]]["formation_energy"] = props.formation_energy(r.atoms, r.energy, references)


def _surfaces(relaxed: dict[int, props.Relaxed], bulk: dict[int, props.Relaxed], names, systems) -> None:
    """Elemental slabs (relaxed at their cell) whose element has an elemental bulk seed."""
    references = _references(bulk)
    for i, r in relaxed.items():
        symbols = set(r.atoms.get_chemical_symbols())
        if i not in bulk and len(symbols) == 1 and symbols <= set(references) and len(props.vacuum_axes(r.atoms)) == 1:
            systems[names[i]]["surface_energy"] = props.surface_energy(r.atoms, r.energy, references[symbols.pop()])


def _extensivity(model, seeds, names, systems, options: AcceptanceOptions) -> None:
    errors = props.extensivity_errors(
        model, seeds, repeat=options.extensivity_repeat, rattle=options.extensivity_rattle, seed=options.random_seed
    )
    for name, e in zip(names, errors, strict=True):
        systems[name]["extensivity_error"] = e


def _nve(model, starts, names, systems, options: AcceptanceOptions) -> None:
    """NVE from the relaxed structures: the drift, and the pair-distance histogram of its snapshots."""
    run = props.run_md(
        model, starts, ensemble="nve", temperature=options.md_temperature, timestep=options.md_timestep,
        steps=options.nve_steps, stride=options.md_stride, seed=options.random_seed,
    )
    drifts = props.energy_drift(run.times, run.total_energy)
    for name, drift, frames in zip(names, np.atleast_1d(drifts), run.frames, strict=True):
        systems[name]["nve_drift"] = float(drift)
        systems[name]["rdf"] = props.pair_distance_histogram(frames, r_max=options.rdf_r_max, bins=options.rdf_bins)


def _hot_md(model, starts, names, systems, options: AcceptanceOptions) -> None:
    run = props.run_md(
        model, starts, ensemble="nvt_langevin", temperature=options.hot_temperature, timestep=options.md_timestep,
        steps=options.hot_steps, stride=options.md_stride, seed=options.random_seed,
    )
    for name, frames in zip(names, run.frames, strict=True):
        systems[name]["hot_md_min_distance"] = props.min_pair_distance(frames)


def _phonons(model, seeds, relaxed: dict[int, props.Relaxed], names, systems, options: AcceptanceOptions) -> None:
    """Ordered bulk seeds (decided on the seed, so both sides measure the same systems) with a
    conventional cell of at most ``phonon_max_atoms`` atoms, each at this model's own relaxed cell."""
    chosen = [
        i for i in relaxed
        if not seeds[i].info.get(RANDOM_ALLOY_KEY) and len(ph.conventional_cell(seeds[i])) <= options.phonon_max_atoms
    ]
    found = ph.measure_phonons(
        model, [relaxed[i].atoms for i in chosen], min_length=options.phonon_min_length,
        displacement=options.phonon_displacement, mesh=options.phonon_mesh, band_points=options.phonon_band_points,
    )
    for i, spectra in zip(chosen, found, strict=True):
        systems[names[i]][ph.KEY] = spectra
