"""Harmonic phonons of ONE model (any torch-sim ``ModelInterface``), and their acceptance gates.

Frame errors and elastic constants can look fine while the phonons are wrong (a student stiff
in shear has transverse acoustic branches too steep near Γ), so the acceptance suite measures
teacher and student through this same code and compares their frequencies::

    found = measure_phonons(model, [relaxed_cu, relaxed_cu3au])         # one batched force call
    found[0]["max_frequency"], found[0]["supercell"]                    # THz, [3, 3, 3]
    rows = phonon_rows(teacher_results, student_results, AcceptanceGates())
    band_structure_plots(teacher_results, student_results, "report/")   # phonons_<system>.png

How (phonopy's finite displacements, the frozen-phonon method):

1. The relaxed structure is reduced to its standard conventional cell (spglib), and phonopy
   finds the primitive cell ("auto").
2. The supercell is the conventional cell repeated ``n × n × n``, with the smallest ``n`` whose
   plane spacings all reach ``min_length`` Å (4 × 4 × 4, 256 atoms, for fcc Cu, Au and
   L1_2 Cu3Au at the default 14 Å). A message-passing teacher sees far (SevenNet-0: 5 layers
   × 5 Å): in 3 × 3 × 3 cells (10.9–12.5 Å) its folded force constants gave Au a spurious
   −0.13 THz mode near Γ and Cu a 5 % steeper TA branch, both gone at 4 × 4 × 4.
3. phonopy displaces symmetry-inequivalent atoms by ± ``displacement`` Å (central differences
   cancel the residual force of a not perfectly relaxed cell); the forces of every displaced
   supercell of every structure come from ONE batched model call.
4. Force constants ``Φ = −∂F/∂u`` are symmetrized (translational invariance), and the
   dynamical matrix gives frequencies (THz, imaginary ones as negative numbers) on a
   Γ-centred ``mesh`` of q-points (the whole grid, no symmetry reduction, so both models are
   compared at the same q-points whatever symmetry each one's relaxed cell shows), along
   the standard band path of the primitive cell (ASE's ``Cell.bandpath``, Setyawan–Curtarolo
   special points; offline), and as a density of states (tetrahedron method).

Units: Å, eV, amu, so frequencies come out in THz (1 THz ≈ 4.14 meV ≈ 33.4 cm⁻¹).
phonopy is an optional dependency (``pip install torchsim-distill[phonons]``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch_sim as ts
from ase import Atoms
from ase.cell import Cell
from torch_sim.models.interface import ModelInterface

from torchsim_distill.distill.acceptance_gates import AcceptanceGates, AcceptanceRow
from torchsim_distill.distill.model_card import CardSection

logger = logging.getLogger(__name__)

#: The key of a system's phonon measurement in the acceptance results.
KEY = "phonons"
#: File name of a system's band-structure plot in the report folder.
PLOT_NAME = "phonons_{system}.png"
#: Labels of the acceptance rows.
MAE_LABEL = "phonon frequency MAE (q-grid)"
MAX_LABEL = "highest phonon frequency"
MIN_LABEL = "lowest phonon frequency (imaginary < 0)"
#: Tolerance (fractional) of spglib's symmetry search on relaxed cells.
SYMPREC = 1e-3


def phonopy_available() -> bool:
    """Whether phonopy (the ``phonons`` extra) is installed."""
    try:
        import phonopy  # noqa: F401
    except ImportError:
        return False
    return True


def _require_phonopy() -> None:
    if not phonopy_available():
        raise ModuleNotFoundError(
            "phonons need phonopy, an optional dependency: pip install 'torchsim-distill[phonons]' (or pip install phonopy)"
        )


# -- cells ----------------------------------------------------------------------------------


def conventional_cell(atoms: Atoms, *, symprec: float = SYMPREC) -> Atoms:
    """The standard conventional cell of ``atoms`` (spglib's ``standardize_cell``): 4 atoms
    for fcc Cu or L1_2 Cu3Au, whatever supercell of them ``atoms`` is."""
    import spglib

    found = spglib.standardize_cell(
        (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), to_primitive=False, no_idealize=True,
        symprec=symprec,
    )
    if found is None:  # no symmetry found: the cell as given
        return Atoms(numbers=atoms.numbers, cell=atoms.cell.array, positions=atoms.positions, pbc=True)
    lattice, scaled, numbers = found
    return Atoms(numbers=numbers, cell=lattice, scaled_positions=scaled, pbc=True)


def supercell_repeat(cell: np.ndarray, min_length: float) -> int:
    """The smallest ``n`` for which every plane spacing of the ``n × n × n`` supercell,
    ``n · V / |a_j × a_k|``, is at least ``min_length`` Å."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    spacings = [volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return max(1, math.ceil(min_length / min(spacings) - 1e-9))


def _phonopy(unitcell: Atoms, n: int, displacement: float):
    """A Phonopy object for ``unitcell`` in an ``n × n × n`` supercell, displacements generated."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    cell = PhonopyAtoms(
        symbols=unitcell.get_chemical_symbols(), cell=unitcell.cell.array,
        scaled_positions=unitcell.get_scaled_positions(), masses=unitcell.get_masses(),
    )
    with warnings.catch_warnings():  # "auto" is what we want; phonopy warns that it is no longer v3's identity
        warnings.filterwarnings("ignore", message="primitive_matrix defaulted")
        phonon = Phonopy(cell, supercell_matrix=np.diag([n, n, n]), primitive_matrix="auto", symprec=SYMPREC)
    phonon.generate_displacements(distance=displacement, is_plusminus=True)
    return phonon


def _to_atoms(cell) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions,
                 masses=cell.masses, pbc=True)


def supercell_forces(model: ModelInterface, supercells: Sequence[Atoms], *, max_atoms: int = 20_000) -> list[np.ndarray]:
    """Forces (eV/Å, ``[n_atoms, 3]`` each) of many supercells, batched: as few model calls as
    ``max_atoms`` atoms per call allows (one for the default structures)."""
    out: list[np.ndarray] = []
    start = 0
    while start < len(supercells):
        stop, n = start, 0
        while stop < len(supercells) and (stop == start or n + len(supercells[stop]) <= max_atoms):
            n += len(supercells[stop])
            stop += 1
        chunk = list(supercells[start:stop])
        state = ts.io.atoms_to_state(chunk, model.device, model.dtype)
        forces = model(state)["forces"].detach().cpu().numpy().astype(float)
        ends = np.cumsum([len(a) for a in chunk])
        out += np.split(forces, ends[:-1])
        start = stop
    return out


# -- measuring ------------------------------------------------------------------------------


def measure_phonons(
    model: ModelInterface,
    structures: Sequence[Atoms],
    *,
    min_length: float = 14.0,
    displacement: float = 0.01,
    mesh: tuple[int, int, int] = (8, 8, 8),
    band_points: int = 100,
    dos_pitch: float = 0.05,
) -> list[dict[str, Any]]:
    """Harmonic phonons of each (relaxed, ordered) structure; see the module docstring.

    Args:
        model: the model; its forces are all this needs.
        structures: relaxed bulk crystals (any supercell of their conventional cell).
        min_length: Å, the supercell's smallest plane spacing reaches this.
        displacement: Å, phonopy's finite displacement (± each).
        mesh: the Γ-centred q-grid of the primitive cell.
        band_points: q-points along the band path (the path's special points included).
        dos_pitch: THz, spacing of the DOS's frequency points.

    Returns one strict-JSON-able dict per structure: ``supercell`` (the repeat of the
    conventional cell), ``conventional_atoms``, ``primitive_atoms``, ``supercell_atoms``,
    ``n_displacements``, ``mesh``, ``mesh_frequencies [n_q, 3·n_primitive]`` THz sorted per
    q, ``max_frequency`` / ``min_frequency`` THz over the mesh and the band path, ``band``
    (``x`` 1/Å along the path, ``special_x``, ``labels``, ``frequencies [n_points, n_bands]``
    THz), ``dos`` (``frequency`` THz, ``total`` states/THz per primitive cell).
    """
    _require_phonopy()
    phonons, supercells, owners = [], [], []
    for k, atoms in enumerate(structures):
        unit = conventional_cell(atoms)
        n = supercell_repeat(unit.cell.array, min_length)
        phonon = _phonopy(unit, n, displacement)
        phonons.append((unit, n, phonon))
        for cell in phonon.supercells_with_displacements:
            supercells.append(_to_atoms(cell))
            owners.append(k)
    forces = supercell_forces(model, supercells)
    logger.info("phonons: %d displaced supercells of %d structures", len(supercells), len(structures))
    results = []
    for k, (unit, n, phonon) in enumerate(phonons):
        phonon.forces = np.stack([f for f, owner in zip(forces, owners, strict=True) if owner == k])
        phonon.produce_force_constants(show_drift=False)
        phonon.symmetrize_force_constants(show_drift=False)
        results.append(_spectra(phonon, unit, n, mesh=mesh, band_points=band_points, dos_pitch=dos_pitch))
    return results


def _spectra(phonon, unit: Atoms, n: int, *, mesh, band_points: int, dos_pitch: float) -> dict[str, Any]:
    """Mesh frequencies, band structure and DOS of a Phonopy object with force constants."""
    phonon.run_mesh(list(mesh), is_gamma_center=True, is_mesh_symmetry=False)
    mesh_freqs = np.sort(phonon.get_mesh_dict()["frequencies"], axis=1)
    phonon.run_total_dos(freq_pitch=dos_pitch)
    dos = phonon.get_total_dos_dict()
    primitive = Cell(phonon.primitive.cell)
    path = primitive.bandpath(npoints=band_points)
    x, special_x, labels = path.get_linear_kpoint_axis()
    phonon.run_qpoints(path.kpts)
    band = np.sort(phonon.get_qpoints_dict()["frequencies"], axis=1)
    return {
        "supercell": [n, n, n],
        "conventional_atoms": len(unit),
        "primitive_atoms": len(phonon.primitive),
        "supercell_atoms": len(phonon.supercell),
        "n_displacements": len(phonon.supercells_with_displacements),
        "mesh": [int(m) for m in mesh],
        "mesh_frequencies": mesh_freqs.tolist(),
        # over the grid and the path: a dip between grid points (near Γ, say) is caught too
        "max_frequency": float(max(mesh_freqs.max(), band.max())),
        "min_frequency": float(min(mesh_freqs.min(), band.min())),
        "band": {"x": x.tolist(), "special_x": special_x.tolist(), "labels": list(labels), "frequencies": band.tolist()},
        "dos": {"frequency": dos["frequency_points"].tolist(), "total": dos["total_dos"].tolist()},
    }


# -- gates ------------------------------------------------------------------------------------


def phonon_rows(teacher: Mapping[str, Any], student: Mapping[str, Any], gates: AcceptanceGates) -> list[AcceptanceRow]:
    """Three gated rows per system with phonons on either side (a side missing fails them):

    - the frequency MAE over the q-grid, ``mean_{q,ν} |ω_s(q,ν) − ω_t(q,ν)|`` (branches
      sorted by frequency at each q), THz, at most ``gates.phonon_mae``;
    - the highest frequency, within ``gates.phonon_max_rel`` of the teacher's;
    - the lowest frequency: a mode below ``−gates.phonon_imaginary`` THz is imaginary; the
      student may have one only where the teacher has one.
    """
    rows = []
    names = [n for n, s in teacher["systems"].items() if KEY in s]
    names += [n for n, s in student["systems"].items() if KEY in s and n not in names]
    for name in names:
        t = teacher["systems"].get(name, {}).get(KEY)
        s = student["systems"].get(name, {}).get(KEY)
        mae = frequency_mae(t, s)
        rows.append(AcceptanceRow(
            MAE_LABEL, name, None, mae, None, "THz", f"student ≤ {gates.phonon_mae:g}",
            mae is not None and mae <= gates.phonon_mae,
        ))
        t_max, s_max = (p["max_frequency"] if p else None for p in (t, s))
        ok = t_max is not None and s_max is not None and abs(s_max - t_max) <= gates.phonon_max_rel * abs(t_max)
        rows.append(AcceptanceRow(
            MAX_LABEL, name, t_max, s_max, _diff(t_max, s_max), "THz", f"|Δ| ≤ {100 * gates.phonon_max_rel:g} %", ok,
        ))
        t_min, s_min = (p["min_frequency"] if p else None for p in (t, s))
        tol = gates.phonon_imaginary
        ok = t_min is not None and s_min is not None and (s_min >= -tol or t_min < -tol)
        rows.append(AcceptanceRow(
            MIN_LABEL, name, t_min, s_min, _diff(t_min, s_min), "THz",
            f"≥ −{tol:g} unless the teacher's is", ok,
        ))
    return rows


def frequency_mae(teacher: Mapping[str, Any] | None, student: Mapping[str, Any] | None) -> float | None:
    """THz: mean |Δω| over the q-grid and branches; None when a side is missing or the grids differ."""
    if not teacher or not student:
        return None
    t, s = np.asarray(teacher["mesh_frequencies"]), np.asarray(student["mesh_frequencies"])
    if t.shape != s.shape:
        return None
    return float(np.mean(np.abs(s - t)))


def _diff(t: float | None, s: float | None) -> float | None:
    return s - t if t is not None and s is not None else None


# -- plots ------------------------------------------------------------------------------------


def band_structure_plots(teacher: Mapping[str, Any], student: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """One PNG per system with phonons on both sides: teacher's and student's band structures
    side by side (the other's faint behind each) and both DOS; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, t_sys in teacher["systems"].items():
        t, s = t_sys.get(KEY), student["systems"].get(name, {}).get(KEY)
        if not t or not s:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(11, 4), sharey=True, gridspec_kw={"width_ratios": [3, 3, 1]})
        top = 1.05 * max(t["max_frequency"], s["max_frequency"])
        bottom = min(0.0, t["min_frequency"], s["min_frequency"]) - 0.02 * top
        for ax, (own, other, title, color) in zip(
            axes[:2], ((t, s, "teacher", "C0"), (s, t, "student", "C3")), strict=True
        ):
            for band, col, lw in ((other["band"], "0.8", 0.8), (own["band"], color, 1.2)):
                for x, f in _segments(band):
                    ax.plot(x, f, color=col, lw=lw)
            ticks, labels = _ticks(own["band"])
            for xs in ticks:
                ax.axvline(xs, color="0.5", lw=0.5)
            ax.set_xticks(ticks, labels)
            ax.set_xlim(own["band"]["x"][0], own["band"]["x"][-1])
            ax.axhline(0.0, color="0.5", lw=0.5)
            ax.set_title(f"{name}: {title}")
        axes[0].set_ylabel("frequency (THz)")
        axes[0].set_ylim(bottom, top)
        for p, label, color in ((t, "teacher", "C0"), (s, "student", "C3")):
            axes[2].plot(p["dos"]["total"], p["dos"]["frequency"], color=color, label=label)
        axes[2].set_xlabel("DOS")
        axes[2].legend(fontsize="small")
        mae = frequency_mae(t, s)
        fig.suptitle(f"{name}: supercell {'×'.join(map(str, t['supercell']))} of the conventional cell"
                     + (f", MAE {mae:.3f} THz" if mae is not None else ""))
        fig.tight_layout()
        path = out_dir / PLOT_NAME.format(system=_file_safe(name))
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _label(label: str) -> str:
    return "Γ" if label in ("G", "Gamma") else label


def _segments(band: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The band path's continuous pieces: a jump in the path (``…K|U…``) repeats its x."""
    x, f = np.asarray(band["x"]), np.asarray(band["frequencies"])
    cuts = np.flatnonzero(np.diff(x) == 0) + 1
    return list(zip(np.split(x, cuts), np.split(f, cuts), strict=True))


def _ticks(band: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """Special points' positions and labels, a jump's two labels joined as ``K|U``."""
    ticks: list[float] = []
    labels: list[str] = []
    for xs, label in zip(band["special_x"], band["labels"], strict=True):
        if ticks and abs(xs - ticks[-1]) < 1e-9:
            labels[-1] += "|" + _label(label)
        else:
            ticks.append(xs)
            labels.append(_label(label))
    return ticks, labels


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def phonon_section(spectra: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> CardSection | None:
    """The card's phonon part: band-structure plots written to ``out_dir`` (the report folder)
    and, per system, the supercell used. ``spectra`` is an acceptance report's ``phonons``
    (``{"teacher"|"student": {system: spectra}}``); None when no system has phonons. The gated
    rows themselves are in the acceptance table."""
    teacher = {"systems": {n: {KEY: p} for n, p in spectra.get("teacher", {}).items()}}
    student = {"systems": {n: {KEY: p} for n, p in spectra.get("student", {}).items()}}
    if not teacher["systems"]:
        return None
    plots = band_structure_plots(teacher, student, out_dir)
    data = {
        name: {
            "supercell": p["supercell"], "supercell_atoms": p["supercell_atoms"], "mesh": p["mesh"],
            "teacher_max_frequency": p["max_frequency"],
            "student_max_frequency": student["systems"].get(name, {}).get(KEY, {}).get("max_frequency"),
            "mae": frequency_mae(p, student["systems"].get(name, {}).get(KEY)),
            "plot": next((path.name for path in plots if path.name == PLOT_NAME.format(system=_file_safe(name))), None),
        }
        for name, p in spectra["teacher"].items()
    }
    return CardSection("phonons", "Phonons: teacher vs student", data, phonon_summary(teacher, plots))


def phonon_summary(teacher: Mapping[str, Any], plots: Sequence[Path] = ()) -> list[str]:
    """Markdown lines for the card: which supercell each system used, and its plots."""
    lines = [
        (
            "Harmonic phonons (phonopy, ± finite displacements, forces of all displaced supercells batched), "
            "each model at its own relaxed cell; highest and lowest frequencies over the q-grid and the band path."
        ),
        "",
    ]
    for name, t_sys in teacher["systems"].items():
        p = t_sys.get(KEY)
        if p:
            lines.append(
                f"- {name}: {'×'.join(map(str, p['supercell']))} supercell of the {p['conventional_atoms']}-atom "
                f"conventional cell ({p['supercell_atoms']} atoms, {p['n_displacements']} displaced supercells), "
                f"{'×'.join(map(str, p['mesh']))} q-grid of the {p['primitive_atoms']}-atom primitive cell."
            )
    lines += ["", *(f"![{path.stem}]({path.name})" for path in plots)]
    return lines
