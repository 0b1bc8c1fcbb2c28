"""torchsim_distill: distil foundation interatomic potentials into fast compiled students.

    from torchsim_distill import DistilledCalculator, load_student
    atoms.calc = DistilledCalculator(model="default", device="cpu")   # ASE, the one-line swap
    calc = load_student("default", device="cpu")                      # torch-sim
    calc = DistilledTorchSimCalc.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)

The names below are imported on first use (PEP 562), so that ``import torchsim_distill.cli``
stays light: the command line sets its warning filters before torch, nequip and Warp load.
This root is the package's front door: it re-exports from any layer, and no module inside
the package imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchsim_distill.models.drop_in import DistilledCalculator
    from torchsim_distill.models.registry import load_student, students
    from torchsim_distill.runtime.artifact import ArtifactError, CompiledArtifact, load_artifact
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

_EXPORTS = {
    "ArtifactError": "torchsim_distill.runtime.artifact",
    "CompiledArtifact": "torchsim_distill.runtime.artifact",
    "load_artifact": "torchsim_distill.runtime.artifact",
    "DistilledCalculator": "torchsim_distill.models.drop_in",
    "DistilledTorchSimCalc": "torchsim_distill.runtime.calculator",
    "load_student": "torchsim_distill.models.registry",
    "students": "torchsim_distill.models.registry",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchsim_distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
