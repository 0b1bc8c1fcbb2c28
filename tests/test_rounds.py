"""The on-policy rounds' pieces that need no training: frame selection by trust levels and
budget, the resumable round files, and the advice a failed run gives."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from torchsim_distill.cli import main as cli
from torchsim_distill.distill.advice import Diagnosis, _command, advise
from torchsim_distill.distill.evaluation import Gates, Metrics
from torchsim_distill.distill.rounds import RoundOptions, RoundState, select, trajectory_of


def _frames(n: int, trajectories: int) -> list[Atoms]:
    return [Atoms("Cu", info={"kind": "md", "seed_id": i % trajectories, "temperature": 300.0}) for i in range(n)]


def test_select_honours_trust_levels_budget_and_diversity():
    frames = _frames(12, trajectories=3)
    u = np.array([0.05, 0.2, 0.3, 2.0, 0.9, np.nan, 0.15, 0.4, 0.5, 0.11, 0.6, 1.49])
    opts = RoundOptions(rounds=1, budget=5, trust_low=0.1, trust_high=1.5, max_per_trajectory=2)
    picked, counts = select(frames, u, options=opts)
    # never below the lower level, never at/above the upper one (an exploded frame), never NaN
    assert all(0.1 <= u[i] < 1.5 for i in picked)
    assert 3 not in picked and 0 not in picked and 5 not in picked
    assert len(picked) == 5 and counts["selected"] == 5
    # at most two per trajectory, most uncertain first within the window
    per = {}
    for i in picked:
        per[trajectory_of(frames[i])] = per.get(trajectory_of(frames[i]), 0) + 1
    assert max(per.values()) == 2
    assert 11 in picked  # u = 1.49: the most uncertain frame inside the window
    assert counts == {"proposed": 12, "below_trust": 1, "above_trust": 2, "in_trust": 9, "selected": 5, "trajectories": 3}


def test_select_budget_caps_and_empty_window():
    frames = _frames(6, trajectories=6)
    picked, counts = select(frames, np.full(6, 0.5), options=RoundOptions(rounds=1, budget=2, max_per_trajectory=4))
    assert len(picked) == 2 and counts["in_trust"] == 6
    picked, counts = select(frames, np.full(6, 0.01), options=RoundOptions(rounds=1))
    assert picked == [] and counts["below_trust"] == 6
    with pytest.raises(ValueError, match="3 uncertainties for 6 frames"):
        select(frames, np.zeros(3), options=RoundOptions(rounds=1))


def test_round_options_refuse_bad_trust_levels():
    with pytest.raises(ValueError, match="trust_low < trust_high"):
        RoundOptions(trust_low=0.5, trust_high=0.2)
    with pytest.raises(ValueError, match="budget"):
        RoundOptions(budget=0)


def test_round_state_makes_its_files_once(tmp_path):
    state = RoundState(tmp_path, 2)
    calls = []

    def make():
        calls.append(1)
        return _frames(3, 3)

    first = state.candidates(make)
    again = state.candidates(make)
    assert len(calls) == 1 and len(again) == 3
    assert [a.info["frame_id"] for a in first] == [a.info["frame_id"] for a in again] == [
        "round2-00000", "round2-00001", "round2-00002"
    ]
    assert state.scores(lambda: {"uncertainty": [1.0, 2.0, 3.0]}) == state.scores(lambda: {"uncertainty": []})
    assert state.labels_path == tmp_path / "labels" / "round_2.xyz"


def _metrics(e, f, s, per_kind=None) -> Metrics:
    return Metrics(e, f, 0.9, s, 10, 100, per_kind or {})


def test_advice_names_the_worst_kinds_and_the_cure_with_a_command():
    test = _metrics(8.0, 120.0, 0.05, {"rattle": _metrics(2, 40, 0.01), "compress": _metrics(30, 400, 0.3)})
    argv = ["torchsim-distill", "distill", "--teacher", "emt", "--structures", "s.xyz", "--out", "run", "--max-epochs", "50"]
    # over-fitted, still improving, no committee
    lines = advise(Diagnosis(test=test, train=_metrics(1.0, 20.0, 0.01), gates=Gates(), best_epoch=49, max_epochs=50,
                             size="small", n_configs=200), argv)
    text = "\n".join(lines)
    assert "compress (400 meV/Å)" in text and "rattle" not in text
    assert "--max-epochs 100" in text  # train longer, resuming
    assert "--committee 3 --rounds 2" in text
    assert "--out run-more-configs --max-epochs 50 --n-configs 400" in text  # a new directory: frames are resampled
    # training error as large as held-out, but nothing says which kinds are well sampled: no larger size
    # (the rules of capacity are tests/test_advice.py's), rounds instead
    lines = advise(Diagnosis(test=test, train=_metrics(7.0, 110.0, 0.05), gates=Gates(), best_epoch=10, max_epochs=50,
                             size="small", n_configs=200, committee=3, rounds=2, flagged_fraction=0.5), argv)
    text = "\n".join(lines)
    assert "--size medium" not in text and "--max-epochs 100" not in text and "--rounds 4" in text
    assert "50 % of the held-out frames" in text
    # passing gates: no advice
    assert advise(Diagnosis(test=_metrics(1, 10, 0.01), train=None, gates=Gates(), best_epoch=49, max_epochs=50,
                            size="small", n_configs=200), argv) == []


def test_command_replaces_or_adds_flags():
    argv = ["torchsim-distill", "distill", "--rounds", "1", "--out", "my run"]
    assert _command(argv, rounds=3, committee=2) == "torchsim-distill distill --rounds 3 --out 'my run' --committee 2"


def test_rounds_without_a_committee_are_refused(tmp_path, capsys):
    from ase.build import bulk
    from ase.io import write

    seeds = tmp_path / "x.xyz"  # a real file: the command checks that its inputs exist first
    write(seeds, bulk("Cu", "fcc", a=3.6))
    code = cli(["distill", "--teacher", "emt", "--structures", str(seeds), "--out", str(tmp_path / "r"), "--rounds", "1"])
    assert code == 1
    assert "need a committee" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_split_before_the_trajectory_rule_keeps_its_seed_split():
    from ase.build import bulk

    from torchsim_distill.distill.run import DistillConfig, _split
    from torchsim_distill.distill.sampling import sample_configurations, split_by_seed

    seeds = [bulk("Cu", "fcc", a=3.5 + 0.05 * i, cubic=True) for i in range(4)]
    frames = sample_configurations(seeds, None, n_configs=24, seed=0, kinds=["rattle", "iso_strain"], progress=False)
    config = DistillConfig(teacher="emt", structures=[], out="unused")
    splits, how = _split(config, frames)  # a new run with 4 seeds: split within seeds
    assert how.startswith("by trajectory")
    # an older run.json's split stage has no "how": its labelled splits must not move
    splits, how = _split(config, frames, previous={"n_frames": {}, "seed_ids": {}})
    assert how.startswith("by seed structure") and tuple(splits.values()) == split_by_seed(frames, seed=0)


def test_each_relaxation_path_is_its_own_trajectory():
    a = Atoms("Cu", info={"kind": "relax", "seed_id": 0, "relax_run": 0, "relax_step": 3})
    b = Atoms("Cu", info={"kind": "relax", "seed_id": 0, "relax_run": 1, "relax_step": 3})
    c = Atoms("Cu", info={"kind": "relax", "seed_id": 0, "relax_run": 1, "relax_step": 9})
    assert trajectory_of(a) != trajectory_of(b) == trajectory_of(c)
