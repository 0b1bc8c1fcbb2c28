"""``torchsim-distill demo``: the README's first command, on a small budget."""

from __future__ import annotations

import csv

import pytest
from ase.io import read

from torchsim_distill.cli import main
from torchsim_distill.jobs.demo import demo_structures


def test_demo_structures_cover_ordered_phases_and_random_alloys():
    structures = demo_structures(12, seed=0)
    formulas = [a.get_chemical_formula(mode="metal") for a in structures[:5]]
    assert formulas == ["Cu108", "Au32", "Au8Cu24", "Au16Cu16", "Au81Cu27"]
    assert {len(a) for a in structures} == {32, 108}
    assert all(0 < a.get_chemical_symbols().count("Au") < len(a) for a in structures[5:])
    assert len({a.info["id"] for a in structures}) == 12


@pytest.mark.slow
def test_demo_relaxes_in_batch_and_compares_with_the_teacher(tmp_path, capsys):
    pytest.importorskip("sevenn", reason="the demo's teacher is SevenNet-0: needs the teachers extra (sevenn)")
    out = tmp_path / "demo"
    assert main(["demo", "--n-structures", "6", "--n-compare", "3", "--max-steps", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and len(read(out / "relaxed.extxyz", index=":")) == 6
    inputs = read(out / "structures.extxyz", index=":")
    assert [len(a) for a in inputs] == [int(r["n_atoms"]) for r in rows]
    assert "structures/min" in text
    assert "student vs teacher: energy" in text

    from torchsim_distill.distill.teachers import load_teacher
    from torchsim_distill.jobs.demo import compare_with_teacher
    from torchsim_distill.models.default import default_calc

    # the numbers it prints: the student agrees with SevenNet-0 on the same call (how much
    # faster it is is a benchmark's business, not a test's)
    cmp = compare_with_teacher(default_calc(skin=None), load_teacher("sevennet-0"), inputs[:3], repeats=1)
    assert cmp["energy_mae_mev_atom"] < 15.0
    assert cmp["force_mae_mev_a"] < 100.0
    assert cmp["stress_mae_gpa"] < 0.5
    assert cmp["t_student_s"] > 0 and cmp["t_teacher_s"] > 0 and cmp["n_atoms"] == sum(len(a) for a in inputs[:3])
