"""torchsim_distill: distil foundation interatomic potentials into fast compiled students.

    from torchsim_distill import DistilledTorchSimCalc, DistilledCalculator
    calc = DistilledTorchSimCalc.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
    atoms.calc = DistilledCalculator.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
"""

from torchsim_distill.runtime.artifact import ArtifactError, CompiledArtifact, load_artifact
from torchsim_distill.runtime.ase_calculator import DistilledCalculator
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

__all__ = ["ArtifactError", "CompiledArtifact", "DistilledCalculator", "DistilledTorchSimCalc", "load_artifact"]
__version__ = "0.1.0"
