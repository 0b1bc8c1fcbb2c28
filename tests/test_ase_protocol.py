"""ASE's calculator protocol, counted: one model evaluation per structure state, and no option
swallowed.

Every model call is counted by wrapping ``calc.model.evaluate`` (the one entry both ASE faces go
through), recording the positions and cell it was called on: a property getter on unchanged atoms
must reuse the last evaluation, a move must cost exactly one more, and inside ASE's optimizers and
integrators no state may be evaluated twice.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.filters import FrechetCellFilter
from ase.md.melchionna import MelchionnaNPT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.optimize import BFGS

from torchsim_distill.models.cu_au import rattled_alloy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Counted:
    """Wraps ``calc.model.evaluate``; ``states`` lists the (positions, cell) of every call."""

    def __init__(self, calc) -> None:
        self.states: list[tuple[bytes, bytes]] = []
        inner = calc.model.evaluate

        def evaluate(positions, atomic_numbers, cell, mol_idx, pbc=True):
            self.states.append((positions.numpy().tobytes(), cell.numpy().tobytes()))
            return inner(positions, atomic_numbers, cell, mol_idx, pbc)

        calc.model.evaluate = evaluate  # an instance attribute: this calculator's model only

    @property
    def calls(self) -> int:
        return len(self.states)

    @property
    def repeated(self) -> int:
        """Evaluations of a state evaluated before."""
        return len(self.states) - len(set(self.states))


def runtime_calc(student_pt2):
    from torchsim_distill.runtime.ase_calculator import DistilledCalculatorBase

    return DistilledCalculatorBase.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True)


def drop_in_calc(student_pt2):
    from torchsim_distill import DistilledCalculator

    return DistilledCalculator(model=student_pt2, device="cpu")


FACES = {"from_compiled_model": runtime_calc, "drop_in": drop_in_calc}


def every_getter(atoms) -> dict[str, object]:
    return {
        "energy": atoms.get_potential_energy(),
        "free_energy": atoms.get_potential_energy(force_consistent=True),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(),
        "stress_3x3": atoms.get_stress(voigt=False),
        "energies": atoms.get_potential_energies(),
        "via_calc": atoms.calc.get_property("forces", atoms),
    }


@pytest.mark.parametrize("face", FACES)
def test_one_evaluation_per_structure_state(face, student_pt2):
    calc = FACES[face](student_pt2)
    counted = Counted(calc)
    atoms = rattled_alloy((2, 2, 2), seed=11)
    atoms.calc = calc
    first = every_getter(atoms)
    every_getter(atoms)
    assert counted.calls == 1
    # what the model does not read changes nothing; an equal copy is the same state
    atoms.set_initial_magnetic_moments(np.ones(len(atoms)))
    twin = atoms.copy()
    twin.calc = calc
    every_getter(twin)
    assert counted.calls == 1

    atoms.positions[3] += [0.02, -0.01, 0.0]
    moved = every_getter(atoms)
    every_getter(atoms)
    assert counted.calls == 2
    # the reused results are the moved structure's, not stale ones: a fresh calculator agrees
    reference = atoms.copy()
    reference.calc = FACES[face](student_pt2)
    np.testing.assert_allclose(moved["forces"], reference.get_forces(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(moved["stress"], reference.get_stress(), rtol=0, atol=1e-12)
    assert moved["energy"] == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    assert not np.array_equal(moved["forces"], first["forces"])

    atoms.cell[0, 0] += 0.01  # a strain is a new state too
    every_getter(atoms)
    assert counted.calls == 3
    calc.reset()  # ASE's reset forgets the last state
    every_getter(atoms)
    assert counted.calls == 4


@pytest.mark.parametrize("face", FACES)
def test_bfgs_with_a_cell_filter_evaluates_once_per_step(face, student_pt2):
    """Each optimizer step asks the filter for forces (atoms' forces and stress) and the log for
    the energy: one evaluation per step, not one per getter."""
    atoms = rattled_alloy((2, 2, 2), seed=12, rattle=0.1)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    atoms.calc = FACES[face](student_pt2)
    counted = Counted(atoms.calc)
    forces_asked = []
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.attach(lambda: forces_asked.append(1))
    opt.run(fmax=0.05, steps=20)
    assert opt.nsteps >= 5  # it did work
    assert counted.repeated == 0, counted.repeated
    # one evaluation for the start and one per step taken (the attached observer runs once per
    # state the optimizer evaluated, the initial one included)
    assert counted.calls == len(forces_asked) == opt.nsteps + 1


def test_an_npt_step_evaluates_each_state_once(student_pt2):
    atoms = rattled_alloy((2, 2, 2), seed=13, rattle=0.02)
    atoms.calc = drop_in_calc(student_pt2)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    counted = Counted(atoms.calc)
    dyn = MelchionnaNPT(atoms, 1.0 * units.fs, temperature_K=300, externalstress=0.0,
                       ttime=25 * units.fs, pfactor=(75 * units.fs) ** 2 * 100 * units.GPa)
    dyn.run(3)
    assert counted.repeated == 0
    # the first step initialises (one state), then one new state per step
    assert counted.calls == 4, counted.calls


def test_unknown_keywords_are_refused_before_loading(student_pt2, tmp_path):
    from torchsim_distill import DistilledCalculator
    from torchsim_distill.runtime import ase_calculator

    with pytest.raises(TypeError, match=r"unexpected keyword argument 'uncertainity' \(did you mean 'uncertainty'\?\); "
                                        r"it accepts model, device, dtype, skin, uncertainty, dispersion, functional, restart, "
                                        r"ignore_bad_restart_file, label, atoms, directory"):
        DistilledCalculator(model="no-such-student", uncertainity=True)  # refused before the name is looked up
    with pytest.raises(TypeError, match=r"unexpected keyword arguments 'dispersoin' \(did you mean 'dispersion'\?\), 'functionel'"):
        DistilledCalculator(model=student_pt2, dispersoin="d3bj", functionel="pbe")
    assert DistilledCalculator.accepted_keywords()[:5] == ["model", "device", "dtype", "skin", "uncertainty"]

    atoms = rattled_alloy((1, 1, 1), seed=14)
    calc = DistilledCalculator(model=student_pt2, label="run", directory=tmp_path, atoms=atoms)  # ASE's own pass
    assert atoms.calc is calc and calc.directory == str(tmp_path)
    assert calc.todict() == {"model": str(student_pt2), "device": "cpu", "dtype": None, "skin": 0.3, "uncertainty": False}
    calc.set(skin=0.3)  # unchanged: fine
    with pytest.raises(ValueError, match="skin cannot change after construction"):
        calc.set(skin=0.5)
    with pytest.raises(TypeError, match="'uncertainity'"):
        calc.set(uncertainity=True)

    runtime = runtime_calc(student_pt2)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'skin'; it accepts model, restart"):
        ase_calculator.DistilledCalculatorBase(runtime.model, skin=0.3)


def test_what_evaluate_keeps_between_calls_follows_the_inputs(student_pt2):
    """The species, cells and system index are checked once and reused while they stay equal, even
    when a caller rewrites its buffers in place: a change gives the answer of a fresh calculator,
    and a bad cell is refused after good ones."""
    from torchsim_distill import DistilledTorchSimCalc
    from torchsim_distill.runtime.checks import InvalidStructureError

    def fresh():
        return DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True, skin=0.3)

    calc = fresh()
    atoms = rattled_alloy((2, 2, 1), seed=15)
    pos, numbers = torch.from_numpy(atoms.positions.copy()), torch.from_numpy(atoms.numbers.copy())
    cell, idx, pbc = torch.from_numpy(atoms.cell.array.copy()).unsqueeze(0), torch.zeros(len(atoms), dtype=torch.long), True
    calc.evaluate(pos, numbers, cell, idx, pbc)
    numbers[:3] = 79 if int(numbers[0]) == 29 else 29  # in place: other elements
    cell[0, 2, 2] += 0.05
    for changed in (calc.evaluate(pos, numbers, cell, idx, pbc), calc.evaluate(pos, numbers, cell, idx, pbc)):
        expected = fresh().evaluate(pos, numbers, cell, idx, pbc)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(changed[key], expected[key], rtol=0, atol=1e-12)
    cell.zero_()
    with pytest.raises(InvalidStructureError, match="periodic .* but its cell has no volume"):
        calc.evaluate(pos, numbers, cell, idx, pbc)
    with pytest.raises(ValueError, match="mol_idx must lie in 0..0"):
        calc.evaluate(pos, numbers, torch.from_numpy(atoms.cell.array).unsqueeze(0), idx + 1, pbc)
