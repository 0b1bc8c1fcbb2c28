"""Teacher registry: names, ASE wrapping, SevenNet-0 offline, compiled-student dispatch."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase.build import bulk
from ase.calculators.emt import EMT
from torch_sim.models.interface import validate_model_outputs

from torchsim_distill import DistilledTorchSimCalc
from torchsim_distill.distill.teachers import (
    ASECalculatorTeacher,
    DtypeCastTeacher,
    load_teacher,
    sevennet_0_checkpoint,
)
from torchsim_distill.utils.timing import default_dtype


def _cu_au_cells():
    """A 4-atom CuAu cell and a 16-atom Cu3Au supercell, both rattled (non-zero forces)."""
    small = bulk("Cu", "fcc", a=3.8, cubic=True)
    small.symbols[[0, 2]] = "Au"
    small.rattle(0.05, seed=1)
    large = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 1))
    large.symbols[[0, 5]] = "Au"
    large.set_cell(large.cell.array @ np.array([[1.0, 0.02, 0.0], [0.02, 1.0, 0.0], [0.0, 0.0, 0.99]]), scale_atoms=True)
    large.rattle(0.05, seed=2)
    return [small, large]


def test_known_names():
    from torchsim_distill.models.teacher_registry import teacher_specs

    assert {"emt", "sevennet-0", "7net-0", "7net-l3i5", "7net-mf-0", "chgnet"} <= set(teacher_specs())


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown teacher 'mace-mp-0'") as err:
        load_teacher("mace-mp-0")
    for name in ("emt", "sevennet-0", "7net-l3i5"):
        assert name in str(err.value)


def test_model_interface_returned_as_is():
    teacher = load_teacher("emt")
    assert load_teacher(teacher) is teacher


def test_ase_calculator_is_wrapped():
    teacher = load_teacher(EMT(), dtype=torch.float32)
    assert isinstance(teacher, ASECalculatorTeacher)
    assert teacher.dtype == torch.float32


def test_names_are_case_insensitive():
    assert isinstance(load_teacher("EMT"), ASECalculatorTeacher)


def test_emt_teacher_matches_ase_on_two_system_batch():
    atoms_list = _cu_au_cells()
    teacher = load_teacher("emt")
    state = ts.io.atoms_to_state(atoms_list, torch.device("cpu"), torch.float64)
    out = teacher(state)
    assert out["energy"].shape == (2,)
    assert out["forces"].shape == (20, 3)
    assert out["stress"].shape == (2, 3, 3)
    assert out["energies"].shape == (20,)
    assert all(v.dtype == torch.float64 for v in out.values())
    start = 0
    for k, atoms in enumerate(atoms_list):
        ref = atoms.copy()
        ref.calc = EMT()
        stop = start + len(ref)
        np.testing.assert_allclose(out["energy"][k].item(), ref.get_potential_energy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["forces"][start:stop].numpy(), ref.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["stress"][k].numpy(), ref.get_stress(voigt=False), rtol=0, atol=1e-12)
        np.testing.assert_allclose(out["energies"][start:stop].numpy(), ref.get_potential_energies(), atol=1e-10)
        start = stop


def test_emt_teacher_passes_torch_sim_validator():
    # torch-sim's validator builds Si, Mg, Fe and benzene; EMT knows Cu, Au, C, H
    def to_emt_elements(state: ts.SimState) -> ts.SimState:
        numbers = state.atomic_numbers.clone()
        numbers[numbers == 14] = 29
        numbers[numbers == 12] = 79
        numbers[numbers == 26] = 29
        state.atomic_numbers = numbers
        return state

    validate_model_outputs(load_teacher("emt"), torch.device("cpu"), torch.float64, state_modifier=to_emt_elements)


def test_compiled_student_path_goes_to_distilled_calc(tmp_path, monkeypatch):
    calls = {}

    def fake_from_compiled_model(path, **kwargs):
        calls.update(path=path, **kwargs)
        return "student"

    monkeypatch.setattr(DistilledTorchSimCalc, "from_compiled_model", staticmethod(fake_from_compiled_model))
    artifact = tmp_path / "student.nequip.pt2"
    artifact.write_bytes(b"")
    assert load_teacher(str(artifact), dtype=torch.float64) == "student"
    assert Path(calls["path"]) == artifact
    assert calls["chemical_species_to_atom_type_map"] is True
    assert calls["dtype"] == torch.float64
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "missing.nequip.pt2")


def test_sevennet_0_loads_offline_and_returns_float64(monkeypatch):
    sevenn = pytest.importorskip("sevenn", reason="needs the teachers extra (sevenn)")
    sevenn_util = pytest.importorskip("sevenn.util", reason="needs the teachers extra (sevenn)")

    def no_download(*args, **kwargs):
        raise AssertionError("SevenNet tried to download a checkpoint")

    def no_network(*args, **kwargs):
        raise AssertionError("network access during teacher loading")

    monkeypatch.setattr(sevenn_util, "download_checkpoint", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)

    checkpoint = sevennet_0_checkpoint()
    assert Path(sevenn.__file__).parent in checkpoint.parents

    teacher = load_teacher("sevennet-0", dtype=torch.float64)
    assert isinstance(teacher, DtypeCastTeacher)
    assert teacher.dtype == torch.float64
    assert teacher.model.dtype == torch.float32

    atoms_list = _cu_au_cells()
    state = ts.io.atoms_to_state(atoms_list, teacher.device, teacher.dtype)
    out = teacher(state)
    assert out["energy"].shape == (2,)
    assert out["forces"].shape == (20, 3)
    assert out["stress"].shape == (2, 3, 3)
    for key in ("energy", "forces", "stress"):
        assert out[key].dtype == torch.float64
        assert torch.isfinite(out[key]).all()
    # metallic Cu–Au: a few eV per atom of binding, and Newton's third law per system
    per_atom = out["energy"] / torch.tensor([len(a) for a in atoms_list], dtype=torch.float64)
    assert ((per_atom < -2.0) & (per_atom > -6.0)).all()
    assert out["forces"][:4].sum(0).abs().max() < 1e-3


def test_sevennet_0_per_atom_energies_match_sevenns_own_calculator():
    """The teacher returns SevenNet's atomic energies (for the per-atom energy loss) from the
    same call: they sum to each system's energy and equal sevenn's ASE calculator's, atom by atom."""
    pytest.importorskip("sevenn", reason="needs the teachers extra (sevenn)")
    from sevenn.calculator import SevenNetCalculator

    teacher = load_teacher("sevennet-0", dtype=torch.float64)
    atoms_list = _cu_au_cells()
    out = teacher(ts.io.atoms_to_state(atoms_list, teacher.device, teacher.dtype))
    assert out["energies"].shape == (20,) and out["energies"].dtype == torch.float64
    ends = np.cumsum([len(a) for a in atoms_list])
    with default_dtype(torch.float32):  # sevenn's checkpoint upgrade wants float32 (as load_teacher does)
        reference = SevenNetCalculator(str(sevennet_0_checkpoint()), device="cpu")
        for k, (atoms, end) in enumerate(zip(atoms_list, ends, strict=True)):
            mine = out["energies"][end - len(atoms):end].numpy()
            assert abs(mine.sum() - float(out["energy"][k])) < 1e-4
            atoms.calc = reference
            np.testing.assert_allclose(mine, atoms.get_potential_energies(), atol=1e-5)
