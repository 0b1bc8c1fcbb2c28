"""The compile step: nequip-compile wrapped, checked against eager, cached, and on the CLI."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch_sim as ts
from ase.io import write

from torchsim_distill import DistilledTorchSimCalc, load_artifact
from torchsim_distill.cli import main as cli
from torchsim_distill.compile import (
    CHECK_ENTRY,
    CompileOptions,
    cache_key,
    cached_compile,
    check_against_eager,
    compile_model,
    load_eager_model,
    model_fingerprint,
    stored_check_report,
)
from torchsim_distill.models.cu_au import rattled_alloy
from torchsim_distill.runtime.artifact import BUILD_INFO_ENTRY


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
    assert base != cache_key(student_ckpt, device="cpu", target="batch", options=CompileOptions(tf32=True))
    # the loose keywords of older calls still work, with a deprecation warning, and mean the same
    with pytest.warns(DeprecationWarning, match="options=CompileOptions"):
        loose = cache_key(student_ckpt, device="cpu", target="batch", tf32=True)
    assert loose == cache_key(student_ckpt, device="cpu", target="batch", options=CompileOptions(tf32=True))
    assert base == cache_key(student_ckpt, device="cpu", target="batch", options=CompileOptions())


def test_compile_input_errors(tmp_path, student_ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compile_model(tmp_path / "missing.ckpt", tmp_path / "x.nequip.pt2")
    with pytest.raises(ValueError, match="must end with '.nequip.pt2'"):
        compile_model(student_ckpt, tmp_path / "x.pt2")
    with pytest.raises(ValueError, match="target must be one of"):
        compile_model(student_ckpt, tmp_path / "x.nequip.pt2", target="lammps")


def _as_nequip_compile_wrote_it(compiled: Path, staged: Path) -> None:
    """Copy a compiled student without the entries compile_model adds after nequip-compile."""
    with zipfile.ZipFile(compiled) as zin, zipfile.ZipFile(staged, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith((BUILD_INFO_ENTRY, CHECK_ENTRY)):
                zout.writestr(item, zin.read(item.filename))


def _nequip_compile_copying(compiled: Path, calls: list):
    """A stand-in for run_nequip: nequip-compile 'writes' ``compiled`` (and is counted)."""

    def fake(tool, args, **kwargs):
        calls.append(args)
        _as_nequip_compile_wrote_it(compiled, Path(args[1]))
        return subprocess.CompletedProcess(args, 0, "", "")

    return fake


@pytest.fixture(scope="module")
def student_package(student_ckpt, tmp_path_factory) -> Path:
    """The session student's checkpoint as a nequip package: the same model in other bytes."""
    from torchsim_distill.distill.packaging import nequip_package

    return nequip_package(student_ckpt, tmp_path_factory.mktemp("package") / "student.nequip.zip")


def test_fingerprint_is_the_model_not_the_file(student_ckpt, student_package):
    """A checkpoint and its nequip package hold one model (equal fingerprints); a changed
    weight or a changed setting is another model."""
    eager = load_eager_model(student_ckpt)
    package = student_package
    assert model_fingerprint(load_eager_model(package)) == model_fingerprint(eager)
    nudged = copy.deepcopy(eager)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-9
    assert model_fingerprint(nudged) != model_fingerprint(eager)
    resettled = copy.deepcopy(eager)
    module = next(m for _, m in resettled.named_modules() if any(isinstance(v, float) for v in vars(m).values()))
    name = next(k for k, v in vars(module).items() if isinstance(v, float) and not k.startswith("_"))
    setattr(module, name, getattr(module, name) * 2)
    assert model_fingerprint(resettled) != model_fingerprint(eager)


def test_same_model_in_new_bytes_is_copied_and_checked_not_compiled(
    tmp_path, student_ckpt, student_pt2, student_package, monkeypatch
):
    """cached_compile of a package written from an already compiled checkpoint copies that
    artifact (no nequip-compile), records the package as its source, and checks the copy
    against the package's own eager model; a copy of another model fails that check."""
    import torchsim_distill.compile as compile_module

    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path / "cache"))
    calls: list = []
    monkeypatch.setattr(compile_module, "run_nequip", _nequip_compile_copying(Path(student_pt2), calls))
    from_ckpt = cached_compile(student_ckpt)
    assert len(calls) == 1
    package = shutil.copyfile(student_package, tmp_path / "student.nequip.zip")
    from_package = cached_compile(package)
    assert len(calls) == 1 and from_package != from_ckpt  # copied: nequip-compile ran once
    assert load_artifact(from_package).build_info["source_sha256"] == cache_key_source(package)
    report = stored_check_report(from_package)
    assert report["source"] == str(package) and report["max_abs_force_error"] < 1e-8
    state = ts.io.atoms_to_state([rattled_alloy(seed=3)], torch.device("cpu"), torch.float64)
    energies = [DistilledTorchSimCalc.from_compiled_model(p, chemical_species_to_atom_type_map=True)(state)["energy"]
                for p in (student_pt2, from_package)]
    torch.testing.assert_close(energies[0], energies[1], rtol=0, atol=0)

    # the copy is checked: a model that only claims the fingerprint is refused by the check
    perturbed = copy.deepcopy(load_eager_model(student_ckpt))
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    claimed = model_fingerprint(load_eager_model(student_ckpt))
    monkeypatch.setattr(compile_module, "model_fingerprint", lambda model: claimed)
    monkeypatch.setattr(compile_module, "load_eager_model", lambda source: perturbed)
    from_package.unlink()  # the package's own artifact gone, its model's index still points at from_ckpt
    with pytest.raises(compile_module.CompileError, match="disagrees with the eager model"):
        cached_compile(package)
    assert len(calls) == 1 and not from_package.exists()


def test_compiles_at_once_get_their_own_inductor_cache(tmp_path, monkeypatch):
    """Each running nequip-compile, in this process or another, has a TorchInductor cache
    folder to itself; a finished compile's folder is reused by the next."""
    from torchsim_distill.compile import _inductor_slot

    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path))
    holder = subprocess.Popen(  # another process compiling: holds slot 0 until told to stop
        [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(tmp_path / "inductor" / "slot_0.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    (tmp_path / "inductor").mkdir(exist_ok=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with _inductor_slot() as first, _inductor_slot() as second:
            assert {first.name, second.name} == {"slot_1", "slot_2"}
        with _inductor_slot() as again:
            assert again.name == "slot_1"
    finally:
        holder.communicate("")
    with _inductor_slot() as free:
        assert free.name == "slot_0"


def test_the_same_source_compiled_at_once_compiles_once(tmp_path, student_ckpt, student_pt2, monkeypatch):
    """Two callers (threads here; processes take the same file lock) asking for one key:
    the second waits for the first and takes its artifact."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torchsim_distill.compile as compile_module

    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path / "cache"))
    calls: list = []
    copying = _nequip_compile_copying(Path(student_pt2), calls)
    started = threading.Barrier(2)

    def slow_compile(tool, args, **kwargs):
        time.sleep(1.0)  # the other caller arrives while this one compiles
        return copying(tool, args, **kwargs)

    monkeypatch.setattr(compile_module, "run_nequip", slow_compile)

    def ask(_):
        started.wait()
        return cached_compile(student_ckpt)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(ask, range(2))
    assert first == second and len(calls) == 1


def test_the_same_model_in_two_files_compiled_at_once_compiles_once(
    tmp_path, student_ckpt, student_pt2, student_package, monkeypatch
):
    """Two callers compiling one model from different files at the same time (a checkpoint
    and its package: two cache keys) run nequip-compile once: the second waits for the
    model's lock and copies the first's artifact, checked against its own eager model."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torchsim_distill.compile as compile_module

    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path / "cache"))
    calls: list = []
    copying = _nequip_compile_copying(Path(student_pt2), calls)
    started = threading.Barrier(2)

    def slow_compile(tool, args, **kwargs):
        time.sleep(1.0)  # the other caller arrives while this one compiles
        return copying(tool, args, **kwargs)

    monkeypatch.setattr(compile_module, "run_nequip", slow_compile)
    package = shutil.copyfile(student_package, tmp_path / "student.nequip.zip")

    def ask(source):
        started.wait()
        return cached_compile(source)

    with ThreadPoolExecutor(2) as pool:
        from_ckpt, from_package = pool.map(ask, [student_ckpt, package])
    assert len(calls) == 1 and from_ckpt != from_package
    sources = {load_artifact(p).build_info["source_sha256"] for p in (from_ckpt, from_package)}
    assert sources == {cache_key_source(Path(student_ckpt)), cache_key_source(package)}
    for p in (from_ckpt, from_package):
        assert stored_check_report(p)["max_abs_force_error"] < 1e-8


def cache_key_source(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compile_logs_progress_and_passes_options(tmp_path, student_ckpt, student_pt2, monkeypatch, caplog, capsys):
    """compile_model(verbose=True) logs what it compiles and the check at INFO (library code
    does not print) and hands its options to nequip-compile. nequip-compile is stood in for
    by the session's compiled student (built from the same checkpoint, so the check passes)."""
    import torchsim_distill.compile as compile_module

    argvs = []

    def fake_nequip(tool, args, **kwargs):
        argvs.append([str(a) for a in args])
        _as_nequip_compile_wrote_it(Path(student_pt2), Path(args[1]))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(compile_module, "run_nequip", fake_nequip)
    caplog.set_level(logging.INFO, logger="torchsim_distill.compile")
    out = tmp_path / "logged.nequip.pt2"
    report = compile_model(student_ckpt, out, options=CompileOptions(constant_fold=True, inductor_configs=(("max_autotune", "1"),)))
    assert capsys.readouterr().out == ""
    ours = [r for r in caplog.records if r.name == "torchsim_distill.compile"]
    messages = [r.getMessage() for r in ours]
    assert len(messages) == 2 and all(r.levelno == logging.INFO for r in ours)
    assert messages[0] == f"compiling {student_ckpt} -> {out} (cpu, target batch) ..."
    assert messages[1].startswith("check vs eager on 3 probe systems: max |dE| = ")
    (argv,) = argvs
    assert argv[2:8] == ["--mode", "aotinductor", "--device", "cpu", "--target", "batch"]
    assert argv[8] == "--data-path" and argv[10:] == ["--no-tf32", "--constant-fold", "--inductor-configs", "max_autotune=1"]
    options = {"tf32": False, "constant_fold": True, "inductor_configs": {"max_autotune": "1"}}
    assert report.passed and report.options == options
    assert stored_check_report(out)["options"] == options and load_artifact(out).build_info["options"] == options

    caplog.clear()
    compile_model(student_ckpt, out, verbose=False)
    assert not [r for r in caplog.records if r.name == "torchsim_distill.compile"]
    assert capsys.readouterr().out == ""
    assert argvs[1][10:] == ["--no-tf32"]


def test_cli_compile_and_evaluate(tmp_path, student_ckpt, capsys):
    out = tmp_path / "cli.nequip.pt2"
    assert cli(["compile", str(student_ckpt), str(out), "--device", "cpu", "--target", "batch"]) == 0
    assert "wrote" in capsys.readouterr().out
    calc = DistilledTorchSimCalc.from_compiled_model(out, chemical_species_to_atom_type_map=True)
    atoms = [rattled_alloy(seed=1), rattled_alloy((1, 1, 2), seed=2)]
    expected = calc(ts.io.atoms_to_state(atoms, torch.device("cpu"), torch.float64))["energy"]
    write(tmp_path / "s.xyz", atoms)
    assert cli(["evaluate", str(out), str(tmp_path / "s.xyz")]) == 0
    printed = capsys.readouterr().out
    assert f"{expected[1].item():.6f}" in printed and "2 structures evaluated" in printed
    assert cli(["compile", str(tmp_path / "nope.ckpt"), str(out)]) == 1
    assert "no such file exists" in capsys.readouterr().err


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
