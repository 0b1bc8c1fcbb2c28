"""A whole distillation (EMT teacher, tiny budget) through the CLI, and its outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
import torch_sim as ts
from ase.build import bulk, fcc111
from ase.io import read, write

from torchsim_distill import compile as compile_module
from torchsim_distill.cli import main as cli
from torchsim_distill.distill import DistillResult, read_distill_metadata
from torchsim_distill.distill import run as run_module
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.cu_au import random_alloy
from torchsim_distill.runtime.artifact import read_metadata

CPU = torch.device("cpu")


def _seeds(path: Path) -> Path:
    rng = np.random.default_rng(0)
    seeds = []
    for x_au in (0.0, 0.25, 0.5, 0.75, 1.0):
        seeds.append(random_alloy(x_au, (2, 1, 1), rng))
    slab = fcc111("Cu", (2, 2, 3), a=3.7, vacuum=5.0, periodic=True)
    slab.symbols[:4] = "Au"
    seeds.append(slab)
    write(path, seeds, format="extxyz")
    return path


@pytest.fixture(scope="module")
def emt_run(tmp_path_factory) -> tuple[Path, int, DistillResult]:
    """One tiny run with gates no student can meet: exit code 2, report written anyway.

    Also returns the :class:`DistillResult` the CLI got from ``distill``.
    """
    root = tmp_path_factory.mktemp("distill")
    seeds = _seeds(root / "seeds.xyz")
    out = root / "run"
    results: list[DistillResult] = []

    real_distill = run_module.distill

    def recording_distill(*args, **kwargs):
        results.append(real_distill(*args, **kwargs))
        return results[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "distill", recording_distill)  # the CLI imports it when called
        code = cli([
            "distill", "--teacher", "emt", "--structures", str(seeds), "--out", str(out),
            "--size", "tiny", "--n-configs", "48", "--max-epochs", "3", "--r-max", "4.5", "--seed", "1",
            "--max-energy-mae", "1e-6", "--no-acceptance",  # the property suite runs in test_distill_rounds
        ])
    (result,) = results
    return out, code, result


@pytest.mark.slow
def test_gates_fail_with_nonzero_exit_and_report_still_written(emt_run, capsys):
    out, code, _ = emt_run
    assert code == 2
    card = json.loads((out / "report" / "model_card.json").read_text())
    text = (out / "report" / "model_card.md").read_text()
    assert card["metrics"]["energy_mae"] > 1e-6 and "energy" in text.lower()
    assert sorted(p.name for p in (out / "report").glob("*.png"))  # parity plots
    # held-out forces 2.5x the training error and no committee: the advice is more data, with the commands
    assert any("--committee 3 --rounds 2" in line and "--n-configs 96 --seed 1" in line for line in card["advice"])
    assert "## Advice" in text


@pytest.mark.slow
def test_run_directory_records_every_stage(emt_run):
    out, _, _ = emt_run
    run = json.loads((out / "run.json").read_text())
    assert set(run["stages"]) == {"sample", "split", "label", "train", "compile", "evaluate"}
    assert run["config"]["teacher"] == "emt" and run["stages"]["sample"]["n_frames"] == 48
    # six seeds are too few to hold whole seeds out (10 for 0.8/0.1/0.1): split within seeds
    assert run["stages"]["split"]["how"].startswith("by trajectory within seeds: only 6 seed structures")
    ids = {s: {a.info["frame_id"] for a in read(out / "labels" / f"{s}.xyz", index=":")} for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert sum(map(len, ids.values())) == 48 and len(ids["train"]) > 0.6 * 48
    for split in ("train", "val", "test"):
        frames = read(out / "labels" / f"{split}.xyz", index=":")
        assert {int(a.info["seed_id"]) for a in frames} <= set(run["stages"]["split"]["seed_ids"][split])
    assert run["stages"]["evaluate"]["passed"] is False


@pytest.mark.slow
def test_package_carries_distillation_metadata_and_compiles(emt_run):
    from torchsim_distill import DistilledTorchSimCalc
    from torchsim_distill.compile import cached_compile

    out, _, result = emt_run
    assert result.package == out / "student.nequip.zip"
    meta = read_distill_metadata(out / "student.nequip.zip")
    assert meta["teacher"] == "emt" and meta["species"] == ["Au", "Cu"]
    assert sum(meta["n_frames"].values()) == 48 and len(meta["data_sha256"]) == 64
    assert meta["r_max"] == 4.5 and meta["size"] == "tiny" and meta["seed"] == 1
    # the gates it was held to travel with it; the numbers it got are the run's model card
    card = json.loads((out / "report" / "model_card.json").read_text())
    assert meta["gates"] == card["gates"] and meta["gates"]["energy_mae"] == 1e-6
    # the teacher as the card records it: name, package version, no weights file (EMT has none)
    assert card["metadata"]["teacher_source"] == meta["teacher_source"] == {
        "name": "emt", "kind": "ase", "package": "ase", "version": ase.__version__, "file": None, "sha256": None}
    assert "metrics" not in meta and "speed" not in meta
    # a plain teacher: the card says so, the package keeps the bytes it had before the key existed
    assert card["metadata"]["teacher_dispersion"] == "none" and "teacher_dispersion" not in meta
    assert "energy_mae" in card["metrics"] and card["speed"]["speedup"] > 0
    calc = DistilledTorchSimCalc.from_compiled_model(
        cached_compile(out / "student.nequip.zip"), chemical_species_to_atom_type_map=True
    )
    out_ = calc(ts.io.atoms_to_state([bulk("Cu", "fcc", a=3.6)], CPU, torch.float64))
    assert torch.isfinite(out_["energy"]).all()


@pytest.mark.slow
def test_compiled_student_is_the_cached_compile_of_the_final_package(emt_run, monkeypatch):
    """The package is not rewritten after it is compiled: the .pt2 records the package's
    hash as its source, sits under the package's cache key, and a second cached_compile
    of the package finds it instead of compiling again."""
    out, _, result = emt_run
    key = compile_module.cache_key(result.package, device="cpu", target="batch")
    assert result.compiled.name == f"{key}.nequip.pt2" and result.compiled.is_file()
    _, build_info = read_metadata(result.compiled)
    assert build_info["source_sha256"] == hashlib.sha256(result.package.read_bytes()).hexdigest()

    def no_compile(*args, **kwargs):
        raise AssertionError("cached_compile compiled the package again")

    monkeypatch.setattr(compile_module, "compile_model", no_compile)
    assert compile_module.cached_compile(result.package, device="cpu", target="batch") == result.compiled


@pytest.mark.slow
def test_rerun_resumes_without_resampling_or_relabeling(emt_run):
    """A second run reuses frames and labels (same bytes) and finishes training at once."""
    out, _, _ = emt_run
    before = {p.name: p.read_bytes() for p in (out / "labels").glob("*.xyz")}
    frames_before = (out / "frames.xyz").read_bytes()
    run = json.loads((out / "run.json").read_text())
    seeds = run["config"]["structures"][0]
    code = cli([
        "distill", "--teacher", "emt", "--structures", seeds, "--out", str(out),
        "--size", "tiny", "--n-configs", "48", "--max-epochs", "3", "--r-max", "4.5", "--seed", "1",
        "--max-energy-mae", "1e3", "--max-force-mae", "1e5", "--max-stress-mae", "1e3", "--no-acceptance",
    ])
    assert code == 0  # same student, loose frame gates and no property gates: passes
    assert (out / "frames.xyz").read_bytes() == frames_before
    assert {p.name: p.read_bytes() for p in (out / "labels").glob("*.xyz")} == before


def test_unknown_teacher_is_a_clear_error(tmp_path, capsys):
    seeds = _seeds(tmp_path / "s.xyz")
    code = cli(["distill", "--teacher", "mace-mp-0", "--structures", str(seeds), "--out", str(tmp_path / "r")])
    assert code == 1
    err = capsys.readouterr().err
    assert "mace-mp-0" in err and "sevennet-0" in err and "emt" in err


def test_missing_property_structures_fail_before_any_work(tmp_path, capsys):
    seeds = _seeds(tmp_path / "s.xyz")
    code = cli(["distill", "--teacher", "emt", "--structures", str(seeds), "--out", str(tmp_path / "r"),
                "--property-structures", str(tmp_path / "phases.xyz")])
    assert code == 1
    assert "phases.xyz" in capsys.readouterr().err and not (tmp_path / "r" / "frames.xyz").exists()


def test_excluded_kinds_leave_training_and_validation_but_not_the_test(tmp_path):
    from torchsim_distill.distill.run import DistillConfig, training_labels

    frames = []
    for kind in ("rattle", "compress", "md", "large_rattle"):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.info["kind"] = kind
        frames.append(atoms)
    labels = {}
    for split in ("train", "val", "test"):
        labels[split] = tmp_path / f"{split}.xyz"
        write(labels[split], frames, format="extxyz")
    config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path), train_exclude_kinds=("compress", "large_rattle"))
    used = training_labels(config, tmp_path, labels)
    for split in ("train", "val"):
        assert used[split].parent == tmp_path / "train" / "labels"
        assert [a.info["kind"] for a in read(used[split], index=":")] == ["rattle", "md"]
    assert used["test"] == labels["test"] and len(read(used["test"], index=":")) == 4
    assert training_labels(DistillConfig(teacher="emt", structures=[], out=str(tmp_path)), tmp_path, labels) == labels
    with pytest.raises(ValueError, match=r"\['squash'\] are not sampling kinds; the kinds are \["):
        DistillConfig(teacher="emt", structures=[], out=str(tmp_path), train_exclude_kinds=("squash",)).check()


def test_extra_train_frames_join_training_only_with_the_runs_labels(tmp_path):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from torchsim_distill.distill.run import DistillConfig, training_labels

    def labelled(kind, scale, energies=False):
        atoms = bulk("Cu", "fcc", a=3.6 * scale, cubic=True)
        atoms.rattle(0.05, seed=int(scale * 100))
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
        if energies:  # a teacher that returns per-atom energies labelled these, not the run's
            results["energies"] = atoms.get_potential_energies()
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["kind"] = kind
        return atoms

    labels = {}
    for split in ("train", "val", "test"):
        labels[split] = tmp_path / f"{split}.xyz"
        write(labels[split], [labelled("rattle", 1.0), labelled("md", 1.01)], format="extxyz")
    extra = tmp_path / "extra.xyz"
    write(extra, [labelled("shear_strain", 0.99, True), labelled("compress", 0.9, True), labelled("md", 1.02, True)],
          format="extxyz")
    config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path), extra_train=[extra],
                           train_exclude_kinds=("compress",))
    config.check()
    used = training_labels(config, tmp_path, labels)
    trained = read(used["train"], index=":")
    assert [a.info["kind"] for a in trained] == ["rattle", "md", "shear_strain", "md"]
    assert all({"energy", "forces", "stress"} <= set(a.calc.results) for a in trained)
    assert not any("energies" in a.calc.results for a in trained)  # the run's frames lack them
    assert trained[2].get_potential_energy() == pytest.approx(read(extra, index=0).get_potential_energy())
    # validation and test stay the run's own
    assert len(read(used["val"], index=":")) == 2 and used["test"] == labels["test"]

    unstressed = labelled("md", 1.0)
    unstressed.calc = SinglePointCalculator(unstressed, energy=unstressed.get_potential_energy(),
                                            forces=unstressed.get_forces())
    bad = tmp_path / "bad.xyz"
    write(bad, [unstressed], format="extxyz")
    other = DistillConfig(teacher="emt", structures=[], out=str(tmp_path), extra_train=[bad], train_dir="other")
    with pytest.raises(ValueError, match=r"bad.xyz, frame 0: lacks the label\(s\) \['stress'\]"):
        training_labels(other, tmp_path, labels)
    with pytest.raises(ValueError, match=r"extra_train file\(s\) \['nowhere.xyz'\] do not exist"):
        DistillConfig(teacher="emt", structures=[], out=str(tmp_path), extra_train=["nowhere.xyz"]).check()


@pytest.mark.slow
def test_student_without_committee_refuses_uncertainty(emt_run):
    from torchsim_distill.models.student import student_calc

    out, _, _ = emt_run
    assert student_calc(out / "student.nequip.zip").committee == []
    with pytest.raises(ValueError, match="has no committee, so it gives no uncertainty; distil with --committee 2"):
        student_calc(out / "student.nequip.zip", uncertainty=True)


def test_validation_is_logged_and_carded_near_and_far_from_equilibrium_apart(tmp_path):
    """The validation split is written near and far from equilibrium (nearest pair below
    Gates.distorted_distance), the trainer validates on both, and the card reads them back."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from torchsim_distill.distill.run import DistillConfig, train_stage, training_labels, validation_near_far
    from torchsim_distill.distill.sections import near_far_section

    frames = []
    for i, factor in enumerate((1.0, 1.01, 0.75, 0.99, 0.74)):  # 0.75 × 2.55 Å: far (< 2 Å)
        atoms = bulk("Cu", "fcc", a=3.6 * factor, cubic=True)
        atoms.rattle(0.02, seed=i)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        frames.append(atoms)
    labels = {split: tmp_path / f"{split}.xyz" for split in ("train", "val", "test")}
    for path in labels.values():
        write(path, frames, format="extxyz")
    config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path))
    used = training_labels(config, tmp_path, labels)
    assert len(read(used["val_near"], index=":")) == 3 and len(read(used["val_far"], index=":")) == 2
    assert used["val"] == labels["val"]  # the whole split still picks the best checkpoint

    # the trainer's config validates on the three, val0 the whole split
    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "train_student", lambda cfg, *a, **k: captured.update(cfg) or tmp_path / "best.ckpt")
        train_stage(config, tmp_path, used, ["Cu"], progress=False)
    files = [d["file_path"] for d in captured["data"]["val_dataset"]]
    assert files == [str(Path(used[k]).resolve()) for k in ("val", "val_near", "val_far")]

    logs = tmp_path / "train" / "logs" / "version_0"
    logs.mkdir(parents=True)
    head = ["epoch", "val0_epoch/weighted_sum"] + [f"val{k}_epoch/{m}" for k in (1, 2) for m in
                                                   ("per_atom_energy_mae", "forces_mae", "stress_mae")]
    rows = [[0, 2.0, 0.010, 0.05, 0.001, 0.2, 1.0, 0.01], [1, 1.0, 0.004, 0.03, 0.0005, 0.1, 0.8, 0.008]]
    (logs / "metrics.csv").write_text("\n".join(",".join(map(str, r)) for r in [head, *rows]) + "\n")
    validation = validation_near_far(tmp_path / "train")
    assert validation["epoch"] == 1
    assert validation["near"]["energy_mae"] == pytest.approx(4.0) and validation["far"]["force_mae"] == pytest.approx(800)
    assert validation["near"]["stress_mae"] == pytest.approx(0.0005 * 160.21766, rel=1e-4)

    section = near_far_section(load_teacher("emt"), frames, config.gates, validation)
    assert section.data["held_out"]["near"]["n_frames"] == 3 and section.data["held_out"]["far"]["n_frames"] == 2
    assert section.data["held_out"]["far"]["force_mae"] == pytest.approx(0.0, abs=1e-6)  # EMT against itself
    assert any("validation at the best epoch (2), far" in line for line in section.markdown)


@pytest.mark.slow
def test_a_d3_teacher_is_distilled_into_the_student_and_its_card_says_so(tmp_path):
    """``--teacher-dispersion d3bj``: the labels are EMT + D3 (checked against s-dftd3 in
    test_dispersion.py); run.json, the package and the card record it, and loading the student
    with D3 on top again warns."""
    pytest.importorskip("tad_dftd3")
    from ase.calculators.emt import EMT

    from torchsim_distill.models.registry import load_student

    seeds, out = _seeds(tmp_path / "seeds.xyz"), tmp_path / "run"
    code = cli([
        "distill", "--teacher", "emt", "--structures", str(seeds), "--out", str(out), "--size", "tiny",
        "--n-configs", "24", "--max-epochs", "2", "--r-max", "4.5", "--seed", "2", "--no-acceptance",
        "--teacher-dispersion", "d3bj", "--teacher-functional", "pbe",
    ])
    assert code in (0, 2)  # gates may fail at this budget; the run finished
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["teacher_options"] == {"dispersion": "d3bj", "functional": "pbe"}
    said = "d3bj (pbe), in the labels"
    assert read_distill_metadata(out / "student.nequip.zip")["teacher_dispersion"] == said
    card = json.loads((out / "report" / "model_card.json").read_text())
    assert card["metadata"]["teacher_dispersion"] == said
    assert "the student has it built in" in (out / "report" / "model_card.md").read_text()
    frame = read(out / "labels" / "train.xyz", index=0)
    plain = frame.copy()
    plain.calc = EMT()
    assert (plain.get_potential_energy() - frame.get_potential_energy()) / len(frame) > 0.05  # D3 binds
    with pytest.warns(UserWarning, match="counts the dispersion twice"):
        load_student(out / "student.nequip.zip", dispersion="d3bj", functional="pbe")
