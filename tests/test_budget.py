"""The budget planner: the budget's forms, the plan's choices from given costs (fast), and a
budgeted distillation honoured within 20 % and resumed after a kill (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import read, write

from torchsim_distill.distill.budget import (
    TRAIN_CAP,
    TRAIN_SETUP_S,
    Costs,
    knobs_on_command_line,
    parse_budget,
    plan_run,
)
from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.teachers import load_teacher


@pytest.mark.parametrize(("text", "seconds"), [("45m", 2700), ("1h", 3600), ("1.5h", 5400), ("3600s", 3600),
                                               (" 90s ", 90), ("0.5m", 30)])
def test_budget_forms(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["1 hour", "60", "1h30m", "-1h", "0m", "h", "1d", ""])
def test_other_budgets_are_refused_saying_the_forms(text):
    with pytest.raises(ValueError, match="45m, 1h, 1.5h, 3600s"):
        parse_budget(text)


def test_a_bad_budget_fails_the_config_check(tmp_path):
    with pytest.raises(ValueError, match="is not a time"):
        DistillConfig(teacher="emt", structures=[], out=str(tmp_path), budget="an hour").check()


def test_knobs_given_on_the_command_line_are_kept():
    argv = ["distill", "--teacher", "emt", "--size=medium", "--n-configs", "200", "--budget", "1h", "--max-energy-mae", "3"]
    assert knobs_on_command_line(argv) == {"size", "n_configs"}


def _seeds(tmp_path: Path) -> Path:
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    au = bulk("Au", "fcc", a=4.08, cubic=True)
    path = tmp_path / "seeds.xyz"
    write(path, [cu, cu.repeat((2, 1, 1)), au, au.repeat((2, 1, 1))])
    return path


#: a slow teacher (SevenNet-0 on one core: ~5 ms per atom) and this machine's student steps
SLOW = Costs(teacher_system_s=0.05, teacher_atom_s=0.005, step_s={"small": 0.15, "medium": 0.45},
             forward_s={"small": 0.05, "medium": 0.15}, import_s=10.0, atoms_per_frame=6.0, seconds=30.0)


def test_labels_are_costed_at_the_defect_cells_size(tmp_path):
    """Vacancies and defect paths are cut in the acceptance suite's vacancy cell (4 and 8 atom
    seeds → 32 and 64 atoms): the teacher labels those atoms, not the seeds' mean."""
    from torchsim_distill.distill.budget import _Estimator
    from torchsim_distill.distill.sampling import kind_quotas, sample_configurations

    config = DistillConfig(teacher="emt", structures=[str(_seeds(tmp_path))], out=str(tmp_path / "r"))
    teacher = load_teacher("emt")
    estimator = _Estimator(SLOW, config, read(config.structures[0], index=":"), teacher)
    quota = kind_quotas(estimator.kinds, 100, config.sampling.far_share, weights=config.sampling.weights())
    defects = quota["vacancy"] + quota["defect_relax"]
    assert defects > 0
    assert estimator.frame_atoms(100) == pytest.approx((100 - defects) * 6.0 + defects * 48.0)
    sampled = sample_configurations(read(config.structures[0], index=":"), None, n_configs=8, seed=0,
                                    kinds=["vacancy"], progress=False)
    assert sorted({len(a) + a.info["n_vacancies"] for a in sampled}) == [32, 64]
    label_s = estimator.data(100)[1]
    assert label_s > SLOW.teacher(100, 100 * 6.0)  # the seeds' mean alone would undercount it


def test_plans_fit_their_budget_grow_with_it_and_keep_what_was_given(tmp_path, monkeypatch):
    # the compile estimate reads this machine's last compile from the cache (budget.record_compile):
    # an empty cache, so the plans rest on SLOW alone and not on whatever compiled last
    monkeypatch.setenv("TORCHSIM_DISTILL_CACHE", str(tmp_path / "cache"))
    config = DistillConfig(teacher="emt", structures=[str(_seeds(tmp_path))], out=str(tmp_path / "r"))
    teacher = load_teacher("emt")
    plans = {b: plan_run(config, teacher, budget_s=b, costs=SLOW) for b in (600, 1800, 3600, 4 * 3600)}
    for budget, plan in plans.items():
        assert plan.total_s <= budget, plan.describe()
        assert plan.settings["max_epochs"] >= 30, plan.describe()
        # the fit's cap: its planned epochs' estimate and a tenth, the trainer's start not counted
        start = SLOW.import_s + TRAIN_SETUP_S
        assert plan.train_time_s == pytest.approx(TRAIN_CAP * (plan.estimates["train"] - start), rel=1e-3)
        assert f"budget of {budget // 60}m" in plan.describe() or "budget of" in plan.describe()
    # a committee and a round only beside a first student of 300+ configs: data first
    assert plans[600].settings["committee"] == 1 and plans[600].settings["rounds"] == 0
    big = plans[4 * 3600].settings
    assert big["committee"] == 3 and big["rounds"] == 1 and big["n_configs"] >= 300
    for plan in plans.values():
        assert plan.settings["committee"] == 1 or plan.settings["n_configs"] >= 300, plan.describe()
    assert plans[600].settings["n_configs"] < plans[1800].settings["n_configs"] <= plans[4 * 3600].settings["n_configs"]
    assert plans[4 * 3600].total_s > 0.8 * 4 * 3600  # a large budget is used, not left idle
    kept = plan_run(DistillConfig(teacher="emt", structures=config.structures, out=config.out, size="medium",
                                  n_configs=123), teacher, budget_s=3600, costs=SLOW, keep={"size", "n_configs"})
    assert kept.settings["size"] == "medium" and kept.settings["n_configs"] == 123 and kept.kept == ["n_configs", "size"]
    applied = kept.apply(config)
    assert applied.n_configs == 123 and applied.training.max_epochs == kept.settings["max_epochs"]
    assert applied.training.max_time == kept.train_time_s and applied.committee.size == kept.settings["committee"]
    too_small = plan_run(config, teacher, budget_s=120, costs=SLOW)
    assert too_small.notes and "too small" in too_small.notes[0]


def _distill(out: Path, seeds: Path, budget: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torchsim_distill.cli", "distill", "--teacher", "emt", "--structures", str(seeds),
         "--out", str(out), "--budget", budget],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )


@pytest.mark.slow
def test_a_budgeted_run_keeps_its_budget_and_resumes_after_a_kill(tmp_path):
    """6 minutes on one core, EMT teacher (on a loaded 2-core VM compiling the student alone
    takes 1-2.5 min). The run is killed once it trains and rerun by the same command: the rerun
    keeps the plan made when the run started, neither samples nor labels again, resumes the
    training, and the two parts together stay within 20 % of the budget (what a user whose job
    was killed pays, less the restart the kill itself costs). One run, not a whole run and then a
    killed one: CI pays the budget once."""
    seeds = _seeds(tmp_path)
    budget = parse_budget("6m")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    proc = _distill(out, seeds, "6m")
    deadline = time.perf_counter() + 2 * budget
    while not list((out / "train").glob("last.ckpt")) and time.perf_counter() < deadline and proc.poll() is None:
        time.sleep(1)
    assert proc.poll() is None, proc.communicate()[0]  # still training: the kill lands mid-run
    os.killpg(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate()
    assert "plan for a budget of 6m00s" in output
    first = json.loads((out / "run.json").read_text())
    assert "train" not in first["stages"] and {"plan", "sample", "label"} <= set(first["stages"])
    frames = (out / "frames.xyz").stat().st_mtime_ns
    labels = (out / "labels" / "train.xyz").stat().st_mtime_ns

    # what the kill itself costs: a second start of the process and of nequip's trainer, from
    # the rerun until the trainer logs again (a new logs/version_*), which the plan cannot know of
    versions = len(list((out / "train" / "logs").glob("version_*")))
    t1 = time.perf_counter()
    proc = _distill(out, seeds, "6m")
    while len(list((out / "train" / "logs").glob("version_*"))) == versions and proc.poll() is None:
        time.sleep(0.5)
    restart = time.perf_counter() - t1
    output, _ = proc.communicate(timeout=2 * budget)
    took = time.perf_counter() - t0
    assert proc.returncode in (0, 2), output
    print(f"\nbudget {budget:.0f} s, killed and resumed run took {took:.0f} s, of which {restart:.0f} s restarting\n{output}")
    assert took - restart <= 1.2 * budget
    assert restart < 0.25 * budget  # resuming is a restart, not a rerun of the stages before
    assert "the plan made when the run started" in output
    run = json.loads((out / "run.json").read_text())
    plan = run["stages"]["plan"]["plan"]
    assert plan == first["stages"]["plan"]["plan"]
    assert run["config"]["n_configs"] == plan["settings"]["n_configs"]
    card = json.loads((out / "report" / "model_card.json").read_text())
    assert card["budget"]["settings"] == plan["settings"]
    assert (out / "frames.xyz").stat().st_mtime_ns == frames
    assert (out / "labels" / "train.xyz").stat().st_mtime_ns == labels
    assert "resuming from last.ckpt" in (out / "train" / "train.log").read_text() or len(
        list((out / "train" / "logs").glob("version_*"))) >= 2
