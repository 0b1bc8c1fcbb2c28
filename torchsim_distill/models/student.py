"""A packaged student as a ready calculator, with its committee when the package has one.

A distillation run with ``--committee K`` packages the student's K−1 committee members
inside its ``.nequip.zip``. Loading it here compiles the student and each member for this
machine and device (once; the compile cache keeps them) and hands the members to the
calculator, whose uncertainty stays off until asked for::

    calc = student_calc("run/student.nequip.zip", uncertainty=True)
    calc(state)["uncertainty"]  # [n_systems] eV/Å: the committee's largest per-atom force spread
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torchsim_distill.compile import cache_dir, cached_compile
from torchsim_distill.distill.packaging import committee_entries, extract_committee
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc


def committee_of(package: str | Path, *, device: str = "cpu") -> list[Path]:
    """The compiled committee members of ``package`` (empty when it has none).

    Members are extracted into the compile cache, in a folder named by the package's
    hash, and compiled through :func:`~torchsim_distill.compile.cached_compile`.
    """
    package = Path(package)
    if not package.name.endswith(".nequip.zip") or not committee_entries(package):
        return []
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:16]
    members = extract_committee(package, cache_dir() / "committees" / digest)
    return [cached_compile(m, device=device, target="batch") for m in members]


def student_calc(
    package: str | Path, device: str = "cpu", *, uncertainty: bool = False, **options
) -> DistilledTorchSimCalc:
    """A ``DistilledTorchSimCalc`` for a packaged student (compiled once per machine, then cached).

    Args:
        package: a ``.nequip.zip`` written by the distillation (or a nequip checkpoint).
        device: ``"cpu"`` or ``"cuda"``.
        uncertainty: return the committee's ``uncertainty`` beside energy, forces and
            stress; a package without a committee then raises ``ValueError``.
        options: passed to :meth:`DistilledTorchSimCalc.from_compiled_model` (``skin``, ...).
    """
    compiled = cached_compile(package, device=device, target="batch")
    committee = committee_of(package, device=device) if uncertainty else []
    if uncertainty and not committee:
        raise ValueError(
            f"{package} has no committee, so it gives no uncertainty; distil with --committee 2 or more, "
            "or load it with uncertainty=False"
        )
    return DistilledTorchSimCalc.from_compiled_model(
        compiled, device=device, chemical_species_to_atom_type_map=True, committee=committee,
        uncertainty=uncertainty, **options,
    )
