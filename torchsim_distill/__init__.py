"""torchsim_distill: distil foundation interatomic potentials into fast compiled students.

    from torchsim_distill import DistilledTorchSimCalc, DistilledCalculator
    calc = DistilledTorchSimCalc.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
    atoms.calc = DistilledCalculator.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
"""

from .artifact import ArtifactError, CompiledArtifact, load_artifact
from .ase_calculator import DistilledCalculator
from .calculator import DistilledTorchSimCalc

__all__ = ["ArtifactError", "CompiledArtifact", "DistilledCalculator", "DistilledTorchSimCalc", "load_artifact"]
__version__ = "0.1.0"
