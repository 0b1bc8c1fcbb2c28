"""torchsim_distill: distil foundation interatomic potentials into fast compiled students.

    from torchsim_distill import DistilledTorchSimCalc, DistilledCalculator
    calc = DistilledTorchSimCalc.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
    atoms.calc = DistilledCalculator.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)

The names below are imported on first use (PEP 562), so that ``import torchsim_distill.cli``
stays light: the command line sets its warning filters before torch, nequip and Warp load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchsim_distill.runtime.artifact import ArtifactError, CompiledArtifact, load_artifact
    from torchsim_distill.runtime.ase_calculator import DistilledCalculator
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

_EXPORTS = {
    "ArtifactError": "torchsim_distill.runtime.artifact",
    "CompiledArtifact": "torchsim_distill.runtime.artifact",
    "load_artifact": "torchsim_distill.runtime.artifact",
    "DistilledCalculator": "torchsim_distill.runtime.ase_calculator",
    "DistilledTorchSimCalc": "torchsim_distill.runtime.calculator",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchsim_distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
