"""``DistilledCalculator(model=..., device=...)``: a teacher's ASE calculator swapped in one line.

A script written for the teacher changes only its calculator line::

    calc = SevenNetCalculator(model="7net-0", device="cpu")            # before
    calc = DistilledCalculator(model="cu-au-sevennet0", device="cpu")  # after ("default" works too)

The package's one public ASE calculator (``torchsim_distill.DistilledCalculator``; the runtime's
name for it warns and returns this class). Its base,
:class:`~torchsim_distill.runtime.ase_calculator.DistilledCalculatorBase`, computes everything
from a ready torch-sim calculator; this class, a layer up where the student registry lives,
also takes a student's name or file, compiles it on first use (cached), and keeps its
arguments as ASE ``parameters``, so ``todict()`` rebuilds it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from torchsim_distill.models.registry import load_student, resolve_student
from torchsim_distill.runtime import ase_calculator
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.package_metadata import read_distill_metadata


class DistilledCalculator(ase_calculator.DistilledCalculatorBase):
    """A distilled student as an ASE calculator, built from its name or file.

    Results and units as the runtime's calculator: ``energy``, ``free_energy`` (eV),
    ``forces`` (eV/Å), ``energies`` (eV per atom), ``stress`` (eV/Å³, Voigt, ASE sign;
    cells with volume only), and with ``uncertainty=True`` the committee's spread.

    Args:
        model: a student's name (``torchsim-distill models`` lists them; ``"default"``),
            a ``.nequip.zip`` package, a nequip checkpoint or a compiled ``.nequip.pt2``;
            or a ready :class:`DistilledTorchSimCalc` (then the other arguments must stay
            unset, and ``todict()`` has nothing to rebuild it from).
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``None`` (the student's own precision) or the one it must have.
        skin: Verlet skin in Å: neighbor pairs are reused until an atom moves more than
            ``skin / 2``; ``None`` rebuilds them every call.
        uncertainty: also give the committee's ``uncertainty`` (eV/Å).
        dispersion: ``"d3bj"`` adds D3(BJ) on top of the student in every call (as a
            teacher script's ``SevenNetD3Calculator`` would); ``None``: none. With it there
            are no per-atom ``energies``. See :func:`~torchsim_distill.models.registry.load_student`.
        functional: the D3(BJ) parameters' functional, the teacher's (``"pbe"``).
        kwargs: ASE's own (``label``, ``directory``, ``atoms``, ...); any other keyword raises
            ``TypeError`` listing the accepted ones (:meth:`accepted_keywords`), before any loading.
    """

    def __init__(
        self,
        model: str | Path | DistilledTorchSimCalc = "default",
        device: str = "cpu",
        dtype: str | None = None,
        skin: float | None = 0.3,
        uncertainty: bool = False,
        dispersion: str | None = None,
        functional: str = "pbe",
        **kwargs: Any,
    ) -> None:
        self.check_keywords(kwargs)  # a typo fails now, not after a compile
        self._training_pbc: list[tuple[bool, ...]] = []  # unknown for a ready calculator: no warning
        self._warned = False
        if isinstance(model, DistilledTorchSimCalc):
            if (device, dtype, skin, uncertainty, dispersion) != ("cpu", None, 0.3, False, None):
                raise ValueError(
                    "give device, dtype, skin and uncertainty to the DistilledTorchSimCalc, not here "
                    "(and a dispersion as its dispersion=dispersion_model(...))"
                )
            super().__init__(model, **kwargs)
            return
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        calc = load_student(
            model, device, dtype=dtype, skin=skin, uncertainty=uncertainty, dispersion=dispersion, functional=functional
        )
        super().__init__(calc, **kwargs)
        self.parameters.update(model=str(model), device=device, dtype=dtype, skin=skin, uncertainty=uncertainty)
        if dispersion is not None:  # todict() rebuilds it with the same correction
            self.parameters.update(dispersion=dispersion, functional=functional)
        path = resolve_student(model)
        meta = read_distill_metadata(path) if path.name.endswith(".nequip.zip") else {}
        self._training_pbc = [tuple(p) for p in meta.get("training_pbc", [])]

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """As the runtime's; warns once when a molecule or cluster meets a student trained on
        periodic cells only (its energies there can be far from the teacher's)."""
        target = atoms if atoms is not None else self.atoms
        if (
            not self._warned and target is not None and not target.pbc.any()
            and self._training_pbc and all(any(p) for p in self._training_pbc)
        ):
            self._warned = True
            warnings.warn(
                f"student {self.parameters['model']!r} was trained on periodic cells only; this structure has no "
                "periodic direction (a molecule or cluster), which is outside its training data: its results may be "
                "far from the teacher's (uncertainty=True gives the committee's spread)",
                UserWarning, stacklevel=2,
            )
        super().calculate(atoms, properties, system_changes)
