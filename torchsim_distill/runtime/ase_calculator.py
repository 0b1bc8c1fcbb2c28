"""``DistilledCalculator``: a compiled student as an ASE calculator.

A thin ASE face on :class:`~torchsim_distill.runtime.calculator.DistilledTorchSimCalc`: the
same ``--target batch`` artifact, the same species map and the same neighbor-list
builder (with its Verlet skin), so a teacher script switches in one line::

    atoms.calc = DistilledCalculator.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    results = atoms.calc.evaluate_batch(list_of_atoms)  # many structures, one model call

With a committee and ``uncertainty=True`` (see :class:`DistilledTorchSimCalc`), the
results also hold the committee's spread::

    calc = DistilledCalculator.from_compiled_model(path, committee=["seed1.nequip.pt2"], uncertainty=True)
    atoms.calc = calc; atoms.get_potential_energy(); calc.results["uncertainty"]  # eV/Å
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.runtime.species import SpeciesMapArg


class DistilledCalculator(Calculator):
    """ASE calculator over a compiled NequIP/Allegro student (``--target batch``).

    Use :meth:`from_compiled_model`, or wrap an existing
    :class:`DistilledTorchSimCalc` (then both share one neighbor list; its cache
    checks cell, pbc, atoms and displacements itself, so sharing is safe).

    Results (ASE units and conventions): ``energy`` and ``free_energy`` eV,
    ``forces [n_atoms, 3]`` eV/Å, ``energies [n_atoms]`` eV per atom and ``stress
    [6]`` eV/Å³ in Voigt order ``xx, yy, zz, yz, xz, xy``, positive under tension.
    Stress exists only for a cell with volume (three independent lattice vectors);
    asking a molecule for it raises ``PropertyNotImplementedError``, as with EMT.
    When the wrapped calculator has ``uncertainty`` on, also ``uncertainty`` (float,
    eV/Å: max over atoms of the committee's force spread) and ``energy_uncertainty``
    (float, eV/atom), from the same call; ``calc.get_property("uncertainty", atoms)``
    works then (and raises ``PropertyNotImplementedError`` when it is off).

    Args:
        model: the torch-sim calculator doing the work.
    """

    implemented_properties = [
        "energy", "free_energy", "forces", "stress", "energies", "uncertainty", "energy_uncertainty",
    ]

    def __init__(self, model: DistilledTorchSimCalc, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, DistilledTorchSimCalc):
            raise TypeError(f"model must be a DistilledTorchSimCalc, got {type(model).__name__}")
        self.model = model
        # per-size constant inputs, kept between calls: MD and relaxations keep n_atoms fixed
        self._n_atoms = -1
        self._system_idx = torch.zeros(0, dtype=torch.long)

    @classmethod
    def from_compiled_model(
        cls,
        compile_path: str | Path,
        device: str | torch.device = "cpu",
        chemical_species_to_atom_type_map: SpeciesMapArg = None,
        skin: float | None = 0.3,
        **options: Any,
    ) -> DistilledCalculator:
        """Load a ``.nequip.pt2`` compiled with ``--target batch`` for ``device``.

        Args:
            compile_path: the compiled student.
            device: where it runs; must be the device it was compiled for.
            chemical_species_to_atom_type_map: ``None`` (identity, warns), ``True``
                (identity) or ``{symbol: type_name}``.
            skin: Verlet skin in Å; neighbor pairs are reused until an atom moves
                more than ``skin / 2`` or the cell, pbc or atoms change. ``None`` or
                ``0`` rebuilds every call.
            options: passed to :class:`DistilledTorchSimCalc` (``neighbor_method``,
                ``dtype``, ``committee``, ``uncertainty``).
        """
        model = DistilledTorchSimCalc.from_compiled_model(
            compile_path,
            device=device,
            chemical_species_to_atom_type_map=chemical_species_to_atom_type_map,
            skin=skin,
            **options,
        )
        return cls(model)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, among what the model reads.

        ASE's default compares every per-atom array with ``np.isclose``, which costs
        about as much as a small student's whole evaluation; the model reads only
        positions, numbers, cell and pbc (magnetic moments and charges change
        nothing), so only those are compared, positions and cell to ``tol`` Å.
        """
        old = self.atoms
        if not self.use_cache or old is None or len(old) != len(atoms):
            return list(all_changes)
        changes = []
        if np.abs(old.positions - atoms.positions).max(initial=0.0) > tol:
            changes.append("positions")
        if not np.array_equal(old.numbers, atoms.numbers):
            changes.append("numbers")
        if np.abs(old.cell.array - atoms.cell.array).max() > tol:
            changes.append("cell")
        if not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def get_property(self, name: str, atoms: Atoms | None = None, allow_calculation: bool = True) -> Any:
        """ASE's, but asking a structure without a cell volume for stress says why there is none
        (a foundation model's calculator divides by a zero volume there and returns numbers)."""
        target = atoms if atoms is not None else self.atoms
        if name == "stress" and target is not None and target.cell.rank < 3:
            raise PropertyNotImplementedError(
                f"stress needs a cell with volume (three lattice vectors); this structure's cell has rank "
                f"{target.cell.rank}, as a molecule's or cluster's: there is no stress to give"
            )
        return super().get_property(name, atoms, allow_calculation)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Evaluate energy, forces, per-atom energies, (with a cell) stress and (when on) uncertainty at once."""
        super().calculate(atoms, list(properties), list(system_changes))
        atoms = self.atoms
        n_atoms = len(atoms)
        if n_atoms != self._n_atoms:
            self._n_atoms = n_atoms
            self._system_idx = torch.zeros(n_atoms, dtype=torch.long)
        # from_numpy shares memory with self.atoms (our private copy): no copies here;
        # the model casts to its device and dtype only when they differ
        out = self.model.evaluate(
            torch.from_numpy(atoms.positions),
            torch.from_numpy(atoms.numbers),
            torch.from_numpy(atoms.cell.array).unsqueeze(0),
            self._system_idx,
            torch.from_numpy(atoms.pbc),
        )
        self.results = _ase_results(out, 0, slice(None), atoms.cell.rank == 3)

    def evaluate_batch(self, atoms_list: Sequence[Atoms]) -> list[dict[str, Any]]:
        """Evaluate many structures in one model call.

        Structures may differ in size, cell and pbc (the model takes pbc per system).
        Atoms keep no results: this returns them.

        Returns:
            one dict per structure, in input order, with the keys and units of
            :attr:`results` (``stress`` only for cells with volume).
        """
        if not atoms_list:
            return []
        counts = [len(a) for a in atoms_list]
        if 0 in counts:
            raise ValueError(f"structure {counts.index(0)} of the batch has no atoms")
        out = self.model.evaluate(
            torch.from_numpy(np.concatenate([a.positions for a in atoms_list])),
            torch.from_numpy(np.concatenate([a.numbers for a in atoms_list])),
            torch.from_numpy(np.stack([a.cell.array for a in atoms_list])),
            torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
            torch.from_numpy(np.stack([a.pbc for a in atoms_list])),
        )
        ends = np.cumsum(counts)
        return [
            _ase_results(out, k, slice(int(end - n), int(end)), a.cell.rank == 3)
            for k, (a, n, end) in enumerate(zip(atoms_list, counts, ends, strict=True))
        ]


def _ase_results(out: dict[str, torch.Tensor], system: int, atoms: slice, has_volume: bool) -> dict[str, Any]:
    """One system's results from the model's batched output, as ASE wants them."""
    energy = float(out["energy"][system])
    results: dict[str, Any] = {"energy": energy, "free_energy": energy}
    if "forces" in out:
        results["forces"] = out["forces"][atoms].cpu().numpy()
    if "energies" in out:  # not with a dispersion correction on top (it has no per-atom split)
        results["energies"] = out["energies"][atoms].cpu().numpy()
    if has_volume and "stress" in out:
        results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][system].cpu().numpy())
    for key in ("uncertainty", "energy_uncertainty"):  # only when the model has uncertainty on
        if key in out:
            results[key] = float(out[key][system])
    return results
