"""How the acceptance suite judges: the gated properties, their tolerances, and the rows
that put teacher and student side by side (:mod:`~torchsim_distill.distill.acceptance`
measures them)::

    rows = compare(teacher_results, student_results, AcceptanceGates(mixing_energy=0.003), disordered={"Au15Cu17"})
    [r for r in rows if not r.passed]
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from torchsim_distill.distill import properties as props


@dataclass(frozen=True)
class AcceptanceGates:
    """Pass criteria (defaults: the default Cu–Au student's targets where they exist).

    Attributes:
        energy_per_atom: |Δ| of the relaxed energy per atom, eV/atom.
        volume_rel: |ΔV| / V_teacher of the relaxed volume per atom.
        modulus_rel, modulus_abs: C11, C12, C44 and the bulk modulus pass within
            ``max(modulus_rel·|teacher|, modulus_abs GPa)``.
        formation_energy: |Δ| of formation energies of ordered compounds, eV/atom.
        mixing_energy: |Δ| of mixing energies (formation energies of random alloys, the
            seeds :func:`~torchsim_distill.models.cu_au.random_alloy` tags), eV/atom: the
            small differences a screening of compositions ranks by.
        vacancy_formation: |Δ| of vacancy formation energies, eV.
        surface_rel: |Δγ| / γ_teacher of surface energies (elemental slabs).
        nve_drift: the student's |NVE drift|, eV/atom/ns.
        min_distance_fraction: the student's hot-MD closest approach must stay above this
            fraction of the shortest bond of the teacher-relaxed seed.
        extensivity: the student's extensivity error, eV/atom.
        rdf_js: the JS divergence of student and teacher pair-distance distributions, nats.
        phonon_mae: THz, the student's phonon frequency MAE over the q-grid (foundation
            models report about 0.2 THz against DFT); see :mod:`.phonons`.
        phonon_max_rel: relative error of the highest phonon frequency.
        phonon_imaginary: THz; a frequency below minus this is an imaginary mode, allowed
            in the student only where the teacher has one.
    """

    energy_per_atom: float = 0.01
    volume_rel: float = 0.005
    modulus_rel: float = 0.10
    modulus_abs: float = 5.0
    formation_energy: float = 0.005
    mixing_energy: float = 0.003
    vacancy_formation: float = 0.1
    surface_rel: float = 0.10
    nve_drift: float = 0.01
    min_distance_fraction: float = 0.6
    extensivity: float = 1e-3
    rdf_js: float = 0.02
    phonon_mae: float = 0.2
    phonon_max_rel: float = 0.05
    phonon_imaginary: float = 0.1


@dataclass(frozen=True)
class AcceptanceRow:
    """One gated property of one system (values in ``unit``; None where not measured)."""

    property: str
    system: str
    teacher: float | None
    student: float | None
    difference: float | None
    unit: str
    gate: str
    passed: bool


#: key → (label, unit, gate kind), in report order. Kinds: ``abs`` |Δ| ≤ tol; ``rel``
#: |Δ| ≤ tol·|teacher|; ``modulus`` |Δ| ≤ max(rel·|teacher|, abs); ``max`` |student| ≤ tol;
#: ``min`` student ≥ fraction × teacher's shortest relaxed bond.
PROPERTIES: dict[str, tuple[str, str, str]] = {
    "energy_per_atom": ("energy per atom (relaxed)", "eV/atom", "abs"),
    "volume_per_atom": ("volume per atom (relaxed)", "Å³/atom", "rel"),
    "bulk_modulus": ("bulk modulus (Birch–Murnaghan)", "GPa", "modulus"),
    "C11": ("C11", "GPa", "modulus"),
    "C12": ("C12", "GPa", "modulus"),
    "C44": ("C44", "GPa", "modulus"),
    "formation_energy": ("formation energy", "eV/atom", "abs"),
    "mixing_energy": ("mixing energy (random alloy)", "eV/atom", "abs"),
    "vacancy_formation_energy": ("vacancy formation energy", "eV", "abs"),
    "surface_energy": ("surface energy", "J/m²", "rel"),
    "extensivity_error": ("extensivity |E(kN) − k·E(N)|/kN", "eV/atom", "max"),
    "nve_drift": ("NVE energy drift", "eV/atom/ns", "max"),
    "hot_md_min_distance": ("hot-MD closest approach", "Å", "min"),
    "rdf_js_divergence": ("RDF Jensen–Shannon divergence", "nats", "max"),
}
#: the gate (attribute of AcceptanceGates) of the ``rel`` kind
_RELATIVE = {"volume_per_atom": "volume_rel", "surface_energy": "surface_rel"}
#: the gate (attribute of AcceptanceGates) of the ``abs`` and ``max`` kinds
_TOLERANCE = {
    "energy_per_atom": "energy_per_atom", "formation_energy": "formation_energy", "mixing_energy": "mixing_energy",
    "vacancy_formation_energy": "vacancy_formation", "extensivity_error": "extensivity",
    "nve_drift": "nve_drift", "rdf_js_divergence": "rdf_js",
}


def compare(
    teacher: dict[str, Any], student: dict[str, Any], gates: AcceptanceGates, *, disordered: Collection[str] = ()
) -> list[AcceptanceRow]:
    """One row per property and system measured on either side (missing values fail).

    The formation energies of the ``disordered`` systems (random alloys) are gated as mixing
    energies: the same measured quantity, with its own tolerance."""
    rows = []
    for key, (label, unit, kind) in PROPERTIES.items():
        for name, t_sys in teacher["systems"].items():
            s_sys = student["systems"].get(name, {})
            source = "formation_energy" if key == "mixing_energy" else key
            if key in ("formation_energy", "mixing_energy") and (name in disordered) != (key == "mixing_energy"):
                continue
            if key == "rdf_js_divergence":
                if "rdf" not in t_sys and "rdf" not in s_sys:
                    continue
                # a divergence from the teacher's histogram: the teacher's own value is 0 (it is
                # shown, so that a failed row reads "student 0.14 vs teacher 0", not a blank)
                t_val = 0.0 if "rdf" in t_sys else None
                s_val = _js(t_sys.get("rdf"), s_sys.get("rdf"))
            elif source in t_sys or source in s_sys:
                t_val, s_val = _number(t_sys.get(source)), _number(s_sys.get(source))
            else:
                continue
            gate, passed = _gate(key, kind, t_val, s_val, t_sys, gates)
            diff = s_val - t_val if t_val is not None and s_val is not None else None
            rows.append(AcceptanceRow(label, name, t_val, s_val, diff, unit, gate, passed))
    return rows


def _number(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _js(p: object, q: object) -> float | None:
    if p is None or q is None:
        return None
    return _number(props.js_divergence(p, q))  # type: ignore[arg-type]


def _gate(
    key: str, kind: str, t: float | None, s: float | None, t_sys: dict[str, Any], gates: AcceptanceGates
) -> tuple[str, bool]:
    """The gate as text and whether the student passes it (never with a missing value)."""
    if kind == "min":
        bond = _number(t_sys.get("shortest_bond"))
        frac = gates.min_distance_fraction
        limit = frac * bond if bond is not None else None
        text = f"≥ {frac:g} × {bond:.3g} Å = {limit:.3g} Å" if limit is not None else f"≥ {frac:g} × shortest bond"
        return text, s is not None and limit is not None and s >= limit
    if kind == "max":
        tol = getattr(gates, _TOLERANCE[key])
        return f"|student| ≤ {tol:g}", s is not None and abs(s) <= tol
    if kind == "abs":
        tol = getattr(gates, _TOLERANCE[key])
        text = f"|Δ| ≤ {tol:g}"
    elif kind == "rel":
        rel = getattr(gates, _RELATIVE[key])
        tol = rel * abs(t) if t is not None else math.nan
        text = f"|Δ| ≤ {100 * rel:g} %"
    else:  # modulus
        tol = max(gates.modulus_rel * abs(t), gates.modulus_abs) if t is not None else math.nan
        text = f"|Δ| ≤ {100 * gates.modulus_rel:g} % or {gates.modulus_abs:g} GPa"
    return text, t is not None and s is not None and abs(s - t) <= tol
