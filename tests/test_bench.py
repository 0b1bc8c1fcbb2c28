"""The benchmark harness: its plans and cells, the speedup pairing, and (slow) the smoke
run's files, columns, rows, rebuild counts, memory and a call split that adds up.

No assertion here is about speed: a shared CI machine would make any such goal flaky
(speed goals live in ``benchmarks/``).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchsim_distill.bench import (
    CALCULATORS,
    COLUMNS,
    SMOKE,
    STAGES,
    BenchOptions,
    BenchResult,
    cu_au_cells,
    fcc_repeat,
    run_benchmarks,
)
from torchsim_distill.bench.runner import add_speedups
from torchsim_distill.bench.suites import per_step_rate, steps_within
from torchsim_distill.models.cu_au import lattice_constant

# -- quick: plans, options, cells, speedups -----------------------------------------------


def test_fcc_repeat_and_bad_sizes(tmp_path: Path) -> None:
    assert fcc_repeat(32) == (2, 2, 2)
    assert fcc_repeat(1000) == (5, 5, 10)
    with pytest.raises(ValueError, match="4·a·b·c"):
        run_benchmarks(tmp_path, smoke=True, sizes=(30,), verbose=False)
    assert not any(tmp_path.iterdir())  # it failed before writing anything


def test_options_fill_in_the_plan_and_are_checked(tmp_path: Path) -> None:
    s = BenchOptions(sizes=(108, 32), reps=4).resolve(smoke=True)
    assert s.sizes == (108, 32) and s.reps == 4 and s.mode == "smoke"
    assert s.batch_sizes == SMOKE.batch_sizes and s.md_steps == SMOKE.md_steps
    assert BenchOptions(batch_sizes=(4, 1, 2)).resolve(smoke=True).batch_sizes == (1, 2, 4)
    cpu = torch.device("cpu")
    full = BenchOptions().resolve(smoke=False)
    assert full.mode == "full" and full.teacher_limit(cpu) == 256 and full.batch_limit(cpu) == 4096
    assert BenchOptions(teacher_max_atoms=None).resolve(smoke=False).teacher_limit(cpu) is None
    with pytest.raises(ValueError, match="clock"):
        BenchOptions(clock="sundial").resolve(smoke=True)
    with pytest.raises(ValueError, match="dtypes"):
        BenchOptions(dtypes=(torch.float16,)).resolve(smoke=True)
    with pytest.raises(TypeError, match="md_stepz"):
        run_benchmarks(tmp_path, smoke=True, md_stepz=3, verbose=False)


def test_steps_within_the_time_budget() -> None:
    assert steps_within(10.0, 0.01, 100) == 100  # fast: every planned step
    assert steps_within(10.0, 0.5, 100) == 20  # slow: what fits in the budget
    assert steps_within(10.0, 60.0, 100) == 2  # very slow: still a few steps
    assert steps_within(10.0, 0.0, 7) == 7


def test_cu_au_cells_are_random_alloys_at_vegards_lattice_constant() -> None:
    cells = cu_au_cells(6, 108, seed=1, rattle=0.0)
    assert len(cells) == 6 and all(len(a) == 108 for a in cells)
    fractions = []
    for atoms in cells:
        symbols = atoms.get_chemical_symbols()
        assert set(symbols) <= {"Cu", "Au"}
        x_au = symbols.count("Au") / len(atoms)
        assert 0.05 < x_au < 0.95  # drawn from 0.2 to 0.8
        fractions.append(x_au)
        # unstrained: the cubic cell of models.cu_au at its composition, repeated 3×3×3
        np.testing.assert_allclose(atoms.cell.lengths(), np.array(fcc_repeat(108)) * lattice_constant(x_au))
        np.testing.assert_allclose(atoms.cell.angles(), 90.0)
    assert len(set(fractions)) > 1  # compositions vary between systems

    again = cu_au_cells(6, 108, seed=1, rattle=0.0)
    assert all((a.positions == b.positions).all() and (a.numbers == b.numbers).all() for a, b in zip(cells, again, strict=True))
    rattled = cu_au_cells(6, 108, seed=1, rattle=0.05)  # same compositions and cells, displaced atoms
    shifts = np.concatenate([r.positions - a.positions for a, r in zip(cells, rattled, strict=True)])
    assert all((a.numbers == r.numbers).all() for a, r in zip(cells, rattled, strict=True))
    assert 0.04 < shifts.std() < 0.06
    strained = cu_au_cells(6, 108, seed=1, strain=0.02)
    assert not np.allclose(strained[0].cell.angles(), 90.0)


def _row(bench: str, calc: str, throughput: float, steps: int, batch: int = 1) -> dict:
    return {"benchmark": bench, "calculator": calc, "throughput": throughput, "steps": steps, "device": "cpu",
            "dtype": "float64", "atoms_per_system": 32, "batch_size": batch}


def test_speedups_pair_each_row_with_its_own_teacher_per_step() -> None:
    rows = [
        _row("md", "teacher", 100.0, 10), _row("md", "student", 400.0, 10),
        _row("md", "teacher", 300.0, 10, batch=2), _row("md", "student", 600.0, 10, batch=2),
        # relaxation: the teacher ran 5 steps in its time budget, the student 20
        _row("relax", "teacher", 60.0, 5), _row("relax", "student", 30.0, 20),
        _row("md", "student", 500.0, 10, batch=4),  # no teacher ran this batch
        {"benchmark": "memory", "calculator": "student"},
    ]
    add_speedups(rows)
    assert rows[1]["speedup_vs_teacher"] == pytest.approx(4.0)
    assert rows[3]["speedup_vs_teacher"] == pytest.approx(2.0)  # against batch 2's teacher, not batch 1's
    assert rows[5]["speedup_vs_teacher"] == pytest.approx(2.0)  # 30·20 / (60·5) per step
    assert per_step_rate(rows[5]) == pytest.approx(600.0)
    assert "speedup_vs_teacher" not in rows[6] and "speedup_vs_teacher" not in rows[7]


def test_cli_has_bench() -> None:
    from torchsim_distill.cli import build_parser

    args = build_parser().parse_args(["bench", "--out", "x", "--smoke", "--teacher", "emt"])
    assert args.smoke and args.teacher == "emt" and args.out == "x" and args.device == "cpu"


# -- slow: the smoke run (trains and compiles the tiny student on a cold cache) --------------


@pytest.fixture(scope="module")
def smoke(student_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchResult:
    # student_ckpt trains the tiny student the smoke mode uses, so the cache is warm
    return run_benchmarks(tmp_path_factory.mktemp("bench"), smoke=True, verbose=False)


def _csv(result: BenchResult) -> list[dict[str, str]]:
    with open(result.csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


@pytest.mark.slow
def test_writes_csv_plots_and_summary(smoke: BenchResult) -> None:
    assert smoke.csv_path == smoke.out_dir / "results.csv"
    names = {p.name for p in smoke.plots}
    assert {"throughput_vs_batch.png", "speedup_vs_size.png", "call_split.png"} <= names
    for plot in smoke.plots:
        assert plot.read_bytes().startswith(b"\x89PNG")
    text = smoke.summary_path.read_text()
    assert text == smoke.summary
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Benchmark: student vs teacher vs nequip (smoke)",
        "## MD throughput (atom-steps/s, NVE)",
        "## Relaxation throughput (structures/min, FIRE + Fréchet, a fixed number of steps)",
        "## One student call, split (median ms)",
        "## Memory over repeated calls",
        "## Notes",
        "## Method",
    ]
    assert "student ÷ teacher" in text
    rows = _csv(smoke)
    assert len(rows) == len(smoke.rows)
    for row in rows:  # hardware and software columns are filled on every row
        for col in ("cpu_model", "torch_threads", "torch_version", "torch_sim_version", "nequip_version", "device", "dtype"):
            assert row[col], (col, row)
        assert row["torch_threads"] == "1"


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["md", "relax"])
def test_every_calculator_at_every_batch_size_and_dtype(smoke: BenchResult, benchmark: str) -> None:
    rows = [r for r in _csv(smoke) if r["benchmark"] == benchmark]
    seen = {(r["calculator"], r["dtype"], int(r["batch_size"]), int(r["atoms_per_system"])) for r in rows}
    expected = {(c, d, b, 32) for c in CALCULATORS for d in ("float32", "float64") for b in (1, 2)}
    assert seen == expected and len(rows) == len(expected)
    unit = {"md": "atom-steps/s", "relax": "structures/min"}[benchmark]
    for r in rows:
        assert r["unit"] == unit
        assert float(r["throughput"]) > 0 and float(r["median_s"]) > 0 and int(r["steps"]) > 0
        assert int(r["calls"]) == int(r["steps"]) + 1
    # each speedup is against the teacher of the same dtype and batch, per step
    by_key = {(r["calculator"], r["dtype"], r["batch_size"]): r for r in smoke.select(benchmark=benchmark)}
    for (calc, dtype, batch), r in by_key.items():
        if calc == "teacher":
            continue
        teacher = by_key[("teacher", dtype, batch)]
        assert r["speedup_vs_teacher"] == pytest.approx(per_step_rate(r) / per_step_rate(teacher), rel=1e-12)
    if benchmark == "md":
        # the student's Verlet list, built in the warm-up at the same start, stays valid
        # over a 5-step NVE run at 300 K (no atom moves skin/2 = 0.25 Å): no rebuild
        builds = {r["nl_builds"] for r in rows if r["calculator"] == "student"}
        assert builds == {"0"}
        assert all(r["nl_builds"] == "" for r in rows if r["calculator"] != "student")  # no count: left empty


@pytest.mark.slow
def test_md_counts_every_neighbor_list_rebuild(student_pt2: Path) -> None:
    """Without skin the list is rebuilt on every call of the run, warm-ups excluded."""
    import torch_sim as ts

    from torchsim_distill.bench.contenders import Contender
    from torchsim_distill.bench.suites import bench_md
    from torchsim_distill.runtime.artifact import load_artifact
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

    artifact = load_artifact(student_pt2, device="cpu", target="batch")
    calcs = [
        Contender(name, f"skin={skin}", DistilledTorchSimCalc(artifact, chemical_species_to_atom_type_map=True, skin=skin, dtype=torch.float64))
        for name, skin in (("no_skin", None), ("skin", 0.5))
    ]
    state = ts.io.atoms_to_state(cu_au_cells(2, 32, seed=5), torch.device("cpu"), torch.float64)
    settings = BenchOptions(md_steps=4, reps=2).resolve(smoke=True)
    rows = {r["calculator"]: r for r in bench_md(calcs, state, settings, clock=time.perf_counter, sync=lambda: None)}
    assert rows["no_skin"]["steps"] == 4 and rows["no_skin"]["calls"] == 5
    assert rows["no_skin"]["nl_builds"] == 5
    assert rows["skin"]["nl_builds"] == 0


@pytest.mark.slow
def test_call_split_adds_up_to_a_call(smoke: BenchResult) -> None:
    split = [r for r in smoke.rows if r["benchmark"] == "call_split"]
    states = {(r["dtype"], r["batch_size"], r["atoms_per_system"], r["variant"]) for r in split}
    assert {s[3] for s in states} == {"skin=0", "skin=0.5"}
    for state in states:
        by_stage = {
            r["stage"]: r
            for r in split
            if (r["dtype"], r["batch_size"], r["atoms_per_system"], r["variant"]) == state
        }
        assert set(by_stage) == {*STAGES, "total", "total_uninstrumented"}
        assert all(r["calls"] == SMOKE.split_reps for r in by_stage.values())
        assert all(by_stage[s]["min_s"] >= 0 for s in STAGES) and by_stage["forward"]["min_s"] > 0
        # the stages of each call sum to that call, so the stages' minima cannot add up to
        # more than the fastest call (medians need not add up: a busy machine skews them)
        parts = sum(by_stage[s]["min_s"] for s in STAGES)
        assert parts <= by_stage["total"]["min_s"] * (1 + 1e-9), by_stage


@pytest.mark.slow
def test_memory_rows(smoke: BenchResult) -> None:
    mem = smoke.select(benchmark="memory")
    assert sorted(r["calculator"] for r in mem) == sorted(CALCULATORS)
    for r in mem:
        # the pipeline's precision only, on one smallest system, every planned call made
        assert (r["dtype"], r["batch_size"], r["atoms_per_system"]) == ("float64", 1, 32)
        assert r["calls"] == SMOKE.memory_calls == 200
        assert r["rss_baseline_mb"] > 0
        # 200 calls on 32 atoms: a leak of even ~5 kB of Python objects or ~300 kB of
        # tensors per call would break these bounds (measured: tens of kB, under 1 MB)
        assert math.isfinite(r["py_heap_growth_kb"]) and abs(r["py_heap_growth_kb"]) < 1024, r
        assert math.isfinite(r["rss_growth_mb"]) and abs(r["rss_growth_mb"]) < 64, r
        assert r["rss_peak_mb"] - r["rss_baseline_mb"] < 64, r
