"""The benchmark harness in smoke mode: its files, columns, rows and a call split that adds up.

No assertion here is about speed: a shared CI machine would make any such goal flaky.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from torchsim_distill.bench import CALCULATORS, COLUMNS, STAGES, BenchResult, fcc_repeat, run_benchmarks


@pytest.fixture(scope="module")
def smoke(student_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchResult:
    # student_ckpt trains the tiny student the smoke mode uses, so the cache is warm
    return run_benchmarks(tmp_path_factory.mktemp("bench"), smoke=True, verbose=False)


def _csv(result: BenchResult) -> list[dict[str, str]]:
    with open(result.csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def test_writes_csv_plots_and_summary(smoke: BenchResult) -> None:
    assert smoke.csv_path == smoke.out_dir / "results.csv"
    names = {p.name for p in smoke.plots}
    assert {"throughput_vs_batch.png", "speedup_vs_size.png", "call_split.png"} <= names
    for plot in smoke.plots:
        assert plot.read_bytes().startswith(b"\x89PNG")
    text = smoke.summary_path.read_text()
    assert "MD throughput" in text and "Relaxation throughput" in text and "student ÷ teacher" in text
    rows = _csv(smoke)
    assert len(rows) == len(smoke.rows)
    for row in rows:  # hardware and software columns are filled on every row
        for col in ("cpu_model", "torch_threads", "torch_version", "torch_sim_version", "nequip_version", "device", "dtype"):
            assert row[col], (col, row)
        assert row["torch_threads"] == "1"


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
        assert float(r["speedup_vs_teacher"]) > 0
        if r["calculator"] == "teacher":
            assert float(r["speedup_vs_teacher"]) == pytest.approx(1.0)
    if benchmark == "md":  # rebuilds of the student's neighbor list per run (0: the cached list stayed valid)
        assert all(float(r["nl_builds"]) >= 0 for r in rows if r["calculator"] == "student")


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
        assert all(by_stage[s]["min_s"] >= 0 for s in STAGES) and by_stage["forward"]["min_s"] > 0
        # the stages of each call sum to that call, so the stages' minima cannot add up to
        # more than the fastest call (medians need not add up: a busy machine skews them)
        parts = sum(by_stage[s]["min_s"] for s in STAGES)
        fastest = by_stage["total"]["min_s"]
        assert 0.5 * fastest < parts <= fastest * (1 + 1e-9), by_stage
        # instrumented and plain calls cost about the same
        assert 0.5 < fastest / by_stage["total_uninstrumented"]["min_s"] < 2.0, by_stage


def test_memory_rows(smoke: BenchResult) -> None:
    mem = smoke.select(benchmark="memory")
    assert {r["calculator"] for r in mem} == set(CALCULATORS)
    for r in mem:
        assert r["calls"] == 200
        assert r["rss_peak_mb"] >= r["rss_baseline_mb"] > 0
        assert r["py_heap_growth_kb"] is not None


def test_fcc_repeat_and_bad_sizes(tmp_path: Path) -> None:
    assert fcc_repeat(32) == (2, 2, 2)
    assert fcc_repeat(1000) == (5, 5, 10)
    with pytest.raises(ValueError, match="4·a·b·c"):
        run_benchmarks(tmp_path, smoke=True, sizes=(30,), verbose=False)


def test_cli_has_bench() -> None:
    from torchsim_distill.cli import build_parser

    args = build_parser().parse_args(["bench", "--out", "x", "--smoke", "--teacher", "emt"])
    assert args.smoke and args.teacher == "emt" and args.out == "x" and args.device == "cpu"
