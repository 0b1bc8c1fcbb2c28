"""Exploration driven by a first student: who drives (fast), what the budget's plan says of it
(fast), and, with EMT standing in for an expensive teacher, that the teacher only labels and a
killed run resumes without labelling or training again (slow: trains a tiny student)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch_sim as ts
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from torch_sim.models.interface import ModelInterface

from torchsim_distill.distill.budget import Costs, plan_run
from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.exploration import (
    DRIVER_TAG,
    ExploreOptions,
    choose_driver,
    student_driven_sample,
)
from torchsim_distill.distill.run import RunContext, _RunLog, _sample, label_stage, split_stage
from torchsim_distill.distill.sampling import TEACHER_KINDS, kind_quotas, read_seeds, sample_configurations
from torchsim_distill.distill.sections import exploration_section
from torchsim_distill.distill.teachers import load_teacher


class Counting(ModelInterface):
    """A teacher that counts the systems it evaluates, optionally sleeping per atom (a slow one)."""

    def __init__(self, model, *, sleep_per_atom: float = 0.0):
        super().__init__()
        self.model = model
        self._device, self._dtype = model.device, model.dtype
        self._compute_forces, self._compute_stress = True, True
        self._memory_scales_with = "n_atoms"
        self.systems, self.sleep_per_atom = 0, sleep_per_atom

    def forward(self, state: ts.SimState, **kwargs):
        self.systems += state.n_systems
        if self.sleep_per_atom:
            time.sleep(self.sleep_per_atom * state.n_atoms)
        return self.model(state)


def _seeds(tmp_path: Path) -> Path:
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    path = tmp_path / "seeds.xyz"
    write(path, [cu, cu.repeat((2, 1, 1))])
    return path


def _config(tmp_path: Path, **options) -> DistillConfig:
    return DistillConfig(teacher=options.pop("teacher", "emt"), structures=[str(_seeds(tmp_path))],
                         out=str(tmp_path / "run"), n_configs=options.pop("n_configs", 40), **options)


def test_who_drives(tmp_path):
    emt = Counting(load_teacher("emt"))
    # auto: never for EMT (cheaper to run than a student is to train), and without timing it
    assert choose_driver(_config(tmp_path), emt)[0] == "teacher" and emt.systems == 0
    assert choose_driver(_config(tmp_path, explore={"driver": "student"}), emt)[0] == "student"
    assert choose_driver(_config(tmp_path, explore={"driver": "teacher"}), emt)[0] == "teacher"
    driver, why, _ = choose_driver(_config(tmp_path, explore={"driver": "student"}, kinds=["rattle", "vacancy"]), emt)
    assert driver == "teacher" and "no MD" in why
    with pytest.raises(ValueError, match="static frames"):  # 8 frames, 4 static: too few to train on
        choose_driver(_config(tmp_path, n_configs=8, explore={"driver": "student"}), emt)
    # auto with another teacher: timed on the seeds; slow per atom, a student drives
    slow = Counting(load_teacher("emt"), sleep_per_atom=0.002)
    driver, why, measured = choose_driver(_config(tmp_path, teacher="slow"), slow)
    assert driver == "student" and measured["teacher_us_per_atom"] > 1500 and "above" in why and slow.systems > 0
    driver, why, _ = choose_driver(_config(tmp_path, teacher="slow", explore={"min_teacher_us_per_atom": 1e6}), slow)
    assert driver == "teacher" and "below" in why
    with pytest.raises(ValueError, match="auto"):
        ExploreOptions(driver="students")


#: SevenNet-0 and the student sizes as the Si run with --budget 1h measured them on one loaded core
SLOW = Costs(teacher_system_s=0.0114, teacher_atom_s=0.0086, step_s={"small": 0.036, "medium": 0.20},
             forward_s={"small": 0.014, "medium": 0.073}, import_s=5.2, atoms_per_frame=6.0, seconds=17.0)


def test_the_plan_estimates_the_exploration_and_picks_the_cheaper_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path / "cache"))  # not this machine's compile history
    emt = load_teacher("emt")  # timed by nobody: the costs are given
    plan = plan_run(_config(tmp_path, teacher="sevennet-0"), emt, budget_s=3600, costs=SLOW)
    assert plan.settings["explore"] == "student", plan.describe()
    assert plan.estimates["explore"] > 0 and "driven by a first student" in plan.describe()
    n = plan.settings["n_configs"]
    teacher_driven = plan_run(_config(tmp_path, teacher="sevennet-0", n_configs=n, explore={"driver": "teacher"}),
                              emt, budget_s=3600, costs=SLOW, keep={"n_configs"})
    # the same frames cost less to sample with the student driving, its training included
    assert plan.estimates["sample"] + plan.estimates["explore"] < teacher_driven.estimates["sample"]
    assert plan.estimates["label"] == teacher_driven.estimates["label"]  # the teacher labels every frame once
    assert teacher_driven.settings["explore"] == "teacher" and "explore" not in teacher_driven.estimates
    assert plan.apply(_config(tmp_path)).explore.driver == "student"
    # EMT, or a teacher cheaper than the student's training: the teacher drives
    assert plan_run(_config(tmp_path), emt, budget_s=3600, costs=SLOW).settings["explore"] == "teacher"
    cheap = Costs(**{**SLOW.__dict__, "teacher_system_s": 1e-4, "teacher_atom_s": 1e-5})
    cheap_plan = plan_run(_config(tmp_path, teacher="sevennet-0"), emt, budget_s=3600, costs=cheap)
    assert cheap_plan.settings["explore"] == "teacher" and "would cost" in cheap_plan.describe()


@pytest.mark.slow
def test_the_teacher_only_labels_and_a_killed_run_resumes_without_labelling_or_training_again(tmp_path):
    """EMT forced to stand in for an expensive teacher; a tiny first student, 2 epochs (~30 s)."""
    config = _config(tmp_path, explore={"driver": "student", "size": "tiny", "max_epochs": 2})
    run = Path(config.out)
    run.mkdir()
    teacher = Counting(load_teacher("emt"))
    ctx = RunContext(config, run, _RunLog(run, config), teacher, progress=False)
    frames, _ = _sample(ctx)
    record = json.loads((run / "run.json").read_text())["stages"]
    explore = record["explore"]
    assert teacher.systems == explore["n_static"]  # so far only the static frames' labels
    assert record["sample"]["driver"] == DRIVER_TAG and explore["student_us_per_atom"] > 0

    # every kind has the frames a teacher-driven sample gives it; the static ones are those very frames
    seeds = read_seeds(config.structures)
    reference = sample_configurations(seeds, load_teacher("emt"), n_configs=config.n_configs, seed=config.seed,
                                      progress=False)
    quota = kind_quotas(list(Counter(a.info["kind"] for a in reference)), config.n_configs, config.sampling.far_share)
    counts = Counter(a.info["kind"] for a in frames)
    # (a relaxation may converge in fewer frames than its quota)
    assert all(counts[k] == quota[k] if k == "md" or k not in TEACHER_KINDS else 0 < counts[k] <= quota[k]
               for k in quota), (counts, quota)
    static = [a for a in reference if a.info["kind"] not in TEACHER_KINDS]
    mine = {a.info["frame_id"]: a for a in frames}
    for atoms in static:
        assert np.allclose(mine[atoms.info["frame_id"]].positions, atoms.positions, atol=1e-6)
    for atoms in frames:
        assert (atoms.info.get("driver") == DRIVER_TAG) == (atoms.info["kind"] in TEACHER_KINDS)

    # labelling: the teacher labels the driven frames only; it evaluated as many systems as there are frames
    labels = label_stage(config, run, split_stage(config, frames), teacher=teacher, progress=False)
    labelled = [a for p in labels.values() for a in read(p, index=":")]
    assert teacher.systems == len(frames) == len(labelled)
    assert sorted(a.info["frame_id"] for a in labelled) == sorted(mine)
    static_label = next(a for a in labelled if a.info["kind"] == "rattle")
    atoms = static_label.copy()
    atoms.calc = EMT()
    assert np.allclose(static_label.get_forces(), atoms.get_forces(), atol=1e-6)  # the teacher's own labels

    # killed after the student trained, before the sample was written: nothing is labelled or trained again
    checkpoint = run / explore["checkpoint"]  # run.json records it relative to the run
    mtime = checkpoint.stat().st_mtime_ns
    (run / "frames.xyz").unlink()
    for path in labels.values():
        path.unlink()
    again = Counting(load_teacher("emt"))
    frames_again, info = student_driven_sample(config, run, again, progress=False)
    assert again.systems == 0 and checkpoint.stat().st_mtime_ns == mtime
    assert [a.info["frame_id"] for a in frames_again] == [a.info["frame_id"] for a in frames]
    label_stage(config, run, split_stage(config, frames_again), teacher=again, progress=False)
    assert again.systems == info["n_driven"]  # the static labels were copied, not made again

    section = exploration_section(record["sample"], explore)
    assert section is not None and "first student" in "\n".join(section.markdown)
