"""run.json records paths inside the run relative to it: a moved run directory's records still
name its files, and carry no path of the machine that made them."""

from __future__ import annotations

import json
import os
import shutil

from ase.build import bulk
from ase.io import write

from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.run import _RunLog
from torchsim_distill.utils.run_paths import relative_to_run, resolve_in_run


def test_paths_inside_the_run_become_relative_and_others_stay(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "labels").mkdir(parents=True)
    (run / "labels" / "train.xyz").write_text("")
    (tmp_path / "mine.xyz").write_text("")
    monkeypatch.chdir(tmp_path)
    records = {
        "out": str(run), "label": str(run / "labels" / "train.xyz"), "cwd_relative": "run/labels/train.xyz",
        "outside_relative": "mine.xyz", "outside_absolute": "/opt/weights/model.pth",
        "names": ["emt", "7net-mf-0:PBE", "a sentence / with a slash"], "number": 3,
    }
    out = relative_to_run(records, run)
    assert out["out"] == "." and out["label"] == "labels/train.xyz" and out["cwd_relative"] == "labels/train.xyz"
    assert out["outside_relative"] == str(tmp_path / "mine.xyz")  # never misread as inside the run
    assert out["outside_absolute"] == "/opt/weights/model.pth"
    assert out["names"] == records["names"] and out["number"] == 3
    assert relative_to_run(out, run) == out  # written again (a resumed run): unchanged
    assert resolve_in_run("labels/train.xyz", "/x/run") == "/x/run/labels/train.xyz"
    assert resolve_in_run(".", "/x/run") == "/x/run" and resolve_in_run("/abs", "/x/run") == "/abs"


def test_a_moved_run_reads_its_config_back_with_its_files(tmp_path):
    run = tmp_path / "first" / "run"
    run.mkdir(parents=True)
    seeds = run / "seeds.extxyz"
    write(seeds, [bulk("Cu", cubic=True)])
    outside = tmp_path / "properties.extxyz"
    write(outside, [bulk("Cu", cubic=True)])
    config = DistillConfig(teacher="emt", structures=[str(seeds)], out=str(run), property_structures=[str(outside)],
                           init_from=str(run / "train" / "last.ckpt"))
    log = _RunLog(run, config)
    log.stage("train", checkpoint=str(run / "train" / "best.ckpt"), seconds=1.5)
    text = (run / "run.json").read_text()
    assert str(run) not in text  # no path of this machine inside the run
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(run, moved)
    data = json.loads((moved / "run.json").read_text())
    assert data["paths_relative_to"] == "run directory"
    assert data["stages"]["train"]["checkpoint"] == "train/best.ckpt"
    back = DistillConfig.from_dict(data["config"], run_dir=moved)
    assert back.out == str(moved) and back.structures == [str(moved / "seeds.extxyz")]
    assert os.path.exists(back.structures[0]) and back.property_structures == [str(outside)]
    assert str(back.training.init_from) == str(moved / "train" / "last.ckpt")
    assert back.teacher == "emt"
