"""Students by name, and the one-line swap of a teacher's ASE calculator for a student's.

The registry (names, aliases, other packages' entry points, paths), ``load_student`` and
``DistilledCalculator(model=..., device=...)`` are checked against the calculators they
must equal; the drop-in script is a teacher's MD script run with its calculator line
swapped, checked against SevenNet-0 itself.
"""

from __future__ import annotations

import re
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from ase.build import fcc111
from ase.cluster import Octahedron

from torchsim_distill.models.cu_au import rattled_alloy
from torchsim_distill.models.default import DEFAULT_PACKAGE
from torchsim_distill.models.registry import UnknownStudentError, load_student, resolve_student, students


@pytest.fixture
def user_defaults():
    """torch's own default dtype (float32), as in a user's script (the suite runs in float64,
    in which SevenNet-0's checkpoint does not load)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def plugin_student(tmp_path, monkeypatch, student_ckpt):
    """An installed package registering the session's toy student as 'toy-emt' through the
    entry-point group, as a real distribution on sys.path (found by importlib.metadata)."""
    dist = tmp_path / "fake_students-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-students\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[torchsim_distill.students]\ntoy-emt = fake_students:student_file\nbroken = fake_students:missing\n"
    )
    (tmp_path / "fake_students.py").write_text(f"def student_file():\n    return {str(student_ckpt)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy-emt"
    sys.modules.pop("fake_students", None)


def test_the_shipped_student_has_a_name_and_an_alias():
    known = students()
    assert known["cu-au-sevennet0"].package == DEFAULT_PACKAGE
    assert resolve_student("default") == resolve_student("cu-au-sevennet0") == DEFAULT_PACKAGE
    assert resolve_student("cu-au-sevennet0-small") == DEFAULT_PACKAGE  # today's default is the small one
    info = known["cu-au-sevennet0"].describe()
    assert (info["teacher"], info["species"], info["size"]) == ("sevennet-0", ["Au", "Cu"], "small")
    assert info["aliases"] == ["default", "cu-au-sevennet0-small"]


def test_unknown_names_and_folders_say_what_would_work(tmp_path):
    with pytest.raises(UnknownStudentError, match=r"'nope' is not a known student and no such file exists; give one of "
                                                  r"cu-au-sevennet0, cu-au-sevennet0-small \(= cu-au-sevennet0\), "
                                                  r"default \(= cu-au-sevennet0\), or a path to a \.nequip\.zip"):
        resolve_student("nope")
    with pytest.raises(UnknownStudentError, match="is a folder; give a student's name or a path"):
        resolve_student(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(UnknownStudentError, match=r"the file is none of \.nequip\.zip, \.ckpt, \.nequip\.pt2"):
        resolve_student(tmp_path / "model.pt")


def test_students_of_other_packages_load_by_name(plugin_student, calc, student_ckpt, caplog):
    known = students()
    assert known[plugin_student].package == student_ckpt
    assert known[plugin_student].source == "fake-students (entry point)"
    assert "broken" not in known and "student 'broken'" in caplog.text  # a broken plug-in is named, not fatal
    by_name = load_student(plugin_student, skin=None)
    state_atoms = [rattled_alloy((1, 1, 2), seed=3), rattled_alloy((2, 1, 1), seed=4)]
    import torch_sim as ts

    state = ts.io.atoms_to_state(state_atoms, "cpu", torch.float64)
    a, b = by_name(state), calc(state)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])


def test_the_models_command_lists_and_shows(plugin_student, capsys):
    from torchsim_distill.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    shipped = r"cu-au-sevennet0 \(default, cu-au-sevennet0-small\)\s+sevennet-0\s+Au-Cu\s+small\s+5\s+\d+ gates fail"
    assert re.search(shipped + r"\s+torchsim_distill", out), out
    assert re.search(r"toy-emt\s+\?\s+\?\s+\?\s+\?\s+none\s+fake-students \(entry point\)", out), out
    assert main(["models", "show", "default"]) == 0
    out = capsys.readouterr().out
    assert "student 'broken'" in out and DEFAULT_PACKAGE.with_name("model_card.md").read_text().strip() in out
    assert main(["models", "show", "toy-emt"]) == 1
    assert "has no model card" in capsys.readouterr().err
    assert main(["models", "show", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a known student" in err


def test_drop_in_calculator_by_name_equals_the_runtime_one_and_rebuilds_from_todict(plugin_student, calc):
    from torchsim_distill import DistilledCalculator
    from torchsim_distill.runtime import ase_calculator

    atoms = rattled_alloy((1, 1, 2), seed=5)
    atoms.calc = DistilledCalculator(model=plugin_student, device="cpu", skin=0.2)
    params = atoms.calc.todict()
    assert params == {"model": "toy-emt", "device": "cpu", "dtype": None, "skin": 0.2, "uncertainty": False}
    reference = atoms.copy()
    reference.calc = ase_calculator.DistilledCalculatorBase(calc)
    rebuilt = atoms.copy()
    rebuilt.calc = type(atoms.calc)(**params)  # what ASE tools that rebuild calculators do
    for other in (reference, rebuilt):
        assert other.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(other.get_forces(), atoms.get_forces(), atol=1e-10)
    # the teacher's property calls, same shapes
    assert atoms.get_forces().shape == (len(atoms), 3) and atoms.get_stress().shape == (6,)
    assert atoms.get_stress(voigt=False).shape == (3, 3) and atoms.get_potential_energies().shape == (len(atoms),)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)


def test_the_front_doors_calculator_wraps_a_ready_torch_sim_calculator(calc):
    """``DistilledCalculator(calc)`` (no name: nothing known of its training data) evaluates
    periodic cells and clusters alike, without a warning, as the runtime's face does."""
    from torchsim_distill import DistilledCalculator

    cluster = rattled_alloy((1, 1, 1), seed=6)
    cluster.pbc = False
    cluster.cell[:] = 0.0
    cluster.calc = DistilledCalculator(calc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isfinite(cluster.get_potential_energy())
    assert not [w for w in caught if "trained on periodic cells only" in str(w.message)]
    assert cluster.calc.todict() == {}


def test_drop_in_calculator_refuses_what_it_cannot_do(plugin_student, calc, monkeypatch):
    from torchsim_distill import DistilledCalculator

    with pytest.raises(ValueError, match="is a float64 model, not float32; leave dtype=None"):
        DistilledCalculator(model=plugin_student, dtype="float32")
    with pytest.raises(ValueError, match="dtype must be None, 'float32' or 'float64'"):
        DistilledCalculator(model=plugin_student, dtype="half")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda' is not available here \(torch sees no CUDA GPU\); use device='cpu'"):
        DistilledCalculator(model=plugin_student, device="cuda")
    with pytest.raises(ValueError, match="give device, dtype, skin and uncertainty to the DistilledTorchSimCalc"):
        DistilledCalculator(calc, skin=0.1)
    with pytest.raises(ValueError, match="has no committee, so it gives no uncertainty"):
        DistilledCalculator(model=plugin_student, uncertainty=True)


def test_slabs_match_the_teacher_and_clusters_say_they_are_outside_the_training_data(user_defaults):
    """The default student on a Cu–Au slab is as close to SevenNet-0 as on bulk; on a cluster (no periodic
    direction: never in its training data) it warns, and stress is refused with the reason
    (SevenNet-0 divides by a zero volume there and returns numbers)."""
    from ase.calculators.calculator import PropertyNotImplementedError
    from sevenn.calculator import SevenNetCalculator

    from torchsim_distill import DistilledCalculator

    student, teacher = DistilledCalculator(model="default", skin=None), SevenNetCalculator(model="7net-0", device="cpu")
    slab = fcc111("Cu", (2, 2, 3), a=3.61, vacuum=6.0)
    slab.symbols[[0, 5]] = "Au"
    results = []
    for calc in (student, teacher):
        s = slab.copy()
        s.calc = calc
        results.append((s.get_potential_energy() / len(s), s.get_forces(), s.get_stress()))
    # no surface was in its training data: as close as on its held-out bulk frames (card: 13.4
    # meV/atom, 149 meV/Å over all of them); measured here 13 meV/atom and 50 meV/Å
    assert abs(results[0][0] - results[1][0]) < 0.02  # eV/atom
    assert np.abs(results[0][1] - results[1][1]).mean() < 0.07  # eV/Å
    assert results[0][2].shape == results[1][2].shape == (6,)  # a slab's cell has volume: stress is given
    cluster = Octahedron("Cu", 3)
    cluster.symbols[0] = "Au"
    cluster.calc = student
    with pytest.warns(UserWarning, match="trained on periodic cells only; this structure has no periodic direction"):
        energy = cluster.get_potential_energy()
    assert np.isfinite(energy)
    with pytest.raises(PropertyNotImplementedError, match="stress needs a cell with volume"):
        cluster.get_stress()
    with warnings.catch_warnings(record=True) as caught:  # once per calculator, not every step
        warnings.simplefilter("always")
        cluster.positions[0, 0] += 0.01
        cluster.get_forces()
    assert not [w for w in caught if "trained on periodic cells only" in str(w.message)]


#: A user's MD script written for SevenNet-0's ASE calculator: NVE, Langevin, NPT, then a
#: relaxation of positions and cell. The drop-in test runs it as it is and with its
#: calculator line (and that line's import) swapped, nothing else.
TEACHER_SCRIPT = textwrap.dedent('''
    import numpy as np
    from ase import units
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator(model="7net-0", device="cpu")

    atoms = bulk("Cu", "fcc", a=3.70, cubic=True)  # L1_2 Cu3Au, 4 atoms
    atoms.symbols[0] = "Au"
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    Stationary(atoms)
    nve = []
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(lambda: nve.append((atoms.get_potential_energy(), atoms.get_total_energy(), atoms.get_positions())))
    dyn.run(100)
    props = {
        "energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress(),
        "stress_3x3": atoms.get_stress(voigt=False), "energies": atoms.get_potential_energies(),
    }
    Langevin(atoms, 2.0 * units.fs, temperature_K=300, friction=0.02, rng=np.random.default_rng(1)).run(10)
    NPTBerendsen(atoms, 2.0 * units.fs, temperature_K=300, pressure_au=1.0 * units.bar, taut=100 * units.fs,
                 taup=500 * units.fs, compressibility_au=7e-7 / units.bar).run(10)
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=60)
    relaxed = (atoms.get_volume() / len(atoms), float(np.abs(atoms.get_forces()).max()))
''')
SWAP = {
    "from sevenn.calculator import SevenNetCalculator": "from torchsim_distill import DistilledCalculator",
    'calc = SevenNetCalculator(model="7net-0", device="cpu")': 'calc = DistilledCalculator(model="default", device="cpu")',
}
#: Tolerances of the student's first 100 NVE steps against the teacher's (600 K, 1 fs):
#: its near-equilibrium force error (~30 meV/Å on the card) moves atoms ~0.5·(ΔF/m)·t² ≈ 0.02 Å
#: in 100 fs; its potential-energy changes follow the teacher's to a few meV/atom.
NVE_POSITIONS = 0.05  # Å, max over atoms and steps
NVE_ENERGY_CHANGE = 0.005  # eV/atom, of E_pot(t) - E_pot(0)
NVE_DRIFT = 0.001  # eV/atom, of the total energy over the 100 steps


@pytest.mark.slow
def test_a_teacher_md_script_runs_with_only_its_calculator_line_changed(user_defaults):
    student_script = TEACHER_SCRIPT
    for old, new in SWAP.items():
        assert student_script.count(old) == 1
        student_script = student_script.replace(old, new)
    changed = [a for a, b in zip(TEACHER_SCRIPT.splitlines(), student_script.splitlines(), strict=True) if a != b]
    assert len(changed) == 2  # the calculator line and its import
    runs = {}
    for who, script in (("teacher", TEACHER_SCRIPT), ("student", student_script)):
        scope: dict = {}
        exec(compile(script, f"<{who} script>", "exec"), scope)
        runs[who] = scope
    t, s = runs["teacher"], runs["student"]
    n = 4
    pos_t, pos_s = (np.array([p for _, _, p in r["nve"]]) for r in (t, s))
    epot_t, epot_s = (np.array([e for e, _, _ in r["nve"]]) for r in (t, s))
    etot_s = np.array([e for _, e, _ in s["nve"]])
    assert np.abs(pos_s - pos_t).max() < NVE_POSITIONS
    assert np.abs((epot_s - epot_s[0]) - (epot_t - epot_t[0])).max() / n < NVE_ENERGY_CHANGE
    assert np.abs(etot_s - etot_s[0]).max() / n < NVE_DRIFT
    for key, value in t["props"].items():  # same property calls, same shapes and kinds
        assert np.shape(s["props"][key]) == np.shape(value), key
    assert s["relaxed"][1] < 0.05 and s["relaxed"][0] == pytest.approx(t["relaxed"][0], rel=0.02)


def test_one_public_ase_calculator():
    """``torchsim_distill.DistilledCalculator`` and the runtime's old name for it are one class
    (the old name warns); the runtime's own class is its base, named so."""
    import torchsim_distill
    from torchsim_distill import runtime
    from torchsim_distill.runtime.ase_calculator import DistilledCalculatorBase

    with pytest.warns(DeprecationWarning, match="torchsim_distill.DistilledCalculator"):
        old = runtime.DistilledCalculator
    assert old is torchsim_distill.DistilledCalculator
    with pytest.warns(DeprecationWarning):
        from torchsim_distill.runtime.ase_calculator import DistilledCalculator
    assert DistilledCalculator is old and issubclass(old, DistilledCalculatorBase)
