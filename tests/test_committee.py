"""Committee uncertainty: the spread formulas, the runtime faces (torch-sim and ASE),
calibration and the relax job's column. The distill layer is imported only by the
tests that use it, so the runtime's tests do not depend on it.

Fast tests use the session student and *fake* members: the same compiled runner behind
a CompiledArtifact whose runner is wrapped (to count calls, share inputs, raise, or
push Au atoms' forces by a known amount). The slow ones train and compile a second toy
student (seed 1) once per module.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from scipy.stats import spearmanr

from torchsim_distill import DistilledCalculator
from torchsim_distill.models.cu_au import rattled_alloy
from torchsim_distill.runtime.artifact import ArtifactError
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.runtime.committee import energy_spread, force_spread, max_per_system

CPU = torch.device("cpu")
#: force offset (eV/Å, along x) the fake member adds on Au atoms: spread c/2 there for K = 2
AU_PUSH = 1.0


def batch():
    """Three cells of different sizes, one pure Cu."""
    pure_cu = rattled_alloy((1, 1, 1), seed=3, x_au=0.0)
    return [rattled_alloy((1, 1, 1), seed=1), rattled_alloy((1, 1, 2), seed=2), pure_cu]


def new_calc(main, **options) -> DistilledTorchSimCalc:
    return DistilledTorchSimCalc(main, chemical_species_to_atom_type_map=True, **options)


def fake_member(artifact, runner, name: str = "fake-member.nequip.pt2"):
    return dataclasses.replace(artifact, model=runner, path=Path(name))


def au_pushing_member(artifact):
    """A member equal to the main student except for +AU_PUSH eV/Å along x on Au atoms."""
    from nequip.data import AtomicDataDict as K

    types, forces = artifact.input_keys.index(K.ATOM_TYPE_KEY), artifact.output_keys.index(K.FORCE_KEY)
    au = artifact.type_names.index("Au")

    def runner(args):
        out = list(artifact.model(args))
        is_au = (args[types].reshape(-1) == au).to(out[forces].dtype)
        out[forces] = out[forces] + AU_PUSH * is_au[:, None] * torch.tensor([1.0, 0.0, 0.0], dtype=out[forces].dtype)
        return out

    return fake_member(artifact, runner, "au-pusher.nequip.pt2")


# -- formulas ------------------------------------------------------------------------------


def test_spreads_against_hand_computed_numbers():
    # K = 3 members, N = 3 atoms
    forces = torch.zeros(3, 3, 3, dtype=torch.float64)
    forces[:, 0, 0] = torch.tensor([0.0, 0.0, 3.0])  # mean 1, deviations -1, -1, 2: sqrt(6/3)
    forces[:, 1] = torch.tensor([1.0, 2.0, 3.0])  # all agree: 0
    forces[1, 2, 1] = 4.0  # mean (0, 4/3, 0): squared deviations 16/9, 64/9, 16/9 -> sqrt(32/9)
    sigma = force_spread(forces)
    torch.testing.assert_close(sigma, torch.tensor([math.sqrt(2), 0.0, math.sqrt(32) / 3], dtype=torch.float64))

    # atoms 0, 1 in structure 1, atom 2 in structure 0, structure 2 empty
    per_structure = max_per_system(sigma, torch.tensor([1, 1, 0]), 3)
    torch.testing.assert_close(per_structure, torch.tensor([math.sqrt(32) / 3, math.sqrt(2), 0.0], dtype=torch.float64))

    energies = torch.tensor([[2.0, 4.0], [4.0, 4.0], [6.0, 10.0]], dtype=torch.float64)  # [K=3, B=2]
    # per atom (n = 2, 1): (1, 2, 3) -> sqrt(2/3); (4, 4, 10) -> sqrt((4 + 4 + 16) / 3)
    torch.testing.assert_close(
        energy_spread(energies, torch.tensor([2, 1])), torch.tensor([math.sqrt(2 / 3), math.sqrt(8)], dtype=torch.float64)
    )
    np.testing.assert_allclose(energy_spread(energies, torch.tensor([2, 1])).numpy(), np.std(energies.numpy() / [2, 1], axis=0))
    # a committee of one has no spread
    assert force_spread(forces[:1]).abs().max() == 0
    with pytest.raises(ValueError, match=r"\[K, N, 3\]"):
        force_spread(forces[0])


# -- the calculator ------------------------------------------------------------------------


def test_committee_of_itself_gives_zero_uncertainty(calc, student_pt2):
    state = ts.io.atoms_to_state(batch(), CPU, torch.float64)
    twin = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, committee=[student_pt2], uncertainty=True
    )
    out, plain = twin(state), calc(state)
    assert out["uncertainty"].shape == out["energy_uncertainty"].shape == (3,)
    assert out["uncertainty"].abs().max() < 1e-10 and out["energy_uncertainty"].abs().max() < 1e-10
    for key in ("energy", "forces", "stress", "energies"):  # the main student's, untouched
        torch.testing.assert_close(out[key], plain[key], rtol=0, atol=1e-12)
    assert "uncertainty" not in plain


def test_members_share_the_main_inputs_and_the_spread_is_exact(calc):
    """Each member runs once per call on the very tensors the main student got (one neighbor
    list); a member pushing Au atoms by c gives spread c/2 exactly where there is Au."""
    main_args, member_args = [], []
    main = fake_member(calc.artifact, lambda args: main_args.append(args) or calc.artifact.model(args), "main.nequip.pt2")
    pusher = au_pushing_member(calc.artifact)
    member = fake_member(pusher, lambda args: member_args.append(args) or pusher.model(args))
    committee_calc = new_calc(main, committee=[member], uncertainty=True)
    frames = batch()
    out = committee_calc(ts.io.atoms_to_state(frames, CPU, torch.float64))
    assert len(main_args) == len(member_args) == 1
    assert all(a is b for a, b in zip(main_args[0], member_args[0], strict=True))  # same tensors, no rebuild
    has_au = torch.tensor([("Au" in atoms.symbols) for atoms in frames])
    torch.testing.assert_close(out["uncertainty"], torch.where(has_au, AU_PUSH / 2, 0.0).double(), rtol=0, atol=1e-12)
    assert out["energy_uncertainty"].abs().max() < 1e-12  # energies agree


def test_off_by_default_calls_no_member(calc, student_pt2):
    def broken(args):
        raise RuntimeError("member was called")

    member = fake_member(calc.artifact, broken)
    off = new_calc(calc.artifact, committee=[member])
    state = ts.io.atoms_to_state(batch(), CPU, torch.float64)
    out = off(state)
    assert not off.uncertainty and "uncertainty" not in out and "energy_uncertainty" not in out
    torch.testing.assert_close(out["forces"], calc(state)["forces"], rtol=0, atol=0)
    off.uncertainty = True  # switched on after construction: now the member runs
    with pytest.raises(RuntimeError, match="member was called"):
        off(state)
    # from_compiled_model passes both options on
    loaded = DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True, committee=[member])
    assert len(loaded.committee) == 1 and not loaded.uncertainty
    loaded(state)


def test_uncertainty_without_committee_is_refused(calc):
    with pytest.raises(ValueError, match="needs a committee"):
        new_calc(calc.artifact, uncertainty=True)
    plain = new_calc(calc.artifact)
    with pytest.raises(ValueError, match="needs a committee"):
        plain.uncertainty = True
    plain.uncertainty = False  # asking for nothing is fine


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"type_names": ["Cu", "Au"]}, "type_names"),
        ({"r_max": 5.0}, "r_max"),
        ({"per_edge_type_cutoff": {"Au": {"Au": 4.5, "Cu": 4.0}, "Cu": {"Au": 4.0, "Cu": 4.5}}}, "per_edge_type_cutoff"),
        ({"target": "ase"}, "target"),
        ({"device": torch.device("cuda")}, "device"),
    ],
)
def test_mismatched_member_is_refused_by_name(calc, change, named):
    member = dataclasses.replace(calc.artifact, path=Path("odd-member.nequip.pt2"), **change)
    with pytest.raises(ArtifactError, match=rf"odd-member\.nequip\.pt2.*{named}"):
        new_calc(calc.artifact, committee=[member])


def test_ase_face_returns_the_torch_sim_numbers(calc):
    committee_calc = new_calc(calc.artifact, committee=[au_pushing_member(calc.artifact)], uncertainty=True)
    frames = batch()
    expected = committee_calc(ts.io.atoms_to_state(frames, CPU, torch.float64))
    ase_calc = DistilledCalculator(committee_calc)
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = ase_calc
        atoms.get_potential_energy()
        assert isinstance(ase_calc.results["uncertainty"], float)
        assert ase_calc.results["uncertainty"] == pytest.approx(float(expected["uncertainty"][k]), abs=1e-12)
        assert ase_calc.results["energy_uncertainty"] == pytest.approx(float(expected["energy_uncertainty"][k]), abs=1e-12)
        assert ase_calc.get_property("uncertainty", atoms) == ase_calc.results["uncertainty"]
    for result, k in zip(ase_calc.evaluate_batch(frames), range(3), strict=True):
        assert result["uncertainty"] == pytest.approx(float(expected["uncertainty"][k]), abs=1e-12)
    # off: unchanged results, and asking for uncertainty says it is not there
    plain = DistilledCalculator(calc)
    atoms = frames[0].copy()
    atoms.calc = plain
    atoms.get_potential_energy()
    assert set(plain.results) == {"energy", "free_energy", "forces", "energies", "stress"}
    with pytest.raises(PropertyNotImplementedError):
        plain.get_property("uncertainty", atoms)


# -- calibration ---------------------------------------------------------------------------


def test_calibrate_on_synthetic_data():
    from torchsim_distill.distill.calibration import calibrate, spearman

    u = np.array([0.1, 0.5, 0.2, 0.9, 0.05])
    assert calibrate(u, 2 * u + 1, threshold=0.3)["spearman"] == pytest.approx(1.0)
    assert calibrate(u, -u, threshold=0.3)["spearman"] == pytest.approx(-1.0)
    ties = np.array([1.0, 1.0, 2.0, 3.0, 3.0])
    assert spearman(ties, u) == pytest.approx(spearmanr(ties, u).statistic)
    assert math.isnan(spearman(np.ones(5), u))

    err = np.array([0.1, 0.4, 0.5, 0.2, 0.35])
    # flagged (u > 0.3): frames 1, 3; bad (err > 0.3): frames 1, 2, 4
    report = calibrate(u, err, threshold=0.3, error_level=0.3)
    assert report["recall"] == pytest.approx(1 / 3)  # of the bad frames, only 1 is flagged
    assert report["precision"] == pytest.approx(1 / 2)
    assert report["flagged_fraction"] == pytest.approx(2 / 5)
    assert (report["n_frames"], report["n_bad"], report["n_flagged"]) == (5, 3, 2)
    nothing = calibrate(u, err, threshold=1.0, error_level=1.0)
    assert math.isnan(nothing["recall"]) and math.isnan(nothing["precision"]) and nothing["flagged_fraction"] == 0
    with pytest.raises(ValueError, match="1-D"):
        calibrate(u, err[:3], threshold=0.3)


def test_per_structure_force_error():
    from torchsim_distill.distill.calibration import per_structure_force_error

    ref = np.zeros((5, 3))
    pred = np.zeros((5, 3))
    pred[0] = [3.0, 4.0, 0.0]  # |ΔF| = 5 in structure 0 (atoms 0, 1)
    pred[1] = [1.0, 0.0, 0.0]
    pred[4] = [0.0, 0.0, -2.0]  # structure 2 (atoms 3, 4)
    np.testing.assert_allclose(per_structure_force_error(ref, pred, [2, 1, 2]), [5.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="sum"):
        per_structure_force_error(ref, pred, [2, 2])


def test_committee_uncertainty_cuts_batches_where_pbc_changes(calc):
    from torchsim_distill.distill.calibration import committee_uncertainty

    slab = rattled_alloy((2, 2, 1), seed=7)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    frames = batch()[:2] + [slab] + batch()[2:]
    committee_calc = new_calc(calc.artifact, committee=[au_pushing_member(calc.artifact)])
    result = committee_uncertainty(committee_calc, frames, batch_size=2)
    assert not committee_calc.uncertainty  # switched on only for its calls
    has_au = np.array([("Au" in atoms.symbols) for atoms in frames])
    np.testing.assert_allclose(result["uncertainty"], np.where(has_au, AU_PUSH / 2, 0.0), atol=1e-12)
    assert result["forces"].shape == (sum(len(a) for a in frames), 3)
    np.testing.assert_array_equal(result["n_atoms"], [len(a) for a in frames])
    one_by_one = [calc(ts.io.atoms_to_state([a], CPU, torch.float64))["forces"].numpy() for a in frames]
    np.testing.assert_allclose(result["forces"], np.concatenate(one_by_one), atol=1e-10)
    with pytest.raises(ValueError, match="needs a calculator built with committee"):
        committee_uncertainty(calc, frames)


# -- relax ---------------------------------------------------------------------------------


def test_relax_writes_the_uncertainty_column_and_warns(calc, tmp_path, caplog):
    from torchsim_distill.jobs.relax import RESULT_COLUMNS, relax_structures

    calls = []
    pusher = au_pushing_member(calc.artifact)
    member = fake_member(pusher, lambda args: calls.append(1) or pusher.model(args))
    committee_calc = new_calc(calc.artifact, committee=[member], uncertainty=True)
    frames = [rattled_alloy((1, 1, 1), seed=40, rattle=0.1), rattled_alloy((1, 1, 1), seed=41, x_au=0.0, rattle=0.1)]
    frames[0].info["id"], frames[1].info["id"] = "alloy", "pure-cu"
    with caplog.at_level(logging.WARNING, logger="torchsim_distill.jobs.relax"):
        summary = relax_structures(frames, committee_calc, tmp_path / "on", cell_filter=None, max_steps=20, progress=False)
    assert committee_calc.uncertainty  # restored after the run
    assert len(calls) == 1  # the committee runs once, at the end, not every FIRE step
    assert [r.uncertainty for r in summary.structures] == pytest.approx([AU_PUSH / 2, 0.0], abs=1e-12)
    with open(tmp_path / "on" / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == [*RESULT_COLUMNS, "uncertainty"]
    assert [float(r["uncertainty"]) for r in rows] == pytest.approx([AU_PUSH / 2, 0.0], abs=1e-12)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "alloy" in warnings[0] and "pure-cu" not in warnings[0]

    # a higher threshold: no warning; uncertainty off: the CSV is as before
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchsim_distill.jobs.relax"):
        relax_structures(frames, committee_calc, tmp_path / "high", cell_filter=None, max_steps=5,
                         progress=False, uncertainty_threshold=AU_PUSH)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    committee_calc.uncertainty = False
    relax_structures(frames, committee_calc, tmp_path / "off", cell_filter=None, max_steps=5, progress=False)
    with open(tmp_path / "off" / "results.csv", newline="") as fh:
        assert csv.DictReader(fh).fieldnames == list(RESULT_COLUMNS)
    assert len(calls) == 2  # once for "high", never for "off"


# -- a second, differently trained student (slow: trains and compiles once) -----------------


@pytest.fixture(scope="module")
def second_pt2() -> Path:
    from torchsim_distill.bench.toy import toy_student
    from torchsim_distill.compile import cached_compile

    return cached_compile(toy_student(size="tiny", n_train=40, n_val=8, max_epochs=10, seed=1), device="cpu", target="batch")


def training_like(n: int = 4):
    from torchsim_distill.bench.toy import emt_cu_au_frames

    return emt_cu_au_frames(n, seed=1000)


def far_from_training(frames):
    """The same cells compressed by 12 % and rattled by 0.25 Å."""
    out = []
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell * 0.88, scale_atoms=True)
        atoms.rattle(0.25, seed=k)
        atoms.calc = None
        out.append(atoms)
    return out


@pytest.mark.slow
def test_two_students_disagree_more_far_from_the_training_data(student_pt2, second_pt2):
    committee_calc = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, committee=[second_pt2], uncertainty=True
    )
    near, far = training_like(), far_from_training(training_like())
    u_near = committee_calc(ts.io.atoms_to_state(near, CPU, torch.float64))["uncertainty"]
    u_far = committee_calc(ts.io.atoms_to_state(far, CPU, torch.float64))["uncertainty"]
    assert (u_near > 0).all() and (u_far > 0).all()
    assert u_far.min() > u_near.max(), (u_near, u_far)


@pytest.mark.slow
def test_uncertainty_equals_an_independent_computation(student_pt2, second_pt2):
    """Separate calculators, one per member (their own neighbor lists): forces stacked, formulas in numpy."""
    frames = training_like(2) + far_from_training(training_like(2))
    state = ts.io.atoms_to_state(frames, CPU, torch.float64)
    members = [DistilledTorchSimCalc.from_compiled_model(p, chemical_species_to_atom_type_map=True) for p in (student_pt2, second_pt2)]
    outs = [m(state) for m in members]
    forces = np.stack([o["forces"].numpy() for o in outs])  # [K, N, 3]
    sigma = np.sqrt(((forces - forces.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
    system_idx = state.system_idx.numpy()
    expected_u = np.array([sigma[system_idx == s].max() for s in range(len(frames))])
    n_atoms = np.array([len(a) for a in frames])
    expected_e = np.std(np.stack([o["energy"].numpy() for o in outs]) / n_atoms, axis=0)

    committee_calc = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, committee=[second_pt2], uncertainty=True
    )
    out = committee_calc(state)
    np.testing.assert_allclose(out["uncertainty"].numpy(), expected_u, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out["energy_uncertainty"].numpy(), expected_e, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["forces"].numpy(), forces[0], atol=1e-12)

    # the ASE face (with its default skin) gives the same number
    ase_calc = DistilledCalculator.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, committee=[second_pt2], uncertainty=True
    )
    atoms = frames[-1].copy()
    atoms.calc = ase_calc
    assert ase_calc.get_property("uncertainty", atoms) == pytest.approx(expected_u[-1], rel=1e-9)


@pytest.mark.slow
def test_calibration_against_emt(student_pt2, second_pt2):
    """On near and far frames, uncertainty ranks the true force error (EMT) and flags the bad frames."""
    from torchsim_distill.distill.calibration import (
        calibrate,
        committee_uncertainty,
        per_structure_force_error,
    )

    committee_calc = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, committee=[second_pt2]
    )
    frames = training_like(6) + far_from_training(training_like(6))
    result = committee_uncertainty(committee_calc, frames)
    reference = np.concatenate([EMT().get_forces(atoms.copy()) for atoms in frames])
    error = per_structure_force_error(reference, result["forces"], result["n_atoms"])
    # the tiny students miss EMT by 0.4-0.7 eV/Å near their data and by ~100 eV/Å far from it
    # (EMT's repulsion at 12 % compression): bad means > 1 eV/Å here
    report = calibrate(result["uncertainty"], error, threshold=float(np.median(result["uncertainty"])), error_level=1.0)
    assert report["spearman"] > 0.5, report  # measured 0.73: the far frames rank above the near ones
    assert report["n_bad"] == 6 and report["recall"] == 1.0 and report["precision"] == 1.0, report


@pytest.mark.slow
def test_distorted_frames_are_judged_apart_with_the_committees_flags(student_pt2, second_pt2):
    """The card's strongly distorted section: force MAE as computed independently from EMT,
    its gate, and the committee's recall of the badly predicted frames (all of them here)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from torchsim_distill.distill.evaluation import Gates, split_distorted
    from torchsim_distill.distill.properties import shortest_bond
    from torchsim_distill.distill.sections import distorted_section

    committee_calc = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map=True, committee=[second_pt2]
    )
    frames = []
    for atoms in training_like(3) + far_from_training(training_like(3)):
        emt = atoms.copy()
        emt.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=emt.get_potential_energy(), forces=emt.get_forces(),
                                           stress=emt.get_stress())
        frames.append(atoms)
    gates = Gates(distorted_force_mae=150.0, distorted_distance=2.0, distorted_flag_recall=1.0)
    near, distorted = split_distorted(frames, gates)
    assert all(shortest_bond(a) >= 2.0 for a in near) and all(shortest_bond(a) < 2.0 for a in distorted)
    assert len(distorted) >= 2 and len(near) >= 3  # the compressed, rattled copies are the distorted ones
    assert split_distorted(frames, Gates()) == (frames, [])  # no distorted gate: one set of frames

    section = distorted_section(committee_calc, distorted, gates, threshold=0.0)
    predicted = np.concatenate([committee_calc(ts.io.atoms_to_state([a], CPU, torch.float64))["forces"].numpy()
                                for a in distorted])
    expected = 1000 * np.abs(predicted - np.concatenate([a.get_forces() for a in distorted])).mean()
    assert section.data["metrics"]["force_mae"] == pytest.approx(expected, rel=1e-6)
    assert expected > 150.0 and any("distorted frames" in f and "exceeds the gate of 150" in f for f in section.failures)
    cal = section.data["calibration"]
    assert cal["n_bad"] >= 1 and cal["recall"] == 1.0  # threshold 0: every frame is flagged
    assert not any("committee flags" in f for f in section.failures)
    missed = distorted_section(committee_calc, distorted, gates, threshold=1e9)  # flags nothing
    assert any("committee flags 0 % of the distorted frames" in f for f in missed.failures)
    alone = DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True)
    assert any("has no committee" in f for f in distorted_section(alone, distorted, gates, threshold=0.1).failures)
