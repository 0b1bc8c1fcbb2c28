"""Species maps and every bad input: each fails with a message naming what is wrong."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch_sim as ts
from ase.build import bulk

from torchsim_distill import ArtifactError, DistilledTorchSimCalc
from torchsim_distill.models.cu_au import rattled_alloy
from torchsim_distill.runtime.artifact import BUILD_INFO_ENTRY

CPU = torch.device("cpu")


def test_species_map_none_warns_true_is_silent(student_pt2):
    with pytest.warns(UserWarning, match="chemical_species_to_atom_type_map=None"):
        DistilledTorchSimCalc.from_compiled_model(student_pt2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True)


def test_custom_species_map_relabels_elements(calc, student_pt2):
    """Ag→Au and Ni→Cu: a Ag/Ni structure gives exactly the Au/Cu result."""
    mapped = DistilledTorchSimCalc.from_compiled_model(
        student_pt2, chemical_species_to_atom_type_map={"Ag": "Au", "Ni": "Cu"}
    )
    atoms = rattled_alloy(seed=3)
    swapped = atoms.copy()
    swapped.set_chemical_symbols(["Ag" if s == "Au" else "Ni" for s in atoms.get_chemical_symbols()])
    a = calc(ts.io.atoms_to_state([atoms], CPU, torch.float64))
    b = mapped(ts.io.atoms_to_state([swapped], CPU, torch.float64))
    assert torch.allclose(a["energy"], b["energy"], rtol=0, atol=1e-12)
    assert torch.allclose(a["forces"], b["forces"], rtol=0, atol=1e-12)


def test_element_outside_map_names_element_and_types(calc):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.symbols[0] = "Fe"
    with pytest.raises(ValueError, match=r"\['Fe'\].*\['Au', 'Cu'\]"):
        calc(ts.io.atoms_to_state([atoms], CPU, torch.float64))


def test_map_to_missing_type_fails_at_construction(student_pt2):
    with pytest.raises(ValueError, match="Cu_fcc.*\\['Au', 'Cu'\\]"):
        DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map={"Cu": "Cu_fcc"})
    with pytest.raises(ValueError, match="not a chemical symbol"):
        DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map={"Xx": "Cu"})


def test_empty_state_is_an_error(calc):
    with pytest.raises(ValueError, match="empty state"):
        calc.evaluate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.eye(3)[None], torch.zeros(0, dtype=torch.long))


def test_tensor_entry_shape_errors(calc):
    pos = torch.rand(4, 3)
    z = torch.full((4,), 29)
    with pytest.raises(ValueError, match="mol_idx must lie in 0..0"):
        calc.evaluate(pos, z, torch.eye(3)[None] * 5, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"atomic_numbers and mol_idx must be \[n_atoms\]"):
        calc.evaluate(pos, z[:3], torch.eye(3)[None] * 5, torch.zeros(4, dtype=torch.long))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*torchsim-distill compile"):
        DistilledTorchSimCalc.from_compiled_model(tmp_path / "nope.nequip.pt2")


def test_corrupt_files(tmp_path, student_pt2):
    junk = tmp_path / "junk.nequip.pt2"
    junk.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ArtifactError, match="not a valid AOTInductor .pt2 archive"):
        DistilledTorchSimCalc.from_compiled_model(junk)
    truncated = tmp_path / "truncated.nequip.pt2"
    truncated.write_bytes(Path(student_pt2).read_bytes()[: 50_000])
    with pytest.raises(ArtifactError, match="not a valid AOTInductor .pt2 archive"):
        DistilledTorchSimCalc.from_compiled_model(truncated)
    plain_zip = tmp_path / "plain.nequip.pt2"
    with zipfile.ZipFile(plain_zip, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ArtifactError, match="not an AOTInductor package"):
        DistilledTorchSimCalc.from_compiled_model(plain_zip)


def _rewrite(src: Path, dst: Path, edit_meta=None, edit_info=None, drop=lambda name: False) -> Path:
    """Copy an archive, editing its AOTI metadata / build info (to fake other targets, devices, versions)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if drop(item.filename):
                continue
            data = zin.read(item.filename)
            if item.filename.endswith("wrapper_metadata.json") and edit_meta:
                data = json.dumps(edit_meta(json.loads(data))).encode()
            if item.filename.endswith(BUILD_INFO_ENTRY) and edit_info:
                data = json.dumps(edit_info(json.loads(data))).encode()
            zout.writestr(item, data)
    return dst


def test_wrong_target(student_ase_pt2):
    """A real `--target ase` artifact is refused, with the fix in the message."""
    with pytest.raises(ArtifactError, match="compiled for target 'ase'.*--target batch"):
        DistilledTorchSimCalc.from_compiled_model(student_ase_pt2, chemical_species_to_atom_type_map=True)


def test_wrong_device(tmp_path, student_pt2):
    def as_cuda(meta):
        meta["AOTI_DEVICE_KEY"] = "cuda"
        return meta

    fake = _rewrite(Path(student_pt2), tmp_path / "cuda.nequip.pt2", edit_meta=as_cuda)
    with pytest.raises(ArtifactError, match="compiled for device 'cuda'.*device='cuda'.*--device cpu"):
        DistilledTorchSimCalc.from_compiled_model(fake, device="cpu")


def test_torch_version_that_cannot_load(tmp_path, student_pt2):
    """An archive torch's loader rejects (here: its shared object removed) built by another
    torch names both versions and says to recompile."""
    fake = _rewrite(
        Path(student_pt2),
        tmp_path / "old.nequip.pt2",
        edit_info=lambda info: {**info, "torch_version": "2.6.0"},
        drop=lambda name: name.endswith(".so"),
    )
    with pytest.raises(ArtifactError, match=r"built with torch 2\.6\.0; this is torch .*recompile"):
        DistilledTorchSimCalc.from_compiled_model(fake)


def _with_custom_ops_libs(src: Path, dst: Path, *libs: str) -> Path:
    """A copy of ``src`` naming ``libs`` as custom-op libraries, the way nequip-compile records them."""
    from nequip.utils.aoti_metadata import embed_custom_ops_libs

    shutil.copyfile(src, dst)
    embed_custom_ops_libs(str(dst), set(libs))
    return dst


def test_custom_op_libraries_are_imported_before_loading(tmp_path, monkeypatch, student_pt2, calc):
    """Defect 2: a student compiled with custom ops (Allegro's GPU kernels) loads only after
    the libraries registering those ops are imported. nequip's loader imports the ones the
    archive names; loading through it (not torch's bare loader) does that."""
    name = "tsd_fake_custom_ops"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_suffix('.imported').write_text('imported')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _with_custom_ops_libs(Path(student_pt2), tmp_path / "custom_ops.nequip.pt2", name)
    try:
        mapped = DistilledTorchSimCalc.from_compiled_model(model, chemical_species_to_atom_type_map=True)
        assert (tmp_path / f"{name}.imported").read_text() == "imported" and name in sys.modules
    finally:
        sys.modules.pop(name, None)
    state = ts.io.atoms_to_state([rattled_alloy(seed=5)], CPU, torch.float64)
    assert torch.equal(mapped(state)["energy"], calc(state)["energy"])


def test_missing_custom_op_library_is_named(tmp_path, student_pt2):
    model = _with_custom_ops_libs(Path(student_pt2), tmp_path / "needs_ops.nequip.pt2", "tsd_no_such_ops_library")
    with pytest.raises(ArtifactError, match="needs the custom-op library 'tsd_no_such_ops_library'.*install it"):
        DistilledTorchSimCalc.from_compiled_model(model, chemical_species_to_atom_type_map=True)


def test_file_name_nequip_cannot_load(tmp_path, student_pt2):
    renamed = tmp_path / "student.pt2"
    shutil.copyfile(student_pt2, renamed)
    with pytest.raises(ArtifactError, match=r"does not end with '\.nequip\.pt2'.*rename it"):
        DistilledTorchSimCalc.from_compiled_model(renamed, chemical_species_to_atom_type_map=True)


_CALLER_STATE = """
import json, random, sys
import numpy as np
import torch
from torchsim_distill import load_artifact

def draw():
    return [torch.rand(2).tolist(), np.random.rand(2).tolist(), [random.random(), random.random()]]

def seed():
    torch.manual_seed(7), np.random.seed(7), random.seed(7)

seed()
expected = draw()
seed()
load_artifact(sys.argv[1])
print(json.dumps({"dtype": str(torch.get_default_dtype()), "draws": draw(), "expected": expected}))
"""


def test_loading_keeps_the_callers_dtype_and_random_streams(student_pt2):
    """nequip's first global setup in a process sets torch's default dtype to float64 and
    seeds every RNG; loading a model must not do that to the caller (fresh process)."""
    proc = subprocess.run(
        [sys.executable, "-c", _CALLER_STATE, str(student_pt2)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dtype"] == "torch.float32"
    assert result["draws"] == result["expected"]


def test_artifact_metadata(calc):
    art = calc.artifact
    assert art.target == "batch" and art.type_names == ["Au", "Cu"]
    assert art.r_max == pytest.approx(4.5) and art.model_dtype == torch.float64
    assert art.per_edge_type_cutoff is None
    assert art.build_info["torch_version"] == torch.__version__
    assert art.build_info["target"] == "batch" and len(art.build_info["source_sha256"]) == 64


def test_state_on_other_dtype_is_not_mutated(calc):
    state = ts.io.atoms_to_state([rattled_alloy(seed=4)], CPU, torch.float32)
    before = state.positions.clone()
    calc(state)
    assert torch.equal(state.positions, before) and state.positions.dtype == torch.float32


# -- inputs that would give a silent wrong answer: a clear error instead ---------------------


def _broken(kind: str):
    """A good Cu–Au cell and the same cell broken in one way (atom 3 of it is at fault)."""
    import numpy as np

    atoms = rattled_alloy((1, 1, 2), seed=7)
    bad = atoms.copy()
    if kind == "nan":
        bad.positions[3] = [np.nan, 0.0, 0.0]
    elif kind == "inf":
        bad.positions[3, 2] = np.inf
    elif kind == "same":
        bad.positions[3] = bad.positions[5]
    elif kind == "same-image":  # on a periodic image of atom 5: the same point of the crystal
        bad.positions[3] = bad.positions[5] + bad.cell[1]
    elif kind == "zero-cell":
        bad.cell[:] = 0.0
    return atoms, bad


BROKEN = {
    "nan": "non-finite positions (NaN or inf): system 1: atom 3",
    "inf": "non-finite positions (NaN or inf): system 1: atom 3",
    "same": "system 1: atoms 3 and 5 sit at the same position",
    "same-image": "system 1: atoms 3 and 5 (shifted by cell vectors",
    "zero-cell": "system 1 is periodic (pbc=[True, True, True]) but its cell has no volume",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_structures_fail_naming_system_and_atoms_in_torch_sim(calc, kind):
    good, bad = _broken(kind)
    fine = calc(ts.io.atoms_to_state([good, good], CPU, torch.float64))
    assert torch.isfinite(fine["forces"]).all()  # the same batch without the fault evaluates
    from torchsim_distill.runtime.checks import InvalidStructureError

    # the faulty structure second in the batch: the message names system 1, and its own atom numbers
    with pytest.raises(InvalidStructureError, match=re.escape(BROKEN[kind])):
        calc(ts.io.atoms_to_state([good, bad], CPU, torch.float64))


@pytest.mark.parametrize("kind", ["nan", "same", "zero-cell"])
def test_broken_structures_fail_in_ase(calc, kind):
    from torchsim_distill import DistilledCalculator

    _, bad = _broken(kind)
    bad.calc = DistilledCalculator(calc)
    with pytest.raises(ValueError, match=re.escape(BROKEN[kind].replace("system 1", "system 0"))):
        bad.get_potential_energy()


def test_relax_of_a_broken_structure_writes_nothing_or_reports_it(student_pt2, tmp_path, capsys):
    """--on-error stop: one line naming the structure and its atoms, nothing written; the
    default (skip): the good structure is relaxed and the broken one is in errors.csv."""
    import csv

    from ase.io import write

    from torchsim_distill.cli import main

    good, bad = _broken("same")
    structures = tmp_path / "in.extxyz"
    write(structures, [good, bad])
    out = tmp_path / "relaxed"
    assert main(["relax", str(structures), "--model", str(student_pt2), "--out", str(out), "--quiet",
                 "--on-error", "stop"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"structure {structures}@1 has overlapping atoms: 3 and 5 are 0 Å apart" in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]
    assert main(["relax", str(structures), "--model", str(student_pt2), "--out", str(out), "--quiet"]) == 2
    (row,) = csv.DictReader((out / "errors.csv").open())
    assert row["id"] == f"{structures}@1" and "overlapping atoms: 3 and 5" in row["reason"]
    assert [r["id"] for r in csv.DictReader((out / "results.csv").open())] == [f"{structures}@0"]


# -- the command line: one clean line per mistake, exit 1, no traceback (unless -v) ----------


def test_evaluate_loads_a_model_and_names_a_missing_one(student_pt2, tmp_path, capsys):
    from ase.io import write

    from torchsim_distill.cli import main

    structures = tmp_path / "s.xyz"
    write(structures, [rattled_alloy((1, 1, 1), seed=1), rattled_alloy((1, 1, 2), seed=2)])
    assert main(["evaluate", str(student_pt2), str(structures)]) == 0
    assert "2 structures evaluated" in capsys.readouterr().out
    for model, says in (("missing.nequip.pt2", "is not a known student and no such file exists; give one of cu-au-sevennet0, "
                                               "cu-au-sevennet0-small (= cu-au-sevennet0), default (= cu-au-sevennet0), or a path to a "
                                               ".nequip.zip package"),
                        (str(tmp_path), "is a folder; give a student's name or a path")):
        assert main(["evaluate", model, str(structures)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and "Traceback" not in err
    assert main(["relax", str(tmp_path), "--model", str(student_pt2), "--out", str(tmp_path / "out")]) == 1
    assert "is a folder, not a structure file" in capsys.readouterr().err


def test_an_unforeseen_error_is_one_line_and_verbose_shows_the_traceback(monkeypatch, tmp_path, capsys):
    from torchsim_distill import cli

    def broken(args):
        raise RuntimeError("the disk\nis full")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda *args: _with_func(parser(*args), broken))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "torchsim-distill demo: error: RuntimeError: the disk is full (run with -v for the traceback)\n"
    with pytest.raises(RuntimeError, match="the disk"):
        cli.main(["-v", "demo", "--out", str(tmp_path)])


def _with_func(parser, func):
    """``parser`` whose sub-commands all run ``func``."""
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser
