"""The compile step: nequip-compile wrapped, checked against eager, cached, and on the CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_sim as ts
from ase.io import write

from conftest import cu_au
from torchsim_distill import DistilledTorchSimCalc, load_artifact
from torchsim_distill.cli import main as cli
from torchsim_distill.compile import (
    cache_key,
    cached_compile,
    check_against_eager,
    compile_model,
    load_eager_model,
    stored_check_report,
)


@pytest.mark.parametrize("fixture", ["student_pt2", "student_ase_pt2"])
def test_compiled_artifacts_agree_with_eager(request, fixture):
    pt2 = request.getfixturevalue(fixture)
    report = stored_check_report(pt2)
    assert report["n_probe_systems"] == 3
    assert report["max_abs_energy_error"] <= 1e-8 and report["max_abs_force_error"] <= 1e-8
    assert load_artifact(pt2, target=None).target == report["target"] == fixture.split("_")[1].replace("pt2", "batch")


def test_check_detects_a_different_model(student_ckpt, student_pt2):
    """The post-compile check is not vacuous: a perturbed eager model is caught."""
    eager = copy.deepcopy(load_eager_model(student_ckpt))
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(0.05 * torch.randn_like(p))
    de, df, n = check_against_eager(student_pt2, eager)
    assert n == 3 and (de > 1e-3 or df > 1e-3)
    de0, df0, _ = check_against_eager(student_pt2, load_eager_model(student_ckpt))
    assert de0 < 1e-8 and df0 < 1e-8


def test_cache_hits_and_keys(student_ckpt, student_pt2):
    mtime = os.path.getmtime(student_pt2)
    assert cached_compile(student_ckpt, device="cpu", target="batch") == student_pt2
    assert os.path.getmtime(student_pt2) == mtime  # not rebuilt
    base = cache_key(student_ckpt, device="cpu", target="batch")
    assert base != cache_key(student_ckpt, device="cuda", target="batch")
    assert base != cache_key(student_ckpt, device="cpu", target="ase")
    assert base != cache_key(student_ckpt, device="cpu", target="batch", tf32=True)


def test_compile_input_errors(tmp_path, student_ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compile_model(tmp_path / "missing.ckpt", tmp_path / "x.nequip.pt2")
    with pytest.raises(ValueError, match="must end with '.nequip.pt2'"):
        compile_model(student_ckpt, tmp_path / "x.pt2")
    with pytest.raises(ValueError, match="target must be one of"):
        compile_model(student_ckpt, tmp_path / "x.nequip.pt2", target="lammps")


def test_cli_compile_and_evaluate(tmp_path, student_ckpt, capsys):
    out = tmp_path / "cli.nequip.pt2"
    assert cli(["compile", str(student_ckpt), str(out), "--device", "cpu", "--target", "batch"]) == 0
    assert "wrote" in capsys.readouterr().out
    calc = DistilledTorchSimCalc.from_compiled_model(out, chemical_species_to_atom_type_map=True)
    atoms = [cu_au(seed=1), cu_au((1, 1, 2), seed=2)]
    expected = calc(ts.io.atoms_to_state(atoms, torch.device("cpu"), torch.float64))["energy"]
    write(tmp_path / "s.xyz", atoms)
    assert cli(["evaluate", str(out), str(tmp_path / "s.xyz")]) == 0
    printed = capsys.readouterr().out
    assert f"{expected[1].item():.6f}" in printed and "2 systems" in printed
    assert cli(["compile", str(tmp_path / "nope.ckpt"), str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_build_script_builds_cpu_presets_and_skips_cuda(tmp_path, student_ckpt, student_pt2, student_ase_pt2):
    """compile/build.py: the CPU presets come from the cache and carry their checks; CUDA ones
    are skipped with a reason where torch sees no GPU."""
    script = Path(__file__).parents[1] / "compile" / "build.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(student_ckpt), str(tmp_path), "--presets", "cpu-batch", "cpu-ase", "cuda-hopper-tf32"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cpu-batch"]["max_abs_energy_error"] < 1e-8 and summary["cpu-ase"]["target"] == "ase"
    if not torch.cuda.is_available():
        assert "no CUDA" in summary["cuda-hopper-tf32"]["skipped"]
    assert load_artifact(summary["cpu-batch"]["output"]).target == "batch"
