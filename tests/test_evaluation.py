"""Evaluation stage: metrics with exact expected values, gates, speed, plots and the model card.

EMT is both the reference and, wrapped with known offsets or a force rotation, the
"student", so every metric has an exact expected value; no compiled model is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase import Atoms, units
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from torch_sim.models.interface import ModelInterface

from torchsim_distill.bench.toy import emt_cu_au_frames
from torchsim_distill.distill.evaluation import (
    EV_PER_A3_TO_GPA,
    EvaluationReport,
    Gates,
    Metrics,
    check_gates,
    compute_metrics,
    dataset_hash,
    evaluate_student,
    measure_speed,
    predict,
    reference_labels,
)
from torchsim_distill.distill.model_card import (
    CardSection,
    add_card_section,
    name_card,
    parity_plots,
    write_model_card,
)
from torchsim_distill.distill.teachers import load_teacher

GPA = 1 / units.GPa  # GPa per eV/Å³, from ASE rather than the module under test
DE = 0.004  # eV/atom
DF = np.array([0.010, -0.020, 0.030])  # eV/Å
DS = np.array([[1e-4, 2e-4, 0.0], [2e-4, -3e-4, 0.0], [0.0, 0.0, 5e-4]])  # eV/Å³


class Wrapped(ModelInterface):
    """EMT with known changes: an energy offset per atom, a force offset or rotation,
    a stress offset, an optional sleep; it records the pbc and size of every call."""

    def __init__(self, model, *, de=0.0, df=(0.0, 0.0, 0.0), ds=None, rotation=None, sleep=0.0, log=None, tag=""):
        super().__init__()
        self.model = model
        self._device, self._dtype = model.device, model.dtype
        self._compute_forces, self._compute_stress = True, True
        self._memory_scales_with = "n_atoms"
        self.de, self.df = de, torch.as_tensor(df, dtype=model.dtype)
        self.ds = torch.as_tensor(np.zeros((3, 3)) if ds is None else ds, dtype=model.dtype)
        self.rotation = None if rotation is None else torch.as_tensor(rotation, dtype=model.dtype)
        self.sleep, self.log, self.tag = sleep, log, tag

    def forward(self, state: ts.SimState, **kwargs):
        if self.log is not None:
            self.log.append((self.tag, bool(torch.as_tensor(state.pbc).all()), state.n_systems))
        if self.sleep:
            import time

            time.sleep(self.sleep)
        out = dict(self.model(state))
        out["energy"] = out["energy"] + self.de * state.n_atoms_per_system
        forces = out["forces"] + self.df
        out["forces"] = forces @ self.rotation.T if self.rotation is not None else forces
        out["stress"] = out["stress"] + self.ds
        return out


def _cluster(seed: int) -> Atoms:
    """A non-periodic Cu–Au cluster (no cell, so no stress)."""
    rng = np.random.default_rng(seed)
    atoms = Atoms("Cu3Au2", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.6], [2.0, 2.0, 1.8]])
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    return atoms


def _label(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.cell.volume > 1e-12:
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


@pytest.fixture(scope="module")
def emt() -> ModelInterface:
    return load_teacher("emt")


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    """Mixed pbc on purpose: bulk, clusters, bulk; EMT-labelled; two kinds."""
    bulk = emt_cu_au_frames(8, seed=3, reps=1)
    clusters = [_label(_cluster(s)) for s in range(3)]
    out = bulk[:3] + clusters[:2] + bulk[3:] + clusters[2:]
    for i, atoms in enumerate(out):
        atoms.info["kind"] = "bulk" if atoms.pbc.all() else "cluster"
        atoms.info["frame_id"] = i
    return out


def test_emt_predictions_equal_stored_labels_across_mixed_pbc(emt, frames):
    log: list = []
    model = Wrapped(emt, log=log)
    pred = predict(model, frames, batch_size=2)
    ref = reference_labels(frames)
    # each call holds one pbc and at most 2 systems; all frames covered
    assert all(n <= 2 for _, _, n in log) and sum(n for _, _, n in log) == len(frames)
    assert [pbc for _, pbc, _ in log] == [True, True, False, True, True, True, False]
    np.testing.assert_allclose(pred["energy"], ref["energy"], atol=1e-9)
    np.testing.assert_allclose(pred["forces"], ref["forces"], atol=1e-9)
    np.testing.assert_array_equal(pred["n_atoms"], [len(a) for a in frames])
    periodic = np.array([a.pbc.all() for a in frames])
    assert np.isnan(ref["stress"][~periodic]).all() and np.isnan(pred["stress"][~periodic]).all()
    np.testing.assert_allclose(pred["stress"][periodic], ref["stress"][periodic], atol=1e-10)


def test_identical_models_give_zero_errors_and_unit_cosine(emt, frames):
    m = compute_metrics(reference_labels(frames), predict(emt, frames), frames)
    assert m.energy_mae < 1e-6 and m.force_mae < 1e-6 and m.stress_mae < 1e-6
    assert m.force_cosine == pytest.approx(1.0, abs=1e-12)
    assert (m.n_frames, m.n_atoms) == (len(frames), sum(len(a) for a in frames))


def test_known_offsets_give_exact_metrics(emt, frames):
    m = compute_metrics(reference_labels(frames), predict(Wrapped(emt, de=DE, df=DF, ds=DS), frames), frames)
    assert m.energy_mae == pytest.approx(DE * 1e3, rel=1e-6)
    assert m.force_mae == pytest.approx(np.abs(DF).mean() * 1e3, rel=1e-6)
    assert m.stress_mae == pytest.approx(np.abs(DS).mean() * GPA, rel=1e-6)
    assert set(m.per_kind) == {"bulk", "cluster"}
    bulk, cluster = m.per_kind["bulk"], m.per_kind["cluster"]
    assert (bulk.n_frames, cluster.n_frames) == (8, 3)
    assert (bulk.n_atoms, cluster.n_atoms) == (32, 15)
    for k in (bulk, cluster):
        assert k.energy_mae == pytest.approx(DE * 1e3, rel=1e-6)
        assert k.force_mae == pytest.approx(np.abs(DF).mean() * 1e3, rel=1e-6)
    assert bulk.stress_mae == pytest.approx(m.stress_mae, rel=1e-12)
    assert cluster.stress_mae is None  # clusters have no volume, so no stress metric


def test_rotated_forces_lower_the_cosine(emt, frames):
    angle = np.deg2rad(40.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ref = reference_labels(frames)
    m = compute_metrics(ref, predict(Wrapped(emt, rotation=rot), frames), frames)
    f = ref["forces"][np.linalg.norm(ref["forces"], axis=1) > 1e-3]
    expected = np.mean((f[:, 2] ** 2 + (f[:, 0] ** 2 + f[:, 1] ** 2) * np.cos(angle)) / np.sum(f**2, axis=1))
    assert m.force_cosine < 1.0
    assert m.force_cosine == pytest.approx(expected, rel=1e-9)
    assert m.energy_mae < 1e-6  # only directions changed


def test_gates_pass_and_fail_with_named_values():
    good = Metrics(energy_mae=1.0, force_mae=20.0, force_cosine=0.99, stress_mae=0.05, n_frames=3, n_atoms=12)
    assert check_gates(good, Gates()) == []
    assert check_gates(good, Gates(min_speedup=2.0), {"speedup": 3.0}) == []

    bad = Metrics(energy_mae=7.5, force_mae=80.0, force_cosine=0.9, stress_mae=0.25, n_frames=3, n_atoms=12)
    failures = check_gates(bad, Gates(min_speedup=2.0), {"speedup": 1.5})
    assert len(failures) == 4
    energy, force, stress, speed = failures
    assert "energy_mae" in energy and "7.5" in energy and "5" in energy and "meV/atom" in energy
    assert "force_mae" in force and "80" in force and "60" in force and "meV/Å" in force
    assert "stress_mae" in stress and "0.25" in stress and "0.1" in stress and "GPa" in stress
    assert "speedup" in speed and "1.5" in speed and "2" in speed

    # not measured: a speed gate fails, a missing stress metric is skipped, NaN fails
    assert any("not measured" in f for f in check_gates(good, Gates(min_speedup=2.0)))
    no_stress = Metrics(1.0, 20.0, 0.99, None, 3, 12)
    assert check_gates(no_stress, Gates()) == []
    assert "energy_mae" in check_gates(Metrics(math.nan, 20.0, 0.99, None, 3, 12), Gates())[0]


def test_measure_speed_interleaves_and_reports_medians(emt, frames):
    log: list = []
    bulk = [a for a in frames if a.pbc.all()]
    student = Wrapped(emt, log=log, tag="s")
    teacher = Wrapped(emt, log=log, tag="t", sleep=0.02)
    speed = measure_speed(student, teacher, bulk, repeats=3)
    # warm-up, then 3 interleaved rounds whose first model alternates
    assert [tag for tag, _, _ in log] == ["s", "t", "s", "t", "t", "s", "s", "t"]
    assert all(n == len(bulk) for _, _, n in log)  # one batched call holds every frame
    assert speed["t_student_s"] > 0 and speed["t_teacher_s"] >= 0.02
    assert speed["speedup"] == pytest.approx(speed["t_teacher_s"] / speed["t_student_s"])
    assert speed["speedup"] > 1
    assert (speed["n_systems"], speed["n_atoms"]) == (8, 32)
    assert speed["torch_threads"] == torch.get_num_threads()
    with pytest.raises(ValueError, match="one pbc"):
        measure_speed(emt, emt, frames)


def test_gpa_conversion_is_ases():
    assert EV_PER_A3_TO_GPA == pytest.approx(GPA, rel=1e-12)
    assert 1.0 * units.GPa * EV_PER_A3_TO_GPA == pytest.approx(1.0, rel=1e-12)


def test_parity_plots_are_nonempty_pngs(emt, frames, tmp_path):
    ref = reference_labels(frames)
    paths = parity_plots(ref, predict(Wrapped(emt, de=DE, df=DF, ds=DS), frames), tmp_path)
    assert [p.name for p in paths] == ["parity_energy.png", "parity_forces.png", "parity_stress.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_evaluate_writes_card_and_plots_even_when_gates_fail(emt, frames, tmp_path):
    student = Wrapped(emt, de=DE, df=DF, ds=DS)
    report = evaluate_student(
        student, frames, tmp_path, teacher=emt, gates=Gates(energy_mae=1.0, min_speedup=1e6),
        metadata={"student": "toy Cu-Au student"}, batch_size=4,
    )
    assert isinstance(report, EvaluationReport) and not report.passed
    assert len(report.failures) == 2
    assert "energy_mae" in report.failures[0] and "speedup" in report.failures[1]
    assert report.metrics.energy_mae == pytest.approx(DE * 1e3, rel=1e-6)
    assert report.speed["n_systems"] == 4  # the first batch_size frames with the first frame's pbc
    for key in ("parity_energy", "parity_forces", "parity_stress", "model_card_json", "model_card_md"):
        assert report.paths[key].is_file() and report.paths[key].stat().st_size > 0

    card = json.loads(report.paths["model_card_json"].read_text())
    assert card["passed"] is False and card["failures"] == report.failures
    assert card["metrics"]["energy_mae"] == pytest.approx(DE * 1e3, rel=1e-6)
    assert card["metrics"]["stress_mae"] == pytest.approx(np.abs(DS).mean() * GPA, rel=1e-6)
    assert card["metrics"]["per_kind"]["cluster"]["stress_mae"] is None
    assert card["gates"] == {"energy_mae": 1.0, "force_mae": 60.0, "stress_mae": 0.1, "min_speedup": 1e6,
                             "distorted_force_mae": None, "distorted_distance": 2.0, "distorted_flag_recall": None}
    assert card["speed"]["speedup"] == pytest.approx(report.speed["speedup"])
    meta = card["metadata"]
    assert meta["student"] == "toy Cu-Au student" and meta["teacher"] == "ASECalculatorTeacher"
    assert meta["species"] == ["Au", "Cu"] and meta["n_frames"] == 11 and meta["n_atoms"] == 47
    assert meta["data_hash"] == dataset_hash(frames) and meta["kinds"] == {"bulk": 8, "cluster": 3}
    assert set(card["plots"]) == {"parity_energy.png", "parity_forces.png", "parity_stress.png"}

    md = report.paths["model_card_md"].read_text()
    assert "FAILED" in md and "toy Cu-Au student" in md
    assert f"{DE * 1e3:.4g} meV/atom" in md and "≤ 1 meV/atom" in md and "✗" in md
    assert "| cluster | 3 | 15 |" in md and "![parity_forces](parity_forces.png)" in md
    assert "speedup" in md


def test_evaluate_passes_identical_student_and_labels_unlabelled_frames(emt, frames, tmp_path):
    report = evaluate_student(emt, frames, tmp_path / "a", teacher="emt")
    assert report.passed and report.failures == []
    assert "PASSED" in report.paths["model_card_md"].read_text()

    bare = [a.copy() for a in frames]  # copies carry no calculator: the teacher labels them
    report = evaluate_student(Wrapped(emt, de=DE), bare, tmp_path / "b", teacher=emt)
    assert report.metrics.energy_mae == pytest.approx(DE * 1e3, rel=1e-6)
    with pytest.raises(ValueError, match="pass a teacher"):
        evaluate_student(emt, bare, tmp_path / "c")


def test_write_model_card_without_speed_or_kinds(tmp_path):
    m = Metrics(1.0, 2.0, 0.5, None, 1, 4)
    json_path, md_path = write_model_card(tmp_path, metrics=m, gates=Gates(), failures=[], metadata={"teacher": "emt"})
    card = json.loads(json_path.read_text())
    assert card["passed"] is True and card["speed"] is None and card["metrics"]["stress_mae"] is None
    md = md_path.read_text()
    assert "Not measured" in md and "n/a" in md and "Parity plots" not in md


def test_card_carries_no_path_of_the_machine_it_was_built_on(tmp_path, monkeypatch):
    """A card travels with its student: paths under the working and home directories are
    written relative (issue 23: the shipped card's advice held /work/main/...)."""
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path / "runs" / "cuau" / "seeds.xyz")
    home = str(Path.home() / "data" / "x.xyz")
    m = Metrics(1.0, 2.0, 0.5, None, 1, 4)
    json_path, md_path = write_model_card(
        tmp_path / "report", metrics=m, gates=Gates(), failures=[],
        metadata={"teacher": "emt", "structures": [here, home, "/elsewhere/y.xyz"]},
        sections=[CardSection("advice", "Advice", [f"rerun with --structures {here}"], [f"- rerun {here}"])],
    )
    for text in (json_path.read_text(), md_path.read_text()):
        assert str(tmp_path) not in text and str(Path.home()) + "/" not in text
        assert "runs/cuau/seeds.xyz" in text and "~/data/x.xyz" in text and "/elsewhere/y.xyz" in text
    add_card_section(tmp_path / "report", CardSection("more", "More", {"where": here}, [f"at {here}"]))
    assert str(tmp_path) not in json_path.read_text() + md_path.read_text()


def test_named_card_titles_the_student_not_its_architecture(tmp_path):
    m = Metrics(1.0, 2.0, 0.5, None, 1, 4)
    json_path, md_path = write_model_card(tmp_path, metrics=m, gates=Gates(), failures=[],
                                          metadata={"teacher": "emt", "student": "nequip"})
    assert md_path.read_text().startswith("# Model card: nequip\n")
    name_card(tmp_path, "cu-au-emt")
    assert md_path.read_text().startswith("# Model card: cu-au-emt\n")
    card = json.loads(json_path.read_text())
    assert card["metadata"]["name"] == "cu-au-emt" and card["metadata"]["student"] == "nequip"
    assert "**student**: `nequip`" in md_path.read_text()  # the architecture is still said


def test_intended_use_is_measured_from_the_training_frames(frames):
    from torchsim_distill.distill.sampling import SamplingOptions
    from torchsim_distill.distill.sections import intended_use_section

    frames = [atoms.copy() for atoms in frames]  # the module's frames keep their kinds
    for i, atoms in enumerate(frames):
        atoms.info["kind"] = "rattle" if i % 2 else "md"
    section = intended_use_section(frames, SamplingOptions(max_strain=0.05, temperatures=(300.0, 900.0)),
                                   excluded_kinds=("compress",), flag_threshold=0.1)
    au = [a.get_chemical_symbols().count("Au") / len(a) for a in frames]
    assert section.data["composition"]["Au"] == [min(au), max(au)]
    assert section.data["species"] == sorted({s for a in frames for s in a.get_chemical_symbols()})
    text = "\n".join(section.markdown)
    assert "±5 %" in text and "300, 900 K" in text and "md, rattle" in text
    assert "Kept out of training**: compress" in text and "0.1 eV/Å" in text
