"""Teachers: the reference models whose labels a student is distilled from.

Every teacher is a torch-sim ``ModelInterface``, so sampling and labeling can run
many systems per call whatever the teacher is::

    teacher = load_teacher("sevennet-0", dtype=torch.float64)   # offline, from the sevenn wheel
    state = ts.io.atoms_to_state(frames, teacher.device, teacher.dtype)
    out = teacher(state)  # energy [n_systems] eV, forces [n_atoms, 3] eV/Å, stress [n_systems, 3, 3] eV/Å³

``load_teacher`` accepts a torch-sim model (returned as is), an ASE calculator, or a
name or path :func:`~torchsim_distill.models.teacher_registry.resolve_teacher` knows
(``emt``, sevenn's models by sevenn's names such as ``7net-l3i5`` or ``7net-mf-0:PBE``,
``chgnet``, a student or a model file, ``module:callable``, an entry point); this module
builds each kind (:data:`BUILDERS`) and wraps what it needs (ASE calculators, dtypes). A
teacher that is run with DFT-D3(BJ) on top (SevenNet-0 usually is) is distilled with it when
:class:`TeacherOptions` say so: labels, sampling and the acceptance suite then see
teacher + D3, torch-sim's ``SumModel``::

    teacher = load_teacher("sevennet-0", dispersion="d3bj", functional="pbe")
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_sim as ts
from ase.calculators.calculator import BaseCalculator
from torch_sim.models.interface import ModelInterface, SumModel

from torchsim_distill.models.teacher_registry import (
    SEVENN_MODELS,
    TeacherSpec,
    resolve_teacher,
    sevenn_download_url,
    teacher_entry_points,
)
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


def _sevenn(spec: TeacherSpec, device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    """A SevenNet model from its checkpoint (never fetched), in float32 behind a dtype cast."""
    from sevenn.checkpoint import SevenNetCheckpoint
    from sevenn.torchsim import SevenNetModel

    if (missing := spec.missing()) is not None:
        base = spec.name.rsplit(":", 1)[0]
        url = sevenn_download_url(base) if base in SEVENN_MODELS else None
        raise FileNotFoundError(f"teacher {spec.name!r}: {missing}" + (f" (sevenn's address for it: {url})" if url else ""))
    # sevenn's checkpoint upgrade compares float32 weights with tensors of the default dtype
    with default_dtype(torch.float32):
        network = SevenNetCheckpoint(str(spec.file)).build_model()
        modals = list(network.modal_map or ())
        if modals and spec.modal not in modals:
            what = "needs a modal (fidelity)" if spec.modal is None else f"has no modal {spec.modal!r}"
            base = spec.name.rsplit(":", 1)[0] if spec.modal is not None else spec.name
            raise ValueError(f"teacher {base!r} {what}; its modals: {', '.join(modals)} "
                             f"(give one as '{base}:{modals[0]}')")
        if not modals and spec.modal is not None:
            raise ValueError(f"teacher {spec.name!r}: this SevenNet model has no modals (fidelities)")
        model = SevenNetModel(network, modal=spec.modal, device=device, dtype=torch.float32)
    return DtypeCastTeacher(SevenNetPerAtomEnergies(model), dtype=dtype)


def _chgnet(spec: TeacherSpec, device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    """CHGNet with the weights its package ships, through its ASE calculator."""
    if (missing := spec.missing()) is not None:
        raise ImportError(f"teacher 'chgnet' is {missing}")
    from chgnet.model.dynamics import CHGNetCalculator

    return ASECalculatorTeacher(CHGNetCalculator(use_device=str(device)), device=device, dtype=dtype)


def _mace(spec: TeacherSpec, device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    """A MACE model file, through torch-sim's MACE interface, in the file's own precision."""
    if (missing := spec.missing()) is not None:
        raise ImportError(f"teacher {spec.name!r} is a MACE model file, and mace is {missing}")
    from torch_sim.models.mace import MaceModel

    network = torch.load(spec.file, map_location=device, weights_only=False)
    own = next(network.parameters()).dtype
    return _cast(MaceModel(model=network, device=torch.device(device), dtype=own), dtype)


def _nequip(spec: TeacherSpec, device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    """A student as teacher: a compiled ``.nequip.pt2`` as is, a package or checkpoint compiled on first use."""
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

    if spec.file.name.endswith(".pt2"):  # any compiled student, whatever its name
        return DistilledTorchSimCalc.from_compiled_model(
            spec.file, device=device, chemical_species_to_atom_type_map=True, dtype=dtype
        )
    from torchsim_distill.models.student import compiled_student

    return compiled_student(spec.file, device=device, dtype=dtype, verbose=False)


def _made(spec: TeacherSpec, device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    """What a ``module:callable`` or an entry point makes: a torch-sim model or an ASE calculator.

    The callable is called with ``device`` and ``dtype`` when its signature takes them; an
    object that already is a model or a calculator is used as it is."""
    if spec.kind == "entry point":
        target = next(ep for ep in teacher_entry_points() if ep.name.lower() == spec.name).load()
    else:
        module, _, attr = spec.target.partition(":")
        target = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
    made = target
    if not isinstance(target, ModelInterface | BaseCalculator):
        if not callable(target):
            raise TypeError(f"teacher {spec.name!r}: {spec.target} is neither callable nor a model")
        params = inspect.signature(target).parameters
        anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        made = target(**{k: v for k, v in (("device", device), ("dtype", dtype)) if anything or k in params})
    if isinstance(made, BaseCalculator):
        return ASECalculatorTeacher(made, device=device, dtype=dtype)
    if isinstance(made, ModelInterface):
        return _cast(made, dtype)
    raise TypeError(f"teacher {spec.name!r}: {spec.target} returned a {type(made).__name__}, not a torch-sim "
                    "ModelInterface or an ASE calculator")


def _cast(model: ModelInterface, dtype: torch.dtype) -> ModelInterface:
    """``model`` as is in its own dtype, else behind :class:`DtypeCastTeacher`."""
    return model if model.dtype == dtype else DtypeCastTeacher(model, dtype=dtype)


def _emt(spec: TeacherSpec, device: str | torch.device, dtype: torch.dtype) -> ModelInterface:
    from ase.calculators.emt import EMT

    return ASECalculatorTeacher(EMT(), device=device, dtype=dtype)


#: How each kind of :class:`~torchsim_distill.models.teacher_registry.TeacherSpec` is built:
#: ``factory(spec, device, dtype)``.
BUILDERS: dict[str, Callable[[TeacherSpec, str | torch.device, torch.dtype], ModelInterface]] = {
    "ase": _emt,
    "sevenn": _sevenn,
    "chgnet": _chgnet,
    "mace": _mace,
    "nequip": _nequip,
    "callable": _made,
    "entry point": _made,
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
    modal: str | None = None,
    dispersion: str | None = None,
    functional: str = "pbe",
) -> ModelInterface:
    """Return a torch-sim model for a teacher given in any of the usual forms.

    Args:
        name_or_obj: a ``ModelInterface`` (returned unchanged), an ASE calculator
            (wrapped in :class:`ASECalculatorTeacher`), or a name or path in any form
            :func:`~torchsim_distill.models.teacher_registry.resolve_teacher` knows:
            ``emt``, ``sevennet-0``, the models of the installed sevenn by sevenn's names
            (``7net-l3i5``, ``7net-mf-0:PBE``), ``chgnet``, a student's name or file
            (``.nequip.zip``/``.ckpt`` compiled on first use, ``.nequip.pt2``), a SevenNet
            ``.pth`` or MACE ``.model`` file, ``module:callable``, or an entry point of
            ``torchsim_distill.teachers`` (``torchsim-distill teachers`` lists them).
        device: device of the returned model.
        dtype: dtype the pipeline builds states in; outputs come back in it.
        modal: the modal (fidelity) of a multi-fidelity SevenNet model, when not in the name.
        dispersion, functional: a correction on top of the teacher, ``"d3bj"`` with the
            teacher's functional (see :func:`with_dispersion`); None: none.

    Raises:
        ValueError: an unknown name (the message lists the known ones), a missing or
            unknown modal (it lists the model's modals), an unknown dispersion or functional.
        FileNotFoundError: a teacher file that does not exist, or sevenn weights that are
            not on this machine (nothing is downloaded; the message says where to put them).
        ImportError: a teacher whose package is not installed (the message says what to install).
    """
    if dispersion is not None:  # a misspelt name fails before a (slow) teacher is loaded
        dispersion_model(dispersion, functional)
        return with_dispersion(load_teacher(name_or_obj, device=device, dtype=dtype, modal=modal), dispersion, functional)
    if isinstance(name_or_obj, ModelInterface):
        return name_or_obj
    if isinstance(name_or_obj, BaseCalculator):
        return ASECalculatorTeacher(name_or_obj, device=device, dtype=dtype)
    if not isinstance(name_or_obj, str | Path):
        raise TypeError(f"cannot make a teacher from {type(name_or_obj).__name__}")
    spec = resolve_teacher(name_or_obj, modal=modal)
    return BUILDERS[spec.kind](spec, device, dtype)


def teacher_provenance(teacher: object) -> dict[str, Any]:
    """What the model card records of a teacher: its name, kind, package and version, and the
    sha256 of its weights file when it has one (see
    :meth:`~torchsim_distill.models.teacher_registry.TeacherSpec.provenance`). A teacher given
    as an object is described by its class and the version of the package that defines it."""
    if isinstance(teacher, str | Path):
        return resolve_teacher(teacher).provenance()
    inner = teacher.calculator if isinstance(teacher, ASECalculatorTeacher) else teacher
    module = type(inner).__module__.split(".", 1)[0]
    dists = packages_distributions().get(module) or [None]
    try:
        found = version(dists[0]) if dists[0] else None
    except PackageNotFoundError:
        found = None
    return {"name": type(inner).__name__, "kind": "object", "package": dists[0], "version": found,
            "file": None, "sha256": None}
