"""Teachers: the reference models whose labels a student is distilled from.

Every teacher is a torch-sim ``ModelInterface``, so sampling and labeling can run
many systems per call whatever the teacher is::

    teacher = load_teacher("sevennet-0", dtype=torch.float64)   # offline, from the sevenn wheel
    state = ts.io.atoms_to_state(frames, teacher.device, teacher.dtype)
    out = teacher(state)  # energy [n_systems] eV, forces [n_atoms, 3] eV/Å, stress [n_systems, 3, 3] eV/Å³

``load_teacher`` accepts a torch-sim model (returned as is), an ASE calculator, a
name from :data:`TEACHERS`, or the path of a compiled ``.nequip.pt2`` student. A teacher
that is run with DFT-D3(BJ) on top (SevenNet-0 usually is) is distilled with it when
:class:`TeacherOptions` say so: labels, sampling and the acceptance suite then see
teacher + D3, torch-sim's ``SumModel``::

    teacher = load_teacher("sevennet-0", dispersion="d3bj", functional="pbe")
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_sim as ts
from ase.calculators.calculator import BaseCalculator
from torch_sim.models.interface import ModelInterface, SumModel

from torchsim_distill.runtime.dispersion import D3BJ, DISPERSIONS, bj_parameters, dispersion_model
from torchsim_distill.utils.options import cli
from torchsim_distill.utils.timing import default_dtype

#: Below this |det(cell)| in Å³ a system has no volume, so no stress (molecules).
_MIN_VOLUME = 1e-12


class ASECalculatorTeacher(ModelInterface):
    """Any ASE calculator as a torch-sim model, evaluated one system at a time.

    ASE calculators are not batched, so this loops over the systems of a state; it
    exists so that cheap reference potentials (EMT, classical potentials, DFT codes
    driven through ASE) plug into the same batched pipeline as ML teachers.

    Each system position of a batch keeps its own calculator (``calculator`` for the
    first, ``copy.deepcopy(calculator)`` for the others, made when first needed), so
    repeated calls on the same batch (MD, relaxation) let each one reuse what it
    caches for its system, such as EMT's neighbor list, instead of every system
    invalidating the caches of the one before. A calculator that cannot be deep-copied
    is shared by all positions.

    Args:
        calculator: the ASE calculator of the first system and template of the
            others; it must accept new ``Atoms`` between calls (all ASE calculators do).
        device, dtype: where and in which precision outputs are returned.
        compute_stress: also return stress (zero for systems without a cell volume).
    """

    def __init__(
        self,
        calculator: BaseCalculator,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        compute_stress: bool = True,
    ) -> None:
        super().__init__()
        self.calculator = calculator
        #: one calculator per system position, grown by :meth:`_calculators`.
        self._slots: list[BaseCalculator] = [calculator]
        self._device = torch.device(device)
        self._dtype = dtype
        self._compute_forces = True
        self._compute_stress = compute_stress
        self._memory_scales_with = "n_atoms"
        implemented = getattr(calculator, "implemented_properties", ())
        self._per_atom_energies = "energies" in implemented

    def forward(self, state: ts.SimState, **kwargs) -> dict[str, torch.Tensor]:
        """Energy ``[n_systems]`` eV, forces ``[n_atoms, 3]`` eV/Å, stress ``[n_systems, 3, 3]``.

        Stress is in eV/Å³ with ASE's sign (positive under tension), the sign
        torch-sim's cell filters expect. ``energies [n_atoms]`` (eV per atom) is
        added when the calculator implements per-atom energies.
        """
        energy, forces, stress, energies = [], [], [], []
        systems = ts.io.state_to_atoms(state)
        for atoms, calculator in zip(systems, self._calculators(len(systems)), strict=True):
            atoms.calc = calculator
            energy.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            if self._compute_stress:
                if abs(np.linalg.det(atoms.cell.array)) > _MIN_VOLUME:
                    stress.append(atoms.get_stress(voigt=False))
                else:
                    stress.append(np.zeros((3, 3)))
            if self._per_atom_energies:
                energies.append(atoms.get_potential_energies())
            atoms.calc = None

        def _tensor(values: np.ndarray | list[float]) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values), dtype=state.dtype, device=state.device)

        out = {"energy": _tensor(energy), "forces": _tensor(np.concatenate(forces))}
        if self._compute_stress:
            out["stress"] = _tensor(np.stack(stress))
        if self._per_atom_energies:
            out["energies"] = _tensor(np.concatenate(energies))
        return out

    def _calculators(self, n: int) -> list[BaseCalculator]:
        """The calculators of the first ``n`` system positions, made on first use."""
        if self._slots[0] is not self.calculator:  # ``calculator`` was replaced: start over
            self._slots = [self.calculator]
        while len(self._slots) < n:
            try:
                self._slots.append(copy.deepcopy(self.calculator))
            except (TypeError, copy.Error):  # e.g. holds a lock, socket or process: share it
                self._slots.append(self.calculator)
        return self._slots[:n]


class DtypeCastTeacher(ModelInterface):
    """Run a model in its own precision while torch-sim works in another.

    Float32 foundation models (SevenNet) would otherwise force float32 states on a
    float64 pipeline; this casts each state in and every floating output back. The
    inner call also runs with the model's dtype as torch's default dtype, because
    such models create tensors without a dtype and break under a float64 default
    (which nequip users commonly set).
    """

    def __init__(self, model: ModelInterface, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.model = model
        self._device = model.device
        self._dtype = dtype
        self._compute_forces = model.compute_forces
        self._compute_stress = model.compute_stress
        self._memory_scales_with = model.memory_scales_with

    def forward(self, state: ts.SimState, **kwargs) -> dict[str, torch.Tensor]:
        """Outputs of ``model`` on ``state`` cast to ``state.dtype``."""
        with default_dtype(self.model.dtype):
            out = self.model(state.to(dtype=self.model.dtype), **kwargs)
        return {
            k: v.to(state.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in out.items()
        }


def _emt(device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    from ase.calculators.emt import EMT

    return ASECalculatorTeacher(EMT(), device=device, dtype=dtype)


def sevennet_0_checkpoint() -> Path:
    """Path of the SevenNet-0 (11Jul2024) checkpoint shipped inside the ``sevenn`` wheel.

    ``sevenn`` resolves the name ``"7net-0"`` to this file and downloads only when it
    is missing; passing the path itself means nothing is ever fetched.
    """
    from sevenn import _const

    path = Path(_const.SEVENNET_0_11Jul2024)
    if not path.is_file():
        raise FileNotFoundError(
            f"SevenNet-0 checkpoint not found at {path}; this sevenn install does not ship it "
            "and torchsim_distill will not download weights"
        )
    return path


class _OutputTap(torch.nn.Module):
    """Calls a network and keeps its last output dict, so that a wrapper that returns only some
    of the network's outputs (sevenn's torch-sim model keeps energy, forces and stress) can
    still hand on the others from the same evaluation."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.last: Any = None

    def forward(self, data: Any) -> Any:
        self.last = self.network(data)
        return self.last


class SevenNetPerAtomEnergies(ModelInterface):
    """sevenn's torch-sim model, with SevenNet's per-atom energies (``energies [n_atoms]``, eV).

    SevenNet's energy is a sum of atomic energies; its ASE calculator returns them, its
    torch-sim model drops them. A student trained to match them (nequip's per-atom energy
    loss) learns how the teacher splits a cell's energy between its atoms, which the total
    energy alone leaves open. They come from the same forward pass: no second evaluation.
    """

    def __init__(self, model: ModelInterface) -> None:
        super().__init__()
        self.model = model
        self._tap = _OutputTap(model.model)
        model.model = self._tap
        self._device = model.device
        self._dtype = model.dtype
        self._compute_forces = model.compute_forces
        self._compute_stress = model.compute_stress
        self._memory_scales_with = model.memory_scales_with

    def forward(self, state: ts.SimState, **kwargs) -> dict[str, torch.Tensor]:
        """The wrapped model's outputs plus ``energies [n_atoms]`` (eV; they sum to ``energy``)."""
        from sevenn import _keys

        out = self.model(state, **kwargs)
        energies = self._tap.last[_keys.ATOMIC_ENERGY].detach().reshape(-1)
        if energies.shape[0] != state.n_atoms:
            raise RuntimeError(f"SevenNet returned {energies.shape[0]} atomic energies for {state.n_atoms} atoms")
        return {**out, "energies": energies.to(out["energy"].dtype)}


def _sevennet_0(device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    from sevenn.torchsim import SevenNetModel

    # sevenn's checkpoint upgrade compares float32 weights with tensors of the default dtype
    with default_dtype(torch.float32):
        model = SevenNetModel(sevennet_0_checkpoint(), device=device, dtype=torch.float32)
    return DtypeCastTeacher(SevenNetPerAtomEnergies(model), dtype=dtype)


#: Built-in teachers: name → ``factory(device, dtype)``.
TEACHERS: dict[str, Callable[[str | torch.device, torch.dtype], ModelInterface]] = {
    "emt": _emt,
    "sevennet-0": _sevennet_0,
}


class DispersionCorrectedTeacher(SumModel):
    """A teacher with a dispersion correction on top: torch-sim's ``SumModel(teacher, D3)``
    (energies, forces and stress summed, one call each per batch), without per-atom energies.

    The D3 kernel gives energies per system only; the teacher's per-atom energies, passed on
    as they are, would not add up to the corrected energy, and a student trained on them
    (``atomic_energy_weight``) would learn the split of the wrong total. So they are dropped.

    Args:
        teacher: the torch-sim teacher.
        dispersion: the correction (:class:`~torchsim_distill.runtime.dispersion.D3BJ`), on
            the teacher's device and in its dtype.
    """

    def __init__(self, teacher: ModelInterface, dispersion: D3BJ) -> None:
        super().__init__(teacher, dispersion)

    @property
    def teacher(self) -> ModelInterface:
        return self.models[0]

    @property
    def dispersion(self) -> D3BJ:
        return self.models[1]

    def forward(self, state: ts.SimState, **kwargs) -> dict[str, torch.Tensor]:
        """Energy ``[n_systems]`` eV, forces ``[n_atoms, 3]`` eV/Å, stress ``[n_systems, 3, 3]``
        eV/Å³ of teacher + correction (no per-atom ``energies``)."""
        out = super().forward(state, **kwargs)
        out.pop("energies", None)
        return out


def with_dispersion(teacher: ModelInterface, dispersion: str, functional: str = "pbe") -> DispersionCorrectedTeacher:
    """``teacher`` + the correction ``dispersion`` (``"d3bj"``) of ``functional``, built on the
    teacher's device and in its dtype (see :mod:`torchsim_distill.runtime.dispersion`).

    Raises:
        UnknownDispersionError: (a ``ValueError``) an unknown correction or functional, naming the known ones.
    """
    correction = dispersion_model(dispersion, functional, device=teacher.device, dtype=teacher.dtype)
    return DispersionCorrectedTeacher(teacher, correction)


@dataclass(frozen=True)
class TeacherOptions:
    """How the teacher is run when it labels, samples and is measured: plain, or with a
    dispersion correction on top (then the student learns teacher + D3, and needs no D3
    at run time; see the README's "D3 dispersion" for when that is the better choice).

    Attributes:
        dispersion: ``"d3bj"`` (two-body DFT-D3 with Becke–Johnson damping, needs the ``d3``
            extra) or None (the teacher as it is).
        functional: the teacher's functional, whose D3(BJ) damping parameters are used
            (``"pbe"`` for SevenNet-0 and other MPtrj-trained teachers).

    Raises:
        ValueError: an unknown ``dispersion``, naming the accepted ones.
    """

    dispersion: str | None = field(default=None, metadata=cli(
        "distil the teacher with a dispersion correction on top (labels, sampling and acceptance suite): d3bj "
        "(two-body D3 with Becke-Johnson damping; needs the d3 extra). The student then has it built in",
        flag="--teacher-dispersion", choices=list(DISPERSIONS)))
    functional: str = field(default="pbe", metadata=cli(
        "with --teacher-dispersion: the teacher's functional, whose D3(BJ) parameters are used",
        flag="--teacher-functional"))

    def __post_init__(self) -> None:
        if self.dispersion is not None:
            if str(self.dispersion).lower() not in DISPERSIONS:
                raise ValueError(f"unknown teacher dispersion {self.dispersion!r}; accepted: "
                                 f"{', '.join(DISPERSIONS)} (or None: the teacher as it is)")
            object.__setattr__(self, "dispersion", str(self.dispersion).lower())

    def check(self) -> None:
        """Refuse an unknown functional (and a missing ``d3`` extra) before any work."""
        if self.dispersion is not None:
            bj_parameters(self.functional)

    def teacher_id(self, teacher: object) -> str:
        """The teacher's identity in every cache of its labels or properties: its name or path,
        and the correction when there is one, so a D3 teacher never reuses a plain one's."""
        return str(teacher) if self.dispersion is None else f"{teacher}+{self.dispersion}({self.functional})"

    def describe(self) -> str:
        """What the card says: ``"none"`` or e.g. ``"d3bj (pbe), in the labels"``."""
        return "none" if self.dispersion is None else f"{self.dispersion} ({self.functional}), in the labels"

    def load(self, teacher: Any, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> ModelInterface:
        """:func:`load_teacher` of ``teacher`` with these options."""
        return load_teacher(teacher, device=device, dtype=dtype, dispersion=self.dispersion, functional=self.functional)


def load_teacher(
    name_or_obj: str | Path | ModelInterface | BaseCalculator,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    dispersion: str | None = None,
    functional: str = "pbe",
) -> ModelInterface:
    """Return a torch-sim model for a teacher given in any of the usual forms.

    Args:
        name_or_obj: a ``ModelInterface`` (returned unchanged), an ASE calculator
            (wrapped in :class:`ASECalculatorTeacher`), a key of :data:`TEACHERS`
            (case-insensitive), or a student by name or file: whatever
            :func:`~torchsim_distill.models.registry.resolve_student`, the package's one
            resolver of a model given by name or path, resolves (``"default"``, a
            ``.nequip.zip`` package or ``.ckpt`` checkpoint, compiled on first use, or a
            compiled ``.nequip.pt2``).
        device: device of the returned model.
        dtype: dtype the pipeline builds states in; outputs come back in it.
        dispersion, functional: a correction on top of the teacher, ``"d3bj"`` with the
            teacher's functional (see :func:`with_dispersion`); None: none.

    Raises:
        ValueError: for a name that is neither known nor a compiled model path, or an
            unknown dispersion or functional.
        FileNotFoundError: for a ``.pt2`` path that does not exist.
    """
    if dispersion is not None:  # a misspelt name fails before a (slow) teacher is loaded
        dispersion_model(dispersion, functional)
        return with_dispersion(load_teacher(name_or_obj, device=device, dtype=dtype), dispersion, functional)
    if isinstance(name_or_obj, ModelInterface):
        return name_or_obj
    if isinstance(name_or_obj, BaseCalculator):
        return ASECalculatorTeacher(name_or_obj, device=device, dtype=dtype)
    if not isinstance(name_or_obj, str | Path):
        raise TypeError(f"cannot make a teacher from {type(name_or_obj).__name__}")
    key = str(name_or_obj).lower()
    if isinstance(name_or_obj, str) and key in TEACHERS:
        return TEACHERS[key](device, dtype)
    from torchsim_distill.models.registry import UnknownStudentError, resolve_student
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

    path = Path(name_or_obj)
    if path.suffix == ".pt2":  # any compiled student, whatever its name
        if not path.is_file():
            raise FileNotFoundError(f"compiled student not found: {path}")
        return DistilledTorchSimCalc.from_compiled_model(
            path, device=device, chemical_species_to_atom_type_map=True, dtype=dtype
        )
    try:
        path = resolve_student(name_or_obj)
    except UnknownStudentError as err:
        raise ValueError(
            f"unknown teacher {str(name_or_obj)!r}; known names: {sorted(TEACHERS)}, "
            f"or pass a torch-sim model, an ASE calculator or a student ({err})"
        ) from err
    from torchsim_distill.models.student import compiled_student

    # a registered student or a package/checkpoint, compiled on first use (resolve_student
    # returns no .pt2 here: those were taken above)
    return compiled_student(path, device=device, dtype=dtype, verbose=False)
