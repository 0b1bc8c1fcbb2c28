"""On-policy distillation end to end (EMT teacher, tiny student, CPU): a committee of two,
two rounds, killed by SIGKILL in the middle of round 2's labelling and resumed by the same
command; then what run.json, the labelled files and the model card say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import fcc111
from ase.io import read, write

from torchsim_distill.cli import main as cli
from torchsim_distill.distill.evaluation import dataset_hash
from torchsim_distill.distill.rounds import RoundOptions, select
from torchsim_distill.models.cu_au import phase, random_alloy
from torchsim_distill.models.package import committee_entries, read_distill_metadata

pytestmark = pytest.mark.slow

# Runs the CLI, but dies by SIGKILL after labelling half of round 2's selected frames.
KILLED_IN_ROUND_2 = """
import os, signal, sys
from torchsim_distill.distill import rounds
real = rounds.label_frames
def label_then_die(frames, teacher, path, **kwargs):
    if str(path).endswith("round_2.xyz"):
        real(frames[: len(frames) // 2], teacher, path, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(frames, teacher, path, **kwargs)
rounds.label_frames = label_then_die
from torchsim_distill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _seeds(path: Path) -> Path:
    rng = np.random.default_rng(0)
    seeds = [random_alloy(x_au, (2, 1, 1), rng) for x_au in (0.0, 0.25, 0.5, 0.75, 1.0)]
    slab = fcc111("Cu", (2, 2, 3), a=3.7, vacuum=5.0, periodic=True)
    slab.symbols[:4] = "Au"
    write(path, [*seeds, slab], format="extxyz")
    return path


def _property_structures(path: Path) -> Path:
    """What the acceptance suite measures instead of the seeds: three cubic 4-atom cells."""
    write(path, [phase(name, (1, 1, 1)) for name in ("Cu", "Au", "Cu3Au")], format="extxyz")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    out = root / "run"
    args = [
        "distill", "--teacher", "emt", "--structures", str(_seeds(root / "seeds.xyz")), "--out", str(out),
        "--size", "tiny", "--n-configs", "48", "--max-epochs", "3", "--r-max", "4.5", "--seed", "1",
        "--rounds", "2", "--committee", "2", "--round-budget", "12", "--round-epochs", "3", "--trust-low", "0.02",
        "--max-energy-mae", "1e-6",  # a gate no student meets: the rounds never stop early, advice is given
        "--property-structures", str(_property_structures(root / "properties.xyz")),
    ]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_ROUND_2, *args], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    partial = read(out / "labels" / "round_2.xyz", index=":")
    code = cli(args)  # the same command resumes
    return out, code, len(partial)


def _records(out: Path) -> list[dict]:
    return json.loads((out / "run.json").read_text())["stages"]["rounds"]["records"]


def test_two_rounds_select_and_label_frames(run):
    out, code, _ = run
    assert code == 2  # the impossible energy gate
    records = _records(out)
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert r["selected"] > 0 and r["labelled"] == r["selected"] <= 12
        assert r["in_trust"] >= r["selected"] and r["proposed"] == r["below_trust"] + r["in_trust"] + r["above_trust"]
        # the new frames' errors before training on them, and the committee's ranking on them
        assert r["new_frames_before"]["n_frames"] == r["labelled"] and r["new_frames_before"]["force_mae"] > 0
        assert "spearman" in r["committee_on_new"]


def test_killed_round_resumes_without_losing_or_repeating_frames(run):
    out, _, n_partial = run
    labelled = read(out / "labels" / "round_2.xyz", index=":")
    ids = [a.info["frame_id"] for a in labelled]
    assert 0 < n_partial < len(labelled)
    assert len(ids) == len(set(ids))
    # exactly the frames an uninterrupted round selects from its saved candidates and scores
    candidates = read(out / "rounds" / "round_2" / "candidates.xyz", index=":")
    scores = json.loads((out / "rounds" / "round_2" / "scores.json").read_text())["uncertainty"]
    config = json.loads((out / "run.json").read_text())["config"]["rounds"]
    options = RoundOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    picked, _ = select(candidates, np.array(scores, dtype=float), options=options)
    assert sorted(ids) == sorted(candidates[i].info["frame_id"] for i in picked)


def test_held_out_split_is_the_same_in_every_round(run):
    out, _, _ = run
    test = read(out / "labels" / "test.xyz", index=":")
    records = _records(out)
    assert {r["held_out_sha256"] for r in records} == {dataset_hash(test)}
    assert all(r["held_out_after"]["n_frames"] == len(test) for r in records)
    test_ids = {a.info["frame_id"] for a in test}
    for k in (1, 2):
        assert not test_ids & {a.info["frame_id"] for a in read(out / "labels" / f"round_{k}.xyz", index=":")}


def test_package_carries_the_committee_and_the_round_frames(run):
    out, _, _ = run
    meta = read_distill_metadata(out / "student.nequip.zip")
    assert meta["committee"]["size"] == 2 and "fine-tunes of the student" in meta["committee"]["members"]
    assert len(committee_entries(out / "student.nequip.zip")) == 1
    assert meta["n_frames"]["rounds"] == sum(r["labelled"] for r in _records(out))


def test_card_has_calibration_rounds_acceptance_and_advice(run):
    out, _, _ = run
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert set(stages) == {"sample", "split", "label", "train", "committee", "rounds", "compile", "acceptance", "evaluate"}
    card = json.loads((out / "report" / "model_card.json").read_text())
    cal = card["committee"]["calibration"]
    assert cal["n_frames"] == len(read(out / "labels" / "test.xyz", index=":"))
    assert -1 <= cal["spearman"] <= 1
    assert [r["round"] for r in card["rounds"]] == [1, 2]
    rows = card["acceptance"]["rows"]
    measured = {"bulk modulus (Birch–Murnaghan)", "C44", "vacancy formation energy", "formation energy", "NVE energy drift"}
    assert measured <= {r["property"] for r in rows}
    assert all(r["teacher"] is not None and r["student"] is not None for r in rows if r["property"] in measured)
    assert {r["system"] for r in rows} == {"Cu", "Au", "Cu3Au"}  # the property structures, not the seeds
    assert card["advice"] and any("torchsim-distill distill" in line for line in card["advice"])
    md = (out / "report" / "model_card.md").read_text()
    for heading in ("## Committee and uncertainty", "## On-policy rounds", "## Property acceptance", "## Advice"):
        assert heading in md
    # phonons (phonopy is in the test extra): gated rows per property structure, plots beside the card
    assert {r["system"] for r in rows if r["property"] == "phonon frequency MAE (q-grid)"} == {"Cu", "Au", "Cu3Au"}
    assert card["phonons"]["Cu"]["supercell"] == [4, 4, 4] and "## Phonons: teacher vs student" in md
    assert sorted(p.name for p in (out / "report").glob("phonons_*.png")) == [
        "phonons_Au.png", "phonons_Cu.png", "phonons_Cu3Au.png"]
    assert card["split"]["how"].startswith("by trajectory within seeds")  # six seeds: too few to hold seeds out



def test_packaged_committee_loads_with_uncertainty(run):
    """The member inside the package (extracted and compiled) gives the uncertainty that the
    trained member's checkpoint gives through nequip's own eager calculator: for two members
    the per-atom spread is |F_student - F_member| / 2, and a structure's is its max over atoms."""
    import warnings

    from nequip.integrations.ase import NequIPCalculator

    from torchsim_distill.distill.calibration import committee_uncertainty
    from torchsim_distill.models.student import student_calc

    out, _, _ = run
    frames = read(out / "labels" / "test.xyz", index=":")
    packaged = student_calc(out / "student.nequip.zip", uncertainty=True)
    assert len(packaged.committee) == 1 and packaged.uncertainty
    scores = committee_uncertainty(packaged, frames)
    (member_ckpt,) = json.loads((out / "run.json").read_text())["stages"]["rounds"]["members"]
    member_ckpt = str(out / member_ckpt)  # run.json records paths inside the run relative to it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        member = NequIPCalculator._from_saved_model(member_ckpt, chemical_species_to_atom_type_map=True)
    start = 0
    for i, atoms in enumerate(frames):
        student_forces = scores["forces"][start:start + len(atoms)]
        start += len(atoms)
        atoms = atoms.copy()
        atoms.calc = member
        spread = np.linalg.norm(student_forces - atoms.get_forces(), axis=1) / 2
        assert scores["uncertainty"][i] == pytest.approx(spread.max(), rel=1e-6, abs=1e-9)
    assert (scores["uncertainty"] > 0).all()
