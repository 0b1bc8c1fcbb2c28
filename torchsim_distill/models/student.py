"""A packaged student as a ready calculator, with its committee when the package has one.

A distillation run with ``--committee K`` packages the student's K−1 committee members
inside its ``.nequip.zip``. Loading it here compiles the student and each member for this
machine and device (once; the compile cache keeps them) and hands the members to the
calculator, whose uncertainty stays off until asked for::

    calc = student_calc("run/student.nequip.zip", uncertainty=True)
    calc(state)["uncertainty"]  # [n_systems] eV/Å: the committee's largest per-atom force spread
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchsim_distill.compile import cached_compile_all
from torchsim_distill.models.package import committee_of
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc


def compiled_student(
    checkpoint: str | Path,
    members: Sequence[str | Path] = (),
    *,
    device: str = "cpu",
    verbose: bool = False,
    **options,
) -> DistilledTorchSimCalc:
    """The student and its committee (checkpoints or packages) compiled through the cache and
    loaded as one calculator; ``options`` go to the calculator (``uncertainty``, ``skin``, ...).
    Uncertainty is off unless asked for (:func:`~torchsim_distill.runtime.uncertainty.committee_uncertainty`
    switches it on for its calls)."""
    main, *committee = cached_compile_all([checkpoint, *members], device=device, target="batch", verbose=verbose)
    return DistilledTorchSimCalc.from_compiled_model(
        main, device=device, chemical_species_to_atom_type_map=True, committee=committee, **options
    )


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
