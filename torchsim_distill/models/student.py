"""A packaged student as a ready calculator, with its committee when the package has one.

A distillation run with ``--committee K`` packages the student's K−1 committee members
inside its ``.nequip.zip``. Loading it here compiles the student and each member for this
machine and device (once; the compile cache keeps them) and hands the members to the
calculator, whose uncertainty stays off until asked for::

    calc = student_calc("run/student.nequip.zip", uncertainty=True)
    calc(state)["uncertainty"]  # [n_systems] eV/Å: the committee's largest per-atom force spread
"""

from __future__ import annotations

from pathlib import Path

from torchsim_distill.distill.committee import compiled_student
from torchsim_distill.distill.packaging import committee_of
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc


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
    members = committee_of(package) if uncertainty else []
    if uncertainty and not members:
        raise ValueError(
            f"{package} has no committee, so it gives no uncertainty; distil with --committee 2 or more, "
            "or load it with uncertainty=False"
        )
    return compiled_student(package, members, device=device, uncertainty=uncertainty, **options)
