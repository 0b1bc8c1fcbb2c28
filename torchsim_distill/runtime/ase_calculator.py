"""``DistilledCalculatorBase``: the ASE face of a compiled student, below the student registry.

A thin ASE face on :class:`~torchsim_distill.runtime.calculator.DistilledTorchSimCalc`: the
same ``--target batch`` artifact, the same species map and the same neighbor-list
builder (with its Verlet skin). The package's one public ASE calculator,
``torchsim_distill.DistilledCalculator`` (:mod:`torchsim_distill.models.drop_in`), is this
class with students by name or file added; everything it computes is done here::

    from torchsim_distill import DistilledCalculator
    atoms.calc = DistilledCalculator.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    results = atoms.calc.evaluate_batch(list_of_atoms)  # many structures, one model call

With a committee and ``uncertainty=True`` (see :class:`DistilledTorchSimCalc`), the
results also hold the committee's spread::

    calc = DistilledCalculator.from_compiled_model(path, committee=["seed1.nequip.pt2"], uncertainty=True)
    atoms.calc = calc; atoms.get_potential_energy(); calc.results["uncertainty"]  # eV/Å
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.runtime.species import SpeciesMapArg

#: ASE's own ``Calculator`` keywords, passed through to it.
ASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")


class DistilledCalculatorBase(Calculator):
    """ASE calculator over a compiled NequIP/Allegro student (``--target batch``): the base of
    :class:`torchsim_distill.DistilledCalculator`, which users build (it also takes a student's
    name or file); this layer knows only ready torch-sim calculators.

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
        self.check_keywords(kwargs)
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
    ) -> DistilledCalculatorBase:
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

    @classmethod
    def accepted_keywords(cls) -> list[str]:
        """The keyword arguments the constructor takes: its own (read from its signature, so a
        subclass's new options join the list by being declared), then ASE's."""
        own = [
            name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        return own + [k for k in ASE_KEYWORDS if k not in own]

    @classmethod
    def check_keywords(cls, names: Iterable[str]) -> None:
        """Refuse keywords that are neither this calculator's nor ASE's.

        ASE's ``Calculator`` stores any keyword it does not know as a parameter and
        ignores it, so a typo (``uncertainity=True``) or an option this calculator
        lacks would be accepted without effect.

        Raises:
            TypeError: naming the unknown keywords, the closest accepted ones, and all accepted ones.
        """
        accepted = cls.accepted_keywords()
        unknown = [name for name in names if name not in accepted]
        if not unknown:
            return
        hints = {n: difflib.get_close_matches(n, accepted, n=1) for n in unknown}
        said = ", ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise TypeError(
            f"{cls.__name__}() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} {said}; "
            f"it accepts {', '.join(accepted)}"
        )

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """ASE's ``set``, refusing what would be stored without effect: an unknown keyword
        (``TypeError``), or a new value for a setting fixed at construction (``ValueError``)."""
        self.check_keywords(kwargs)
        changed = {k: v for k, v in kwargs.items() if k in self.parameters and self.parameters[k] != v}
        if changed:
            raise ValueError(
                f"{', '.join(changed)} cannot change after construction: build a new "
                f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())}, ...)"
            )
        return super().set(**kwargs)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, among what the model reads.

        ASE's ``Calculator`` sets ``use_cache = False`` for its own caching protocol
        (``get_property`` compares with :meth:`check_state`, ``calculate`` keeps a copy
        of the atoms), so ``use_cache`` is not consulted: one evaluation serves every
        property of one structure. ASE's default compares every per-atom array with
        ``np.isclose``, which costs about as much as a small student's whole
        evaluation; the model reads only positions, numbers, cell and pbc (magnetic
        moments and charges change nothing), so only those are compared, positions
        and cell to ``tol`` Å.
        """
        old = self.atoms
        if old is None or len(old) != len(atoms):
            return list(all_changes)
        changes = []
        # most getters find the very same positions (one pass); only a change needs the tolerance
        if not np.array_equal(old.positions, atoms.positions) and np.abs(old.positions - atoms.positions).max() > tol:
            changes.append("positions")
        if not np.array_equal(old.numbers, atoms.numbers):
            changes.append("numbers")
        if not np.array_equal(old.cell.array, atoms.cell.array) and np.abs(old.cell.array - atoms.cell.array).max() > tol:
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


#: Flat indices of ``xx, yy, zz, yz, xz, xy`` in a 3×3 matrix.
_VOIGT = np.array([0, 4, 8, 5, 2, 1])


def _voigt(stress: np.ndarray) -> np.ndarray:
    """ASE's ``full_3x3_to_voigt_6_stress`` (off-diagonals averaged), in two array operations
    instead of six: at 32 atoms ASE's version costs a visible share of a step."""
    return (0.5 * (stress + stress.T)).ravel()[_VOIGT]


def _ase_results(out: dict[str, torch.Tensor], system: int, atoms: slice, has_volume: bool) -> dict[str, Any]:
    """One system's results from the model's batched output, as ASE wants them."""
    energy = float(out["energy"][system])
    results: dict[str, Any] = {"energy": energy, "free_energy": energy}
    if "forces" in out:
        results["forces"] = out["forces"][atoms].cpu().numpy()
    if "energies" in out:  # not with a dispersion correction on top (it has no per-atom split)
        results["energies"] = out["energies"][atoms].cpu().numpy()
    if has_volume and "stress" in out:
        results["stress"] = _voigt(out["stress"][system].cpu().numpy())
    for key in ("uncertainty", "energy_uncertainty"):  # only when the model has uncertainty on
        if key in out:
            results[key] = float(out[key][system])
    return results


def __getattr__(name: str) -> Any:
    """``DistilledCalculator``, this module's old public name: it is now the package's one ASE
    calculator, ``torchsim_distill.DistilledCalculator`` (a subclass of
    :class:`DistilledCalculatorBase`), returned here for one release with a DeprecationWarning.
    It lives a layer up (it resolves students by name): this deprecated alias is the one
    place the runtime reaches it, by name, when asked."""
    if name == "DistilledCalculator":
        import importlib
        import warnings

        warnings.warn(
            f"{__name__}.DistilledCalculator is now torchsim_distill.DistilledCalculator (import it from there; "
            "this module's class is DistilledCalculatorBase)", DeprecationWarning, stacklevel=2,
        )
        return importlib.import_module("torchsim_distill.models.drop_in").DistilledCalculator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
