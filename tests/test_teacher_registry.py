"""Teachers by name: sevenn's models by sevenn's names, modals, module:callable, entry points,
files, what is missing and never downloaded, the listing, and what the card records."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
import torch_sim as ts
from ase.build import bulk
from ase.calculators.emt import EMT

from torchsim_distill.cli import main
from torchsim_distill.distill.evaluation import Gates, Metrics
from torchsim_distill.distill.model_card import write_model_card
from torchsim_distill.distill.teachers import (
    ASECalculatorTeacher,
    DtypeCastTeacher,
    load_teacher,
    sevennet_0_checkpoint,
    teacher_provenance,
)
from torchsim_distill.models import teacher_registry
from torchsim_distill.models.teacher_registry import (
    ENTRY_POINT_GROUP,
    SEVENN_MODELS,
    UnknownTeacherError,
    cached_measurement,
    record_measurement,
    resolve_teacher,
    teacher_specs,
)
from torchsim_distill.utils.timing import default_dtype

FAKE_MODULE = """
import torch
from ase.calculators.emt import EMT
from torch_sim.models.lennard_jones import LennardJonesModel

def emt_calc():
    return EMT()

def lj(device, dtype):
    return LennardJonesModel(sigma=2.3, epsilon=0.4, cutoff=6.0, device=torch.device(device), dtype=torch.float32)

def not_a_model():
    return 42
"""


@pytest.fixture
def fake_teachers(tmp_path, monkeypatch):
    """A module of teacher factories on sys.path (a user's own code, not installed)."""
    name = f"fake_teachers_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cu_cell():
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    return atoms


def _energy_forces(teacher, atoms):
    out = teacher(ts.io.atoms_to_state([atoms], teacher.device, teacher.dtype))
    return out["energy"][0].item(), out["forces"].numpy()


def test_sevenn_table_is_the_installed_sevenns():
    """Every model sevenn knows by name is known here by the same name, at sevenn's own path."""
    pytest.importorskip("sevenn")
    from sevenn import _const
    from sevenn.util import get_available_pretrained_models

    assert set(SEVENN_MODELS) == set(get_available_pretrained_models())
    for name, (const, relative) in SEVENN_MODELS.items():
        assert getattr(_const, const).endswith(relative), name
        spec = resolve_teacher(name)
        assert spec.kind == "sevenn" and spec.name == name
        if Path(getattr(_const, const)).is_file():
            assert spec.file == Path(getattr(_const, const)) and spec.missing() is None
        else:
            assert "never downloads" in spec.missing()


def test_sevennet_0_keeps_its_name_and_7net_0_is_the_same_checkpoint():
    pytest.importorskip("sevenn")
    old = resolve_teacher("SevenNet-0")
    assert old.name == "sevennet-0" and old.file == sevennet_0_checkpoint()
    assert resolve_teacher("7net-0").file == old.file and resolve_teacher("7net-0").name == "7net-0"
    assert resolve_teacher("sevennet-l3i5").name == "7net-l3i5"  # sevenn's other spelling


def test_unknown_names_list_the_known_and_suggest_the_closest():
    with pytest.raises(UnknownTeacherError, match=r"unknown teacher '7net-l3i6' \(did you mean '7net-l3i5'\?\)") as err:
        resolve_teacher("7net-l3i6")
    for name in ("emt", "sevennet-0", "7net-mf-0", "chgnet", "module:callable"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown teacher 'mace-mp-0'"):
        load_teacher("mace-mp-0")


def test_modals_by_name_or_keyword_and_only_for_sevenn():
    spec = resolve_teacher("7net-mf-0:PBE")
    assert (spec.name, spec.modal, spec.kind) == ("7net-mf-0:PBE", "PBE", "sevenn")
    assert resolve_teacher("7net-mf-0", modal="R2SCAN").name == "7net-mf-0:R2SCAN"
    with pytest.raises(ValueError, match="also given"):
        resolve_teacher("7net-mf-0:PBE", modal="R2SCAN")
    with pytest.raises(ValueError, match="has no modals"):
        resolve_teacher("emt:PBE")


def test_a_missing_or_unknown_modal_is_refused_with_the_models_modals():
    pytest.importorskip("sevenn")
    with pytest.raises(ValueError, match=r"'7net-mf-0' needs a modal .*modals: R2SCAN, PBE"):
        load_teacher("7net-mf-0")
    with pytest.raises(ValueError, match=r"'7net-mf-0' has no modal 'HSE'.*modals: R2SCAN, PBE"):
        load_teacher("7net-mf-0:HSE")


def test_missing_sevenn_weights_say_where_and_are_never_fetched(monkeypatch):
    pytest.importorskip("sevenn")
    import sevenn.util

    spec = resolve_teacher("7net-omat")
    if spec.file.is_file():
        pytest.skip("7net-omat's checkpoint is on this machine")

    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a teacher")

    monkeypatch.setattr(sevenn.util, "download_checkpoint", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(FileNotFoundError, match="never downloads") as err:
        load_teacher("7net-omat")
    assert str(spec.file) in str(err.value) and "https://" in str(err.value)


def test_module_callable_returning_an_ase_calculator(fake_teachers):
    teacher = load_teacher(f"{fake_teachers}:emt_calc")
    assert isinstance(teacher, ASECalculatorTeacher) and isinstance(teacher.calculator, EMT)
    source = teacher_provenance(f"{fake_teachers}:emt_calc")  # the card: the module's source file and its hash
    assert source["kind"] == "callable" and source["file"].endswith(f"{fake_teachers}.py")
    assert source["sha256"] == hashlib.sha256(Path(source["file"]).read_bytes()).hexdigest()
    atoms = _cu_cell()
    energy, forces = _energy_forces(teacher, atoms)
    atoms.calc = EMT()
    assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-10)


def test_module_callable_returning_a_torch_sim_model_in_another_dtype(fake_teachers):
    """A float32 model is called in float32 and its outputs come back in the pipeline's float64."""
    from torch_sim.models.lennard_jones import LennardJonesModel

    teacher = load_teacher(f"{fake_teachers}:lj", dtype=torch.float64)
    assert isinstance(teacher, DtypeCastTeacher) and isinstance(teacher.model, LennardJonesModel)
    assert teacher.model.dtype == torch.float32
    atoms = _cu_cell()
    energy, forces = _energy_forces(teacher, atoms)
    direct = LennardJonesModel(sigma=2.3, epsilon=0.4, cutoff=6.0, dtype=torch.float32)
    out = direct(ts.io.atoms_to_state([atoms], torch.device("cpu"), torch.float32))
    assert energy == pytest.approx(out["energy"][0].item(), rel=1e-6)
    np.testing.assert_allclose(forces, out["forces"].numpy(), atol=1e-5)
    assert teacher(ts.io.atoms_to_state([atoms], torch.device("cpu"), torch.float64))["energy"].dtype == torch.float64
    with pytest.raises(TypeError, match="not a torch-sim ModelInterface or an ASE calculator"):
        load_teacher(f"{fake_teachers}:not_a_model")


def test_entry_points_add_teachers(fake_teachers, monkeypatch, caplog):
    points = [EntryPoint("fake-emt", f"{fake_teachers}:emt_calc", ENTRY_POINT_GROUP),
              EntryPoint("emt", f"{fake_teachers}:lj", ENTRY_POINT_GROUP),  # taken: ignored
              EntryPoint("other", "x:y", "some.other.group")]
    monkeypatch.setattr(teacher_registry, "entry_points",
                        lambda group: [ep for ep in points if ep.group == group])
    specs = teacher_specs()
    assert specs["fake-emt"].kind == "entry point" and specs["fake-emt"].target == f"{fake_teachers}:emt_calc"
    assert specs["emt"].kind == "ase" and "other" not in specs
    assert "that name is taken" in caplog.text
    teacher = load_teacher("Fake-EMT")
    assert isinstance(teacher, ASECalculatorTeacher) and isinstance(teacher.calculator, EMT)
    assert "fake-emt" in str(pytest.raises(UnknownTeacherError, resolve_teacher, "fake-emz").value)


def test_files_by_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher file not found"):
        load_teacher(tmp_path / "missing.model")
    model = tmp_path / "mace.model"
    model.write_bytes(b"not read")
    spec = resolve_teacher(str(model))
    assert spec.kind == "mace" and spec.file == model
    if spec.missing() is not None:  # mace not installed: say what to install, load nothing
        with pytest.raises(ImportError, match="pip install mace-torch"):
            load_teacher(model)
    assert resolve_teacher(str(sevennet_0_checkpoint()) + ":PBE").modal == "PBE"  # a SevenNet .pth file


def test_chgnet_only_when_installed():
    spec = resolve_teacher("chgnet")
    if spec.missing() is None:
        pytest.skip("chgnet is installed")
    assert spec.missing() == "not installed: pip install chgnet"
    with pytest.raises(ImportError, match="pip install chgnet"):
        load_teacher("chgnet")


def test_the_card_records_name_version_and_file_hash(tmp_path):
    emt = teacher_provenance("emt")
    assert emt == {"name": "emt", "kind": "ase", "package": "ase", "version": ase.__version__,
                   "file": None, "sha256": None}
    assert teacher_provenance(EMT())["version"] == ase.__version__  # a calculator object: its package's version
    pytest.importorskip("sevenn")
    from importlib.metadata import version

    checkpoint = sevennet_0_checkpoint()
    seven = teacher_provenance("7net-0")
    # the checkpoint as it ships (from sevenn's folder: no path of this machine), and its hash
    assert seven["version"] == version("sevenn") and seven["file"] == str(
        checkpoint.relative_to(checkpoint.parents[3]))  # sevenn/pretrained_potentials/.../checkpoint_sevennet_0.pth
    assert seven["file"].startswith("sevenn/pretrained_potentials/")
    assert seven["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    metrics = Metrics(1.0, 2.0, 0.9, None, 1, 4)
    json_path, md_path = write_model_card(tmp_path, metrics=metrics, gates=Gates(), failures=[],
                                          metadata={"teacher": "7net-0", "teacher_source": seven})
    assert json.loads(json_path.read_text())["metadata"]["teacher_source"] == seven
    assert f"teacher `7net-0` (sevenn {seven['version']}, file sha256 {seven['sha256'][:12]}" in md_path.read_text()


def test_measure_emt_and_the_listing_shows_the_cached_cost(own_cache, capsys):
    from torchsim_distill.distill.teacher_cost import measure_teacher

    record = measure_teacher("emt", min_seconds=0.05)
    assert record["dtype"] == "float64" and "Cu" in record["elements"]
    assert record["cell"] == "Cu32" and record["us_per_atom"] > 0 and record["calls"] >= 3
    assert cached_measurement(resolve_teacher("emt"))["us_per_atom"] == record["us_per_atom"]
    capsys.readouterr()
    assert main(["teachers", "emt"]) == 0
    out = capsys.readouterr().out
    assert f"{record['us_per_atom']:.0f} us" in out and f"Cu32, {record['threads']} thread(s)" in out
    # a record made for other weights (another version) is not shown as this teacher's
    record_measurement(resolve_teacher("emt"), "cpu", {"us_per_atom": 1.0})
    data = json.loads((own_cache / "teachers" / "measured.json").read_text())
    data["emt|cpu"]["fingerprint"]["version"] = "0.0"
    (own_cache / "teachers" / "measured.json").write_text(json.dumps(data))
    assert cached_measurement(resolve_teacher("emt")) is None
    assert main(["teachers", "--measure", "emt"]) == 0  # the command measures again and shows it
    assert "Cu32" in capsys.readouterr().out and cached_measurement(resolve_teacher("emt")) is not None


def test_the_listing_imports_no_torch(own_cache):
    code = textwrap.dedent("""
        import sys
        from torchsim_distill.cli import main
        assert main(["teachers"]) == 0
        assert main(["teachers", "no-such-teacher"]) == 1
        print("LOADED", [m for m in ("torch", "sevenn", "nequip", "torch_sim") if m in sys.modules])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert "chgnet" in done.stdout and "emt" in done.stdout and "7net-l3i5" in done.stdout
    assert "unknown teacher 'no-such-teacher'" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name, modal", [("7net-l3i5", None), ("7net-mf-0:PBE", "PBE")])
def test_sevenn_teachers_match_sevenns_own_calculator(name, modal):
    """Energies, forces and per-atom energies of a sevenn teacher by name equal sevenn's ASE calculator's."""
    pytest.importorskip("sevenn")
    from sevenn.calculator import SevenNetCalculator

    teacher = load_teacher(name, dtype=torch.float64)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=4)
    out = teacher(ts.io.atoms_to_state([atoms], teacher.device, teacher.dtype))
    with default_dtype(torch.float32):
        atoms.calc = SevenNetCalculator(str(resolve_teacher(name).file), modal=modal, device="cpu")
        energy, forces, energies = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_potential_energies()
    assert out["energy"][0].item() == pytest.approx(energy, abs=1e-4)
    np.testing.assert_allclose(out["forces"].numpy(), forces, atol=1e-4)
    np.testing.assert_allclose(out["energies"].numpy(), energies, atol=1e-4)


@pytest.mark.slow
def test_the_modal_chooses_the_fidelity():
    """7net-mf-0's two fidelities give different energies: the modal reaches the model."""
    pytest.importorskip("sevenn")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    energies = {}
    for modal in ("PBE", "R2SCAN"):
        teacher = load_teacher(f"7net-mf-0:{modal}")
        energies[modal] = teacher(ts.io.atoms_to_state([atoms], teacher.device, teacher.dtype))["energy"][0].item()
    assert abs(energies["PBE"] - energies["R2SCAN"]) / len(atoms) > 0.01  # eV/atom: r2SCAN binds Si differently
