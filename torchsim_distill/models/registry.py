"""Students by name: the shipped one, those other packages register, and any student file.

A name resolves to a packaged student (a ``.nequip.zip`` with its distillation metadata
and, beside it, its model card); a path may also be a nequip checkpoint or a compiled
``.nequip.pt2``. :func:`load_student` turns either into a ready calculator, compiling a
package on first use for this machine and device (the compile cache keeps it)::

    calc = load_student("cu-au-sevennet0", device="cpu")   # or "default"
    calc = load_student("runs/cuau/student.nequip.zip")

Other installed packages add students through the ``torchsim_distill.students`` entry-point
group; each entry point names the package file, or a function returning it::

    [project.entry-points."torchsim_distill.students"]
    ni-mace = "my_students:NI_MACE_PACKAGE"   # a str or Path, or a callable returning one
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchsim_distill.models import default
from torchsim_distill.models.default import DEFAULT_NAME, SMALL_NAME
from torchsim_distill.utils.package_metadata import read_distill_metadata

if TYPE_CHECKING:
    import torch

    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

# Listing and resolving students reads files only: torch, nequip and Warp (seconds to import)
# load in load_student, when a calculator is built.

logger = logging.getLogger(__name__)

#: The entry-point group through which installed packages register students.
ENTRY_POINT_GROUP = "torchsim_distill.students"
#: Names that stand for another student's name: ``default`` for the best shipped student, and
#: the size-named one (see :data:`~torchsim_distill.models.default.SMALL_NAME`).
ALIASES = {"default": DEFAULT_NAME, SMALL_NAME: DEFAULT_NAME}
#: Student files a path may name: packages and checkpoints (compiled on first use), compiled students.
PATH_SUFFIXES = (".nequip.zip", ".ckpt", ".nequip.pt2")
PATH_FORMS = "a path to a .nequip.zip package, a nequip .ckpt checkpoint or a .nequip.pt2 compiled with --target batch"


class UnknownStudentError(ValueError):
    """A model that is neither a known student's name nor a student file."""


@dataclass(frozen=True)
class Student:
    """A registered student: where its package is, where it came from, and what its card says."""

    name: str
    package: Path
    source: str

    @property
    def card(self) -> Path:
        """Its model card (JSON), written beside the package by the distillation."""
        return default.DEFAULT_CARD if self.name == DEFAULT_NAME else self.package.parent / "model_card.json"

    def describe(self) -> dict[str, Any]:
        """Teacher, species, size, cutoff and the card's verdict, for listings."""
        packaged = self.package.is_file() and self.package.name.endswith(".nequip.zip")
        meta = read_distill_metadata(self.package) if packaged else {}
        card = json.loads(self.card.read_text()) if self.card.is_file() else {}
        failures = card.get("failures")
        return {
            "name": self.name,
            "aliases": [alias for alias, name in ALIASES.items() if name == self.name],
            "teacher": meta.get("teacher", "?"),
            "species": meta.get("species", []),
            "size": meta.get("size", "?"),
            "r_max": meta.get("r_max"),
            "card": "none" if not card else ("all gates pass" if card.get("passed") else f"{len(failures or [])} gates fail"),
            "source": self.source,
            "package": str(self.package),
        }


def students() -> dict[str, Student]:
    """Every student known by name: the shipped one, then those of installed packages."""
    known = {DEFAULT_NAME: Student(DEFAULT_NAME, default.DEFAULT_PACKAGE, "torchsim_distill (shipped)")}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in known or ep.name in ALIASES:
            logger.warning("student %r of %s is ignored: that name is taken", ep.name, ep.value)
            continue
        try:
            target = ep.load()
            package = Path(target() if callable(target) else target)
        except Exception as err:  # a broken plug-in must not hide the other students
            logger.warning("student %r (entry point %s) cannot be loaded: %s", ep.name, ep.value, err)
            continue
        dist = ep.dist.name if ep.dist is not None else ep.value
        known[ep.name] = Student(ep.name, package, f"{dist} (entry point)")
    return known


def resolve_student(model: str | Path) -> Path:
    """The student file ``model`` names: a registered student's package, or the path itself.

    Raises:
        UnknownStudentError: neither a known name nor a student file; the message lists
            the names and the path forms accepted.
        FileNotFoundError: a registered student whose package is missing from this install.
    """
    name = ALIASES.get(str(model), str(model))
    registry = students()
    if name == DEFAULT_NAME:
        return default.default_package()  # its own error says how to rebuild it
    if name in registry:
        package = registry[name].package
        if not package.is_file():
            raise FileNotFoundError(f"student {name!r} ({registry[name].source}) has no package at {package}")
        return package
    path = Path(model)
    if path.is_dir():
        raise UnknownStudentError(f"model {str(model)!r} is a folder; give a student's name or {PATH_FORMS}")
    if path.is_file() and path.name.endswith(PATH_SUFFIXES):
        return path
    names = ", ".join(sorted([*registry, *(f"{a} (= {n})" for a, n in ALIASES.items())]))
    what = "no such file exists" if not path.is_file() else f"the file is none of {', '.join(PATH_SUFFIXES)}"
    raise UnknownStudentError(f"model {str(model)!r} is not a known student and {what}; give one of {names}, or {PATH_FORMS}")


def load_student(
    model: str | Path,
    device: str = "cpu",
    *,
    dtype: str | torch.dtype | None = None,
    skin: float | None = 0.3,
    uncertainty: bool = False,
    dispersion: str | None = None,
    functional: str = "pbe",
    dispersion_cutoff: float | None = None,
    **options: Any,
) -> DistilledTorchSimCalc:
    """A :class:`DistilledTorchSimCalc` for a student's name or file, compiled on first use.

    Args:
        model: a name (``torchsim-distill models`` lists them) or a student file.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: the precision the student must have (``"float64"``, ``"float32"``); ``None``:
            its own. A student runs in the precision it was trained in, so another is an error.
        skin: Verlet skin, Å (``None``: neighbor list rebuilt every call; use it when the cell
            changes every step).
        uncertainty: also return the committee's uncertainty (the student must ship one).
        dispersion: a correction added on top in every call: ``"d3bj"`` (two-body D3 with
            Becke–Johnson damping, torch-sim's nvalchemiops model; needs tad-dftd3's tables,
            the ``d3`` extra); ``None``: none. See :mod:`torchsim_distill.runtime.dispersion`.
        functional: whose D3(BJ) parameters: the teacher's functional (``"pbe"`` for
            SevenNet-0 and other MPtrj-trained teachers).
        dispersion_cutoff: Å, D3's pair and coordination-number cutoff (default 60 Bohr).
        options: passed to :class:`DistilledTorchSimCalc` (``compute_stress``, ...).

    Raises:
        UnknownStudentError, FileNotFoundError: see :func:`resolve_student`.
        UnknownDispersionError: (a ``ValueError``) an unknown dispersion or functional; the
            message lists the known ones.
        ValueError: a device this machine lacks, or a precision the student does not have.
    """
    from torchsim_distill.models.student import student_calc
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
    from torchsim_distill.runtime.dispersion import dispersion_model

    _check_device(device)
    correction = None
    if dispersion is not None:  # before compiling: a misspelt name fails fast
        correction = dispersion_model(dispersion, functional, cutoff=dispersion_cutoff, device=device)
    path = resolve_student(model)
    if path.name.endswith(".nequip.pt2"):
        if uncertainty:
            raise ValueError(f"{path} is one compiled student, without a committee; load its package for uncertainty")
        calc = DistilledTorchSimCalc.from_compiled_model(
            path, device=device, chemical_species_to_atom_type_map=True, skin=skin, **options
        )
    else:
        calc = student_calc(path, device, uncertainty=uncertainty, skin=skin, **options)
    _check_dtype(calc, dtype, model)
    if correction is not None:
        _warn_if_built_in(path, dispersion)
        calc.dispersion = correction
    return calc


def _warn_if_built_in(path: Path, dispersion: str) -> None:
    """Warn when a student distilled from a dispersion-corrected teacher (``distill
    --teacher-dispersion``; its package says so) gets a correction on top: D3 counted twice."""
    import warnings

    built_in = read_distill_metadata(path).get("teacher_dispersion") if path.name.endswith(".nequip.zip") else None
    if built_in:
        warnings.warn(f"{path.name} was distilled from a teacher with {built_in}; adding {dispersion} on top "
                      "counts the dispersion twice", UserWarning, stacklevel=3)


def _check_device(device: str) -> None:
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available here (torch sees no CUDA GPU); use device='cpu'")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"students are compiled for 'cpu' or 'cuda', not {device!r}")


def _check_dtype(calc: DistilledTorchSimCalc, dtype: str | torch.dtype | None, model: str | Path) -> None:
    if dtype is None:
        return
    import torch

    names = {"float32": torch.float32, "float64": torch.float64}
    wanted = names.get(dtype) if isinstance(dtype, str) else dtype
    if wanted not in names.values():
        raise ValueError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    own = calc.artifact.model_dtype
    if wanted != own:
        raise ValueError(
            f"student {str(model)!r} is a {str(own).removeprefix('torch.')} model, not "
            f"{str(wanted).removeprefix('torch.')}; leave dtype=None, or distil a student in that precision"
        )
