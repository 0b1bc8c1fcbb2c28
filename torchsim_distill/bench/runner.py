"""The benchmark run: every measurement on every device, then the files.

It exists to orchestrate, and only that: :func:`run_benchmarks` resolves the options
(:mod:`.plan`), loads the contenders (:mod:`.contenders`) per device and dtype, runs
the measurements (:mod:`.suites`) over the planned sizes and batches, and hands the
rows to :mod:`.report`::

    result = run_benchmarks("bench/", smoke=True)       # tiny student, EMT teacher, < 1 min warm
    print(result.summary)
    torchsim-distill bench --out bench/ --teacher sevennet-0

Method: one CPU thread (``torch.set_num_threads(1)``), the contenders of each
measurement run interleaved (A, B, C, A, B, C, ...) after excluded warm-ups, and
throughputs and ratios are taken from medians. With CUDA the same suite runs on the
GPU (``device="cuda"`` or ``"all"``), the student compiled for it by ``cached_compile``.
Progress is logged at INFO level to this module's logger.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch_sim as ts

from torchsim_distill.bench.contenders import (
    Contender,
    contenders,
    student_artifact,
    teacher_name,
)
from torchsim_distill.bench.machine import machine_info
from torchsim_distill.bench.plan import (
    OPTION_NAMES,
    BenchOptions,
    Settings,
    cu_au_cells,
)
from torchsim_distill.bench.report import summary_markdown, write_csv, write_plots
from torchsim_distill.bench.suites import (
    bench_md,
    bench_relax,
    memory_profile,
    per_step_rate,
    stats,
    student_call_split,
)
from torchsim_distill.runtime.artifact import CompiledArtifact
from torchsim_distill.utils.timing import CLOCKS, Clock, pinned_threads, synchronizer

logger = logging.getLogger(__name__)


@dataclass
class BenchResult:
    """What :func:`run_benchmarks` measured and wrote.

    Attributes:
        out_dir: the output folder.
        rows: one dict per CSV row (keys: :data:`~torchsim_distill.bench.report.COLUMNS`;
            ``None`` for empty cells).
        csv_path, summary_path: ``results.csv`` and ``summary.md``.
        plots: the PNG files.
        summary: the Markdown summary's text.
        notes: what was skipped or worth knowing (also in the summary).
        wall_time_s: how long the whole run took, model loading included.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    csv_path: Path
    summary_path: Path
    plots: list[Path]
    summary: str
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def select(self, **match: Any) -> list[dict[str, Any]]:
        """Rows whose columns equal every ``column=value`` given."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]


def run_benchmarks(
    out_dir: str | Path,
    *,
    smoke: bool = False,
    model: str | Path | None = None,
    teacher: Any = None,
    device: str = "cpu",
    options: BenchOptions | None = None,
    verbose: bool = True,
    **tuning: Any,
) -> BenchResult:
    """Run the benchmark suite and write ``results.csv``, ``summary.md`` and PNG plots.

    Args:
        out_dir: output folder (created; its result files are replaced).
        smoke: a CI-sized run (tiny student, EMT teacher, one size, batches of 1 and
            2, a few steps, 200 memory calls): well under a minute on a warm cache.
        model: the student: ``None`` (the shipped ``"default"`` student; with ``smoke``
            the cached tiny toy Cu–Au student), ``"default"``, a
            ``.nequip.pt2`` compiled with ``--target batch`` for ``device``, or a
            nequip checkpoint/package (compiled through the cache).
        teacher: anything :func:`~torchsim_distill.distill.teachers.load_teacher` takes;
            default ``"sevennet-0"`` (``"emt"`` with ``smoke``).
        device: ``"cpu"``, ``"cuda"``, or ``"all"`` (CPU, then CUDA if available).
        options: sizes, steps, repetitions, skin, threads, clock and limits
            (:class:`~torchsim_distill.bench.plan.BenchOptions`; unset ones come from the plan).
        verbose: log progress (INFO, logger ``torchsim_distill.bench.runner``).
        **tuning: any :class:`~torchsim_distill.bench.plan.BenchOptions` field by name
            (``sizes=(32, 108)``, ``reps=5``, ...), overriding ``options``.
    """
    t_start = time.perf_counter()
    unknown = set(tuning) - OPTION_NAMES
    if unknown:
        raise TypeError(f"run_benchmarks() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    settings = dataclasses.replace(options or BenchOptions(), **tuning).resolve(smoke=smoke)
    teacher = teacher if teacher is not None else ("emt" if smoke else "sevennet-0")
    if model is None and not smoke:
        model = "default"  # a full run measures the shipped student against its teacher
    devices = _devices(device)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with pinned_threads(settings.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for dev in devices:
            run = _DeviceRun(dev, settings, notes, verbose)
            rows += _run_device(run, model, teacher)
    add_speedups(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    write_csv(rows, csv_path)
    plots = write_plots(rows, out_dir)
    wall = time.perf_counter() - t_start
    summary = summary_markdown(rows, notes, wall_time_s=wall, settings=settings)
    summary_path = out_dir / "summary.md"
    summary_path.write_text(summary)
    if verbose:
        logger.info("wrote %s, %s and %d plots in %.0f s", csv_path, summary_path, len(plots), wall)
    return BenchResult(out_dir, rows, csv_path, summary_path, plots, summary, notes, wall)


def _devices(device: str) -> list[torch.device]:
    if device == "all":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'all', got {device!r}")
    return [dev]


@dataclass
class _DeviceRun:
    """One device's part of a run: the settings, where notes go, and whether to log progress."""

    device: torch.device
    s: Settings
    notes: list[str]
    verbose: bool

    @property
    def clock_name(self) -> str:
        return "wall" if self.device.type == "cuda" else self.s.clock  # on a GPU only wall time means anything

    @property
    def clock(self) -> Clock:
        return CLOCKS[self.clock_name]

    def log(self, dtype: torch.dtype | None, msg: str, *args: Any) -> None:
        if self.verbose:
            where = f"{self.device}, {_dtype_name(dtype)}" if dtype is not None else str(self.device)
            logger.info("[%s] " + msg, where, *args)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(n: int, b: int, dtype: torch.dtype) -> dict[str, Any]:
    return {"atoms_per_system": n, "batch_size": b, "n_atoms": n * b, "dtype": _dtype_name(dtype)}


def _run_device(run: _DeviceRun, model: str | Path | None, teacher: Any) -> list[dict[str, Any]]:
    """Every measurement on one device."""
    device, s = run.device, run.s
    artifact = student_artifact(model, device, s.plan.student_size)
    run.log(None, "student %s", artifact.path)
    base = {
        **machine_info(device),
        "device": str(device),
        "model": artifact.path.name,
        "teacher": teacher_name(teacher),
        "mode": s.mode,
        "clock": run.clock_name,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rows: list[dict[str, Any]] = []
    batch_limit, teacher_limit = s.batch_limit(device), s.teacher_limit(device)
    configs = [(n, b) for n in s.sizes for b in s.batch_sizes if n * b <= batch_limit]
    skipped = [(n, b) for n in s.sizes for b in s.batch_sizes if n * b > batch_limit]
    if skipped:
        run.notes.append(
            f"{device}: skipped {len(skipped)} size × batch combinations above {batch_limit} atoms per batch"
        )
    if teacher_limit is not None and any(n * b > teacher_limit for n, b in configs):
        run.notes.append(
            f"{device}: the teacher ran only batches of at most {teacher_limit} atoms "
            "(speedups are measured only there)"
        )
    memory_dtype = torch.float64 if torch.float64 in s.dtypes else s.dtypes[0]
    for dtype in s.dtypes:
        run.log(dtype, "loading contenders")
        calcs = contenders(artifact, teacher, dtype=dtype, skin=s.skin)
        if dtype == torch.float64:
            run.notes.append(_agreement_note(device, calcs, s.sizes[0]))
        rows += [{**base, **r} for r in _throughput_rows(run, calcs, configs, teacher_limit, dtype)]
        rows += [{**base, **r} for r in _split_rows(run, artifact, batch_limit, dtype)]
        if dtype == memory_dtype:  # the pipeline's precision only: 10⁴ calls per contender take a while
            rows += [{**base, **r} for r in _memory_rows(run, calcs, dtype)]
        del calcs
        gc.collect()
    return rows


def _throughput_rows(
    run: _DeviceRun,
    calcs: list[Contender],
    configs: list[tuple[int, int]],
    teacher_limit: int | None,
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    """MD and relaxation rows for every (atoms per system, batch size)."""
    device, sync = run.device, synchronizer(run.device)
    rows = []
    for n, b in configs:
        active = [c for c in calcs if c.name != "teacher" or teacher_limit is None or n * b <= teacher_limit]
        md_state = ts.io.atoms_to_state(cu_au_cells(b, n, seed=n + b), device, dtype)
        relax_cells = cu_au_cells(b, n, seed=n + b + 1, rattle=0.1, strain=0.02)
        relax_state = ts.io.atoms_to_state(relax_cells, device, dtype)
        rows += [{**_shape(n, b, dtype), **r} for r in bench_md(active, md_state, run.s, run.clock, sync)]
        rows += [{**_shape(n, b, dtype), **r} for r in bench_relax(active, relax_state, run.s, run.clock, sync)]
        run.log(dtype, "%d × %d atoms: MD and relaxation done", b, n)
    return rows


def _split_rows(
    run: _DeviceRun, artifact: CompiledArtifact, batch_limit: int, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """What one student call costs, stage by stage: every size, at the largest batch that fits."""
    s = run.s
    rows = []
    for n in s.sizes:
        fits = [b for b in s.batch_sizes if n * b <= batch_limit]
        if not fits:
            continue
        b = fits[-1]
        state = ts.io.atoms_to_state(cu_au_cells(b, n, seed=7 * n + b), artifact.device, dtype)
        for skin in (None, s.skin):
            split = student_call_split(artifact, state, skin=skin, reps=s.plan.split_reps, clock=run.clock)
            rows += [
                {**_shape(n, b, dtype), "benchmark": "call_split", "calculator": "student",
                 "variant": f"skin={skin or 0:g}", "stage": stage, "calls": len(samples), **stats(samples)}
                for stage, samples in split.items()
            ]
        run.log(dtype, "%d × %d atoms: call split done", b, n)
    return rows


def _memory_rows(run: _DeviceRun, calcs: list[Contender], dtype: torch.dtype) -> list[dict[str, Any]]:
    """Memory of every contender over many calls on the cheapest state (one smallest system)."""
    s, device = run.s, run.device
    n = s.sizes[0]
    state = ts.io.atoms_to_state(cu_au_cells(1, n, seed=11), device, dtype)
    rows = []
    for c in calcs:
        mem = memory_profile(c.model, state, s.memory_calls, time_limit_s=s.plan.memory_time_s)
        mem.pop("seconds")
        if mem["calls"] < s.memory_calls:
            run.notes.append(
                f"{device}: memory test of the {c.name} stopped after {mem['calls']} of "
                f"{s.memory_calls} calls ({s.plan.memory_time_s:.0f} s limit)"
            )
        rows.append({**_shape(n, 1, dtype), "benchmark": "memory", "calculator": c.name, "variant": c.variant, **mem})
        run.log(dtype, "memory of the %s: %d calls", c.name, mem["calls"])
    return rows


def _agreement_note(device: torch.device, calcs: list[Contender], n: int) -> str:
    """Student vs nequip on one state: timing two calculators only makes sense if they agree."""
    by_name = {c.name: c.model for c in calcs}
    state = ts.io.atoms_to_state(cu_au_cells(2, n, seed=3), device, torch.float64)
    ours, theirs = by_name["student"](state), by_name["nequip"](state)
    de = float((ours["energy"] - theirs["energy"]).abs().max())
    df = float((ours["forces"] - theirs["forces"]).abs().max())
    flag = "" if max(de, df) < 1e-5 else " — they DISAGREE, timings compare different computations"
    return f"{device}: student vs nequip on the same .pt2: max |ΔE| {de:.1e} eV, max |ΔF| {df:.1e} eV/Å{flag}"


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_teacher``: per-step throughput ÷ the teacher's on the same measurement
    (benchmark, device, dtype, atoms per system, batch size); set in place, left out
    where the teacher did not run.

    Relaxation throughput counts structures at a fixed number of steps, which may
    differ between contenders (time budget), so relaxation speedups compare per-step
    rates.
    """

    def key(r: dict[str, Any]) -> tuple:
        return (r["benchmark"], r["device"], r["dtype"], r["atoms_per_system"], r["batch_size"])

    teachers = {key(r): r for r in rows if r["benchmark"] in ("md", "relax") and r["calculator"] == "teacher"}
    for r in rows:
        if r["benchmark"] in ("md", "relax") and key(r) in teachers:
            r["speedup_vs_teacher"] = per_step_rate(r) / per_step_rate(teachers[key(r)])
