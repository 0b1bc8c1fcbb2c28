"""Inference only: load a compiled student and run it in torch-sim or ASE.

The bottom layer of the package (it imports nothing above it): the artifact loader,
the chemical-species map, the batched neighbor list, and the two calculator faces
that share them, ``DistilledTorchSimCalc`` (torch-sim) and ``DistilledCalculatorBase`` (ASE;
the public ASE class, ``torchsim_distill.DistilledCalculator``, builds on it a layer up).
"""

from typing import Any

from torchsim_distill.utils.quiet import known_notices_silenced

# the package's first imports of torch-sim, nequip and Warp (nvalchemiops) happen here, below
# every other layer: their known start-up notices are silenced for these imports only
with known_notices_silenced():
    from torchsim_distill.runtime.artifact import ArtifactError, CompiledArtifact, load_artifact
    from torchsim_distill.runtime.ase_calculator import DistilledCalculatorBase
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

__all__ = ["ArtifactError", "CompiledArtifact", "DistilledCalculatorBase", "DistilledTorchSimCalc", "load_artifact"]


def __getattr__(name: str) -> Any:
    """``from torchsim_distill.runtime import DistilledCalculator`` is the package's one ASE
    calculator, ``torchsim_distill.DistilledCalculator`` (deprecated here: it warns)."""
    if name == "DistilledCalculator":
        from torchsim_distill.runtime import ase_calculator

        return ase_calculator.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
