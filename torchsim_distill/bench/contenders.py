"""Who is benchmarked: the student artifact, and the three calculators that run it or
compete with it.

It exists so that every measurement compares the same three things, built the same
way for each dtype:

* **student**: :class:`~torchsim_distill.DistilledTorchSimCalc` with a Verlet skin;
* **nequip**: ``NequIPTorchSimCalc.from_compiled_model(..., neighborlist_backend="alchemiops")``
  on the same ``.nequip.pt2`` (what a user would otherwise run);
* **teacher**: SevenNet-0 (or EMT, or any :func:`~torchsim_distill.distill.teachers.load_teacher` input).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch_sim.models.interface import ModelInterface

from torchsim_distill.bench.toy import toy_student
from torchsim_distill.compile import cached_compile
from torchsim_distill.distill.teachers import DtypeCastTeacher, load_teacher
from torchsim_distill.models.registry import resolve_student
from torchsim_distill.runtime.artifact import CompiledArtifact, load_artifact
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

#: The contenders, in the order they run and appear in tables.
CALCULATORS = ("student", "nequip", "teacher")


@dataclass
class Contender:
    """One calculator as benchmarked: its name, what exactly runs, and the model."""

    name: str  # "student", "nequip" or "teacher"
    variant: str  # e.g. "skin=0.5", "alchemiops", "emt"
    model: ModelInterface


def student_artifact(model: str | Path | None, device: torch.device, size: str) -> CompiledArtifact:
    """The student to benchmark on ``device`` (``--target batch``).

    ``None`` is the cached toy Cu–Au student of ``size`` (trained and compiled once);
    ``"default"`` the shipped SevenNet-0 student; a ``.nequip.pt2`` is loaded as is (it
    must be compiled for ``device``); a nequip checkpoint or package is compiled for
    ``device`` through the cache.
    """
    if model is not None:
        model = resolve_student(model)
    if model is None:
        # these arguments match the test suite's fixture, so its cached student is reused
        ckpt = toy_student(size=size, n_train=40, n_val=8, max_epochs=10)
        path = cached_compile(ckpt, device=device.type, target="batch", verbose=False)
    elif str(model).endswith(".pt2"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"compiled student not found: {path}")
    else:
        path = cached_compile(model, device=device.type, target="batch", verbose=False)
    return load_artifact(path, device=device, target="batch")


def contenders(
    artifact: CompiledArtifact,
    teacher: Any,
    *,
    dtype: torch.dtype,
    skin: float,
) -> list[Contender]:
    """Student, nequip and teacher, each building and returning states in ``dtype``."""
    from nequip.integrations.torchsim import NequIPTorchSimCalc

    student = DistilledTorchSimCalc(artifact, chemical_species_to_atom_type_map=True, skin=skin, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nequip = NequIPTorchSimCalc.from_compiled_model(
            str(artifact.path), device=artifact.device, chemical_species_to_atom_type_map=True,
            neighborlist_backend="alchemiops",
        )
    nequip_variant = "alchemiops"
    if dtype != nequip.dtype:
        # nequip's calculator passes state tensors straight to the compiled model,
        # which reads them as its own dtype: another dtype must be cast around it
        nequip = DtypeCastTeacher(nequip, dtype=dtype)
        nequip_variant += f", state cast to {str(nequip.model.dtype).removeprefix('torch.')}"
    teacher_model = load_teacher(teacher, device=artifact.device, dtype=dtype)
    return [
        Contender("student", f"skin={skin:g}", student),
        Contender("nequip", nequip_variant, nequip),
        Contender("teacher", teacher_name(teacher), teacher_model),
    ]


def teacher_name(teacher: Any) -> str:
    """How results name a teacher: its name, a ``.pt2``'s file name, or the object's type."""
    if isinstance(teacher, str | Path):
        return Path(teacher).name if str(teacher).endswith(".pt2") else str(teacher)
    return type(teacher).__name__
