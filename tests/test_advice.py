"""The advice a failed run gives: its rules (Diagnosis in, lines out), its costs, and the
``--kind-weights`` option it prints. Fast: no training (tests/test_advice_followed.py
follows the advice and measures that it helps)."""

from __future__ import annotations

import pytest

from torchsim_distill.distill.advice import (
    PROPERTY_KINDS,
    Advice,
    Diagnosis,
    RunCosts,
    advise,
    diagnose,
    distill_argv,
    next_hour,
)
from torchsim_distill.distill.evaluation import Gates, Metrics
from torchsim_distill.distill.sampling import KINDS, SamplingOptions, kind_quotas

ARGV = ["torchsim-distill", "distill", "--teacher", "emt", "--structures", "s.xyz", "--out", "run", "--size", "small",
        "--max-epochs", "50", "--n-configs", "200", "--committee", "3", "--rounds", "1"]
COSTS = RunCosts(config_s=1.0, epoch_s=8.0, n_configs=200, epochs=50, start_s=20.0, committee_s=200.0, rounds_s=300.0,
                 compile_s=100.0, acceptance_s=80.0, size_step_ratio=5.0)
FALLING = tuple(1.0 / (1 + e) for e in range(50))  # still falling at the end
FLAT = tuple([1.0] * 10 + [0.5] * 40)  # converged long before the end


def _m(e, f, s, per_kind=None, n=10) -> Metrics:
    return Metrics(e, f, 0.9, s, n, 100, per_kind or {})


def _diagnosis(**changes) -> Diagnosis:
    base = dict(test=_m(8.0, 90.0, 0.2), train=_m(7.0, 85.0, 0.2), gates=Gates(), best_epoch=49, max_epochs=50,
                size="small", n_configs=200, rounds=1, committee=3, validation=FLAT, costs=COSTS)
    return Diagnosis(**{**base, **changes})


def _kinds(d: Diagnosis) -> list[str]:
    return [a.kind for a in diagnose(d, ARGV)]


def test_failed_properties_name_the_kinds_that_cover_them_with_a_command_and_a_cost():
    d = _diagnosis(test=_m(1.0, 10.0, 0.01), train=None,
                   failed_properties=("C44 of Si", "vacancy formation energy of Si", "C11 of Si"))
    (cure,) = diagnose(d, ARGV)
    assert cure.kind == "properties"
    assert "shear_strain (C44)" in cure.text and "vacancy (vacancy formation energy)" in cure.text
    assert "axial_strain (C11)" in cure.text  # named by the kind that covers it, whether or not this version has it
    weights = cure.text.split("--kind-weights ")[1].split(" (")[0].split()
    known = [k for k in ("shear_strain", "vacancy", "axial_strain", "defect_relax") if k in KINDS]
    assert sorted(weights) == sorted(f"{k}=3" for k in known)  # the kinds this version samples, weighted
    unknown = [k for k in ("axial_strain", "defect_relax") if k not in KINDS]
    if unknown:  # named, and said to be missing (issue-26c adds them)
        missing = cure.text.split("(kind")[-1].split(": not in this version")[0]
        assert all(k in missing for k in unknown) and "not in this version" in cure.text
    assert "--out run-more-property-frames" in cure.text
    # the new run: more configurations so that the other kinds keep theirs; its cost from this run's stage times
    assert "--n-configs" in cure.text and cure.seconds == pytest.approx(COSTS.new_run(_advised_n(cure.text)))
    lines = advise(d, ARGV)
    assert lines[0].endswith("on this machine)") and "estimate: ~" in lines[0]
    assert lines[-1].startswith("What the next hour would buy (estimate)")


def test_kinds_this_run_already_weighted_are_not_advised_again():
    """Si v5 followed v4's card (the property kinds 3x) and missed the same gates: its card
    must not hand back the same weights as the cure."""
    failed = ("C44 of Si", "vacancy formation energy of Si")
    kinds = [k for k in ("shear_strain", "vacancy", "defect_relax") if k in KINDS]
    d = _diagnosis(test=_m(1.0, 10.0, 0.01), train=None, failed_properties=failed,
                   kind_weights=tuple(f"{k}=3" for k in kinds))
    (note,) = diagnose(d, ARGV)
    assert note.kind == "properties_weighted" and note.seconds is None and "--out" not in note.text
    assert all(k in note.text for k in kinds) and "not advised" in note.text
    # one more failed property whose kind was not weighted: advised, the weighted ones said so
    d = _diagnosis(test=_m(1.0, 10.0, 0.01), train=None, failed_properties=(*failed, "C11 of Si"),
                   kind_weights=tuple(f"{k}=3" for k in kinds))
    (cure,) = diagnose(d, ARGV)
    assert cure.kind == "properties" and "axial_strain=3" in cure.text
    assert f"already ≥ 3× in this run: {', '.join(kinds)}" in cure.text


def _advised_n(text: str) -> int:
    words = text.split()
    return int(words[words.index("--n-configs") + 1])


def test_every_acceptance_property_that_has_kinds_maps_to_known_or_announced_kinds():
    announced = {"axial_strain", "defect_relax"}  # added on branch issue-26c
    for prop, kinds in PROPERTY_KINDS.items():
        assert set(kinds) <= set(KINDS) | announced, prop
    d = _diagnosis(test=_m(1.0, 10.0, 0.01), train=None, failed_properties=("phonon frequency MAE (q-grid) of Si",),
                   budget="1h")
    (cure,) = diagnose(d, ARGV + ["--budget", "1h"])
    assert "rattle=3" in cure.text and "rattle_amplitudes" in cure.text
    # with --budget the planned knobs are left to the new plan; the cost is the budget
    assert "--n-configs" not in cure.text and "--size" not in cure.text and "--budget 1h" in cure.text
    assert cure.seconds == 3600.0
    # a property no kind covers is said so, with what the user can give instead
    (unmapped,) = diagnose(_diagnosis(test=_m(1.0, 10.0, 0.01), train=None, failed_properties=("surface energy of Cu",)),
                           ARGV)
    assert unmapped.kind == "properties_unmapped" and "surface energy of Cu" in unmapped.text


def test_more_epochs_only_while_validation_still_falls_and_resumes_without_the_budget():
    d = _diagnosis(validation=FALLING, train=None)
    cures = diagnose(d, ARGV + ["--budget", "1h"])
    (epochs,) = [a for a in cures if a.kind == "epochs"]
    command = epochs.text.split(": torchsim-distill")[1]
    assert "--max-epochs 100" in command and "--budget" not in command and "--out run " in command
    assert epochs.seconds == pytest.approx(COSTS.more_epochs(50))
    assert COSTS.more_epochs(50) == pytest.approx(20 + 50 * 8.0 + 200 + 300 + 180)
    # converged (the second half no better than the first): no epochs advice, even with the best epoch last
    assert "epochs" not in _kinds(_diagnosis(validation=FLAT, best_epoch=49, train=None))
    # without a curve: the best epoch among the last tenth
    assert "epochs" in _kinds(_diagnosis(validation=(), best_epoch=49, train=None))
    assert "epochs" not in _kinds(_diagnosis(validation=(), best_epoch=20, train=None))


def test_capacity_only_when_converged_above_the_gate_and_the_well_sampled_kinds_fail_too():
    near = {"rattle": _m(6, 80, 0.1), "shear_strain": _m(6, 85, 0.1), "large_rattle": _m(20, 300, 0.5, n=2)}
    kinds = {"rattle": 60, "shear_strain": 60, "large_rattle": 10}
    d = _diagnosis(test=_m(8.0, 90.0, 0.2, near), train=_m(7.0, 85.0, 0.2), train_kinds=kinds)
    (cure,) = [a for a in diagnose(d, ARGV) if a.kind == "capacity"]
    assert "--size medium" in cure.text and "--out run-medium" in cure.text
    assert cure.seconds == pytest.approx(COSTS.new_run(200, step_ratio=5.0))
    # the data are the limit: the well-sampled near-equilibrium kinds pass the force gate (the far kind fails it)
    fits = {"rattle": _m(3, 40, 0.05), "shear_strain": _m(3, 45, 0.05), "large_rattle": _m(20, 400, 0.5, n=2)}
    withheld = diagnose(_diagnosis(test=_m(8.0, 90.0, 0.2, fits), train_kinds=kinds), ARGV)
    assert "capacity" not in [a.kind for a in withheld]
    (data,) = [a for a in withheld if a.kind == "data"]
    assert "not advised" in data.text and "pass the force gate (42 meV/Å)" in data.text and "--size medium" not in data.text
    # not converged: epochs, not capacity
    assert "capacity" not in _kinds(_diagnosis(test=_m(8.0, 90.0, 0.2, near), train_kinds=kinds, validation=FALLING))
    # nothing says which kinds are well sampled: capacity withheld
    assert "capacity" not in _kinds(_diagnosis(test=_m(8.0, 90.0, 0.2, near)))
    # training error below the gate: not capacity either
    assert "capacity" not in _kinds(_diagnosis(test=_m(8.0, 90.0, 0.2, near), train=_m(2, 50, 0.05), train_kinds=kinds))


def test_overfitting_is_data_advice_rounds_with_a_committee_else_configs():
    d = _diagnosis(train=_m(1.0, 20.0, 0.02))
    (data,) = [a for a in diagnose(d, ARGV + ["--budget", "1h"]) if a.kind == "data"]
    assert "--rounds 3" in data.text and "--budget" not in data.text.split(": torchsim-distill")[1]
    assert data.seconds == pytest.approx(2 * 300 + 180)
    (data,) = [a for a in diagnose(_diagnosis(train=_m(1.0, 20.0, 0.02), committee=1, rounds=0),
                                   ARGV[:-4]) if a.kind == "data"]
    assert "--committee 3 --rounds 2" in data.text and "--out run-more-configs" in data.text and "--n-configs 400" in data.text


def test_far_kinds_named_and_passing_gates_give_no_advice():
    per_kind = {"rattle": _m(2, 40, 0.01), "compress": _m(30, 400, 0.3)}
    text = "\n".join(advise(_diagnosis(test=_m(8.0, 120.0, 0.05, per_kind), train=None), ARGV))
    assert "compress (400 meV/Å)" in text and "--kind-weights compress=3" in text
    assert advise(_diagnosis(test=_m(1.0, 10.0, 0.01), train=None), ARGV) == []


def test_next_hour_fits_the_cheapest_and_names_a_new_run_as_the_alternative():
    cures = [Advice("epochs", "e", 900.0), Advice("data", "d", 1800.0), Advice("properties", "p", 5000.0),
             Advice("far_kinds", "f")]
    text = next_hour(cures)
    assert "the longer training (resumed) (~15 min) + more data or rounds (~30 min)" in text
    assert "or instead the property frames (new run) with --budget 1h (~60 min" in text
    assert "beyond it" not in next_hour(cures[:2]) and "(~1.7 h)" in next_hour([Advice("data", "d", 6000.0)])


def test_run_costs_from_run_json_stage_times_and_the_plan():
    run = {"config": {"n_configs": 600, "training": {"max_epochs": 71}, "model": {"size": "small"}},
           "stages": {"sample": {"seconds": 614.5}, "label": {"seconds": 154.0}, "train": {"seconds": 570.0},
                      "committee": {"seconds": 264.8}, "compile": {"seconds": 98.9}, "acceptance": {"seconds": 91.2},
                      "plan": {"plan": {"estimates": {"rounds": 763.4},
                                        "costs": {"step_s": {"small": 0.0356, "medium": 0.2007}, "import_s": 5.15}}}}}
    c = RunCosts.from_run(run)
    assert c.config_s == pytest.approx(768.5 / 600) and c.rounds_s == 763.4 and c.committee_s == 264.8
    assert c.epoch_s == pytest.approx((570.0 - 20.15) / 71) and c.size_step_ratio == pytest.approx(0.2007 / 0.0356)
    assert RunCosts.from_run({"config": {}, "stages": {}}) is None


def test_kind_weights_share_a_group_in_proportion_and_are_checked():
    kinds = ["rattle", "large_rattle", "shear_strain", "vacancy", "md"]
    plain = kind_quotas(kinds, 100, 0.1)
    assert kind_quotas(kinds, 100, 0.1, weights={}) == plain
    weighted = kind_quotas(kinds, 100, 0.1, weights={"vacancy": 3, "shear_strain": 2})
    assert sum(weighted.values()) == 100 and weighted["large_rattle"] == plain["large_rattle"]  # the far share stays
    assert weighted == {"rattle": 13, "large_rattle": 10, "shear_strain": 26, "vacancy": 38, "md": 13}
    assert SamplingOptions(kind_weights=["vacancy=3", "md=0"]).weights() == {"vacancy": 3.0, "md": 0.0}
    for bad in ("vacancy", "nokind=2", "vacancy=-1", "vacancy=x"):
        with pytest.raises(ValueError, match="KIND=WEIGHT"):
            SamplingOptions(kind_weights=(bad,))


def test_kind_weights_flag_round_trips_through_the_command_line():
    import argparse

    from torchsim_distill.distill.config import DistillConfig
    from torchsim_distill.utils.options import add_flags, from_flags

    config = DistillConfig(teacher="emt", structures=["s.xyz"], out="r", sampling={"kind_weights": ["vacancy=3"]})
    argv = distill_argv(config)
    assert argv[-2:] == ["--kind-weights", "vacancy=3"]
    parser = argparse.ArgumentParser()
    defaults = DistillConfig.cli_defaults()
    add_flags(parser, defaults)
    args = parser.parse_args(argv[2:])
    assert from_flags(args, defaults)["sampling"].kind_weights == ("vacancy=3",)


def test_a_resumed_cosine_is_stretched_to_the_new_epochs_not_restarted(tmp_path):
    """Lightning restores a scheduler's T_max: resumed from 10 to 20 epochs, a cosine would
    climb back to its initial rate. The checkpoint is moved onto the 20-epoch cosine."""
    import math

    import torch

    from torchsim_distill.distill.training import TrainingOptions, _extend_cosine, _lr_scheduler

    last = tmp_path / "last.ckpt"
    state = {"T_max": 10, "eta_min": 1e-4, "base_lrs": [0.01], "last_epoch": 10, "_last_lr": [1e-4]}
    torch.save({"epoch": 10, "lr_schedulers": [state], "optimizer_states": [{"param_groups": [{"lr": 1e-4}]}]}, last)
    config = {"training_module": {"lr_scheduler": _lr_scheduler(TrainingOptions(max_epochs=20))},
              "trainer": {"max_epochs": 20}}
    _extend_cosine(last, config)
    ckpt = torch.load(last, weights_only=False)
    want = 1e-4 + (0.01 - 1e-4) * (1 + math.cos(math.pi * 10 / 20)) / 2  # half-way down the longer cosine
    assert ckpt["lr_schedulers"][0]["T_max"] == 20
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(want)
    assert ckpt["lr_schedulers"][0]["_last_lr"] == [pytest.approx(want)]
    # the same length, or the plateau schedule: untouched
    before = last.read_bytes()
    _extend_cosine(last, config)
    plateau = {"training_module": {"lr_scheduler": _lr_scheduler(TrainingOptions(lr_schedule="plateau"))},
               "trainer": {"max_epochs": 40}}
    _extend_cosine(last, plateau)
    assert last.read_bytes() == before


def test_the_silicon_run_of_issue_26_is_advised_data_and_properties_not_a_larger_student():
    """The committed Si run (SevenNet-0, --budget 1h): its old advice said "try a larger
    student", which the issue measured to be wrong. Read from its card and run.json: the
    failed elastic, vacancy and phonon gates name their kinds, the well-sampled kinds pass the
    force gate, so no larger size; each cure costed from the run's own stage times."""
    import json
    from pathlib import Path

    from torchsim_distill.distill.config import DistillConfig

    run_dir = Path(__file__).resolve().parents[1] / "recipes" / "runs" / "si_sevennet0_budget"
    card = json.loads((run_dir / "report" / "model_card.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())

    def metrics(d):
        return Metrics(d["energy_mae"], d["force_mae"], d["force_cosine"], d["stress_mae"], d["n_frames"], d["n_atoms"],
                       {k: metrics(v) for k, v in d.get("per_kind", {}).items()})

    failed = tuple(f"{r['property']} of {r['system']}" for r in card["acceptance"]["rows"] if not r["passed"])
    from collections import Counter

    from ase.io import read

    kinds = dict(Counter(a.info["kind"] for a in read(run_dir / "labels" / "train.xyz", index=":")))
    d = Diagnosis(test=metrics(card["metrics"]), train=_m(5.5, 99.0, 0.2), gates=Gates(), best_epoch=70,
                  max_epochs=71, size="small", n_configs=600, rounds=1, committee=3, flagged_fraction=0.117,
                  failed_properties=failed, train_kinds=kinds, costs=RunCosts.from_run(run), budget="1h")
    config = DistillConfig.from_dict(run["config"], run_dir=run_dir)
    cures = {a.kind: a for a in diagnose(d, distill_argv(config))}
    assert "capacity" not in cures and "--size medium" not in " ".join(a.text for a in cures.values())
    assert "pass the force gate" in cures["data"].text or "not converged" in cures["data"].text
    for named in ("shear_strain (C44 of", "vacancy (vacancy formation energy", "axial_strain (C11", "rattle (phonon"):
        assert named.split(" of")[0] in cures["properties"].text
    assert "epochs" in cures and "--max-epochs 142" in cures["epochs"].text
    assert 10 * 60 < cures["epochs"].seconds < 60 * 60 and cures["properties"].seconds == 3600.0
    lines = advise(d, distill_argv(config))
    assert lines[-1].startswith("What the next hour would buy (estimate)") and "with --budget 1h" in lines[-1]
