"""Benchmark a compiled student against its teacher and nequip's own torch-sim calculator.

Three contenders run the same random fcc Cu–Au cells (32 to ~1000 atoms per system,
float32 and float64 states, several systems per batch):

* **student**: :class:`~torchsim_distill.DistilledTorchSimCalc` with a Verlet skin;
* **nequip**: ``NequIPTorchSimCalc.from_compiled_model(..., neighborlist_backend="alchemiops")``
  on the same ``.nequip.pt2`` (what a user would otherwise run);
* **teacher**: SevenNet-0 (or EMT, or any :func:`~torchsim_distill.distill.teachers.load_teacher` input).

It measures MD throughput (atom-steps/s, ``ts.integrate`` NVE) and relaxation
throughput (structures/min, ``ts.optimize`` FIRE + Fréchet cell filter, a fixed number
of steps) against batch size, what one student call costs piece by piece (type
mapping, neighbor list, compiled forward, output handling; with and without skin),
and memory (peak and growth over many calls). Results go to ``results.csv`` (one
row per measurement, with hardware and software columns), PNG plots and ``summary.md``::

    result = run_benchmarks("bench/", smoke=True)       # tiny student, EMT teacher, < 1 min warm
    print(result.summary)
    torchsim-distill bench --out bench/ --teacher sevennet-0

Method: one CPU thread (``torch.set_num_threads(1)``), the contenders of each
measurement run interleaved (A, B, C, A, B, C, ...) after excluded warm-ups, and
throughputs and ratios are taken from medians. Slow contenders run fewer steps per
timed run (down to a few) so that one run stays near ``time_budget_s``; throughput
is per step, so their numbers stay comparable. With CUDA the same suite runs on the
GPU (``device="cuda"`` or ``"all"``), the student compiled for it by ``cached_compile``.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import logging
import math
import os
import platform
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms
from ase.build import bulk
from torch_sim.models.interface import ModelInterface

try:  # optional; imported here, not while tracemalloc traces (its import would count as growth)
    import psutil

    _PROCESS: Any = psutil.Process()
except ImportError:
    _PROCESS = None

from torchsim_distill.runtime.artifact import CompiledArtifact, load_artifact
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.distill.teachers import DtypeCastTeacher, load_teacher
from torchsim_distill.models.default import resolve_source
from torchsim_distill.utils.timing import CLOCKS, Clock, interleaved, iqr, median, pinned_threads, synchronizer

#: Verlet skin of the student in Å (the MD and relaxation runs use it).
SKIN = 0.5
#: FIRE steps between convergence checks in the relaxation runs (torch-sim's default).
RELAX_CHECK_EVERY = 5
#: MD settings: NVE from Maxwell–Boltzmann velocities at this temperature (K), time step in ps.
MD_TEMPERATURE, MD_TIMESTEP = 300.0, 0.002
#: Stages of one student call, in call order (see :func:`student_call_split`).
STAGES = ("inputs", "type_mapping", "neighbor_list", "forward", "outputs")
CALCULATORS = ("student", "nequip", "teacher")

#: Columns of ``results.csv``; cells that do not apply to a row are left empty.
COLUMNS = (
    # what was measured
    "benchmark", "calculator", "variant", "stage", "device", "dtype",
    "atoms_per_system", "batch_size", "n_atoms", "steps", "calls", "reps",
    # timings (seconds per timed run or call) and what they give
    "median_s", "min_s", "iqr_s", "throughput", "unit", "speedup_vs_teacher", "nl_builds",
    # memory
    "rss_baseline_mb", "rss_peak_mb", "rss_growth_mb", "py_heap_peak_kb", "py_heap_growth_kb",
    "cuda_peak_mb", "cuda_growth_mb",
    # where and with what
    "model", "teacher", "mode", "clock", "cpu_model", "cpu_count", "torch_threads", "omp_num_threads",
    "gpu", "torch_version", "torch_sim_version", "nequip_version", "nvalchemiops_version",
    "python_version", "timestamp",
)


# -- plans -------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPlan:
    """Sizes, repetitions and limits of one benchmark mode.

    Attributes:
        student_size: toy student preset used when no ``model`` is given.
        sizes: atoms per system; each must be ``4·a·b·c`` (cubic fcc cell repeated).
        batch_sizes: systems per batch.
        md_steps, relax_steps: steps of one timed run (fewer for slow contenders, see
            ``time_budget_s``).
        memory_calls: calls of the memory test (stopped early after ``memory_time_s``).
        reps, warmup: timed and excluded runs per contender.
        max_batch_atoms: batches with more atoms are skipped (per device type).
        teacher_max_atoms: the teacher skips larger batches (per device type; None: no limit).
        time_budget_s: target length of one timed run; slow contenders run fewer steps.
        memory_time_s: time limit of one contender's memory test.
        split_reps: calls per stage timing of the call-cost split.
    """

    student_size: str
    sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    md_steps: int
    relax_steps: int
    memory_calls: int
    reps: int
    warmup: int
    max_batch_atoms: dict[str, int]
    teacher_max_atoms: dict[str, int | None]
    time_budget_s: float
    memory_time_s: float
    split_reps: int


FULL = BenchPlan(
    student_size="small",
    sizes=(32, 108, 256, 500, 1000),
    batch_sizes=(1, 4, 16, 64),
    md_steps=100,
    relax_steps=50,
    memory_calls=10_000,
    reps=3,
    warmup=1,
    # one CPU thread saturates long before this; the GPU needs large batches to fill
    max_batch_atoms={"cpu": 4096, "cuda": 65536},
    # SevenNet-0 takes ~30 ms per atom and call on one CPU thread
    teacher_max_atoms={"cpu": 256, "cuda": None},
    time_budget_s=10.0,
    memory_time_s=300.0,
    split_reps=20,
)
SMOKE = BenchPlan(
    student_size="tiny",
    sizes=(32,),
    batch_sizes=(1, 2),
    md_steps=5,
    relax_steps=5,
    memory_calls=200,
    reps=2,
    warmup=1,
    max_batch_atoms={"cpu": 4096, "cuda": 65536},
    teacher_max_atoms={"cpu": None, "cuda": None},
    time_budget_s=5.0,
    memory_time_s=30.0,
    split_reps=10,
)


# -- structures ----------------------------------------------------------------------


def fcc_repeat(n_atoms: int) -> tuple[int, int, int]:
    """The most nearly cubic ``(a, b, c)`` with ``4·a·b·c = n_atoms`` (1000 → 5, 5, 10)."""
    if n_atoms < 4 or n_atoms % 4:
        raise ValueError(f"system sizes must be 4·a·b·c atoms (a cubic fcc cell repeated), got {n_atoms}")
    n = n_atoms // 4
    best = (1, 1, n)
    for a in range(1, round(n ** (1 / 3)) + 2):
        if n % a:
            continue
        for b in range(a, math.isqrt(n // a) + 1):
            if (n // a) % b == 0:
                c = n // a // b
                if c / a < best[2] / best[0]:
                    best = (a, b, c)
    return best


def cu_au_cells(
    n: int, atoms_per_system: int, *, seed: int, rattle: float = 0.03, strain: float = 0.0
) -> list[Atoms]:
    """``n`` random fcc Cu–Au alloys near their Vegard lattice constant.

    Args:
        n: number of systems.
        atoms_per_system: ``4·a·b·c`` atoms (see :func:`fcc_repeat`).
        seed: seeds compositions, strains and displacements.
        rattle: standard deviation of the random displacements, Å.
        strain: standard deviation of the random cell strain (0.02 = 2 %).
    """
    rng = np.random.default_rng(seed)
    repeat = fcc_repeat(atoms_per_system)
    cells = []
    for _ in range(n):
        x_au = rng.uniform(0.2, 0.8)
        atoms = bulk("Cu", "fcc", a=3.61 * (1 - x_au) + 4.08 * x_au, cubic=True).repeat(repeat)
        atoms.set_chemical_symbols(rng.choice(["Cu", "Au"], size=len(atoms), p=[1 - x_au, x_au]))
        if strain:
            atoms.set_cell(atoms.cell @ (np.eye(3) + rng.normal(0, strain, (3, 3))), scale_atoms=True)
        atoms.rattle(rattle, seed=int(rng.integers(2**31)))
        cells.append(atoms)
    return cells


# -- timing ---------------------------------------------------------------------------

# -- machine --------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Hardware and software columns: enough to know whether two results are comparable."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "gpu": gpu,
        "torch_version": torch.__version__,
        "torch_sim_version": _version("torch-sim-atomistic"),
        "nequip_version": _version("nequip"),
        "nvalchemiops_version": _version("nvalchemi-toolkit-ops"),
        "python_version": platform.python_version(),
    }


def _rss_bytes() -> float:
    """Resident set size of this process in bytes (nan where it cannot be read)."""
    if _PROCESS is not None:
        return float(_PROCESS.memory_info().rss)
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return float(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return float("nan")


# -- contenders -----------------------------------------------------------------------


@dataclass
class Contender:
    """One calculator as benchmarked: its name, what exactly runs, and the model."""

    name: str  # "student", "nequip" or "teacher"
    variant: str  # e.g. "skin=0.5", "alchemiops", "emt"
    model: ModelInterface


def student_artifact(model: str | Path | None, device: torch.device, size: str) -> CompiledArtifact:
    """The student to benchmark on ``device`` (``--target batch``).

    ``None`` is the cached toy Cu–Au student of ``size`` (trained and compiled once);
    ``"default"`` the shipped SevenNet-0 student; a ``.nequip.pt2`` is loaded as is (it
    must be compiled for ``device``); a nequip checkpoint or package is compiled for
    ``device`` through the cache.
    """
    from torchsim_distill.compile import cached_compile

    if model is not None:
        model = resolve_source(model)
    if model is None:
        from torchsim_distill.models.toy import toy_student

        # these arguments match the test suite's fixture, so its cached student is reused
        ckpt = toy_student(size=size, n_train=40, n_val=8, max_epochs=10)
        path = cached_compile(ckpt, device=device.type, target="batch", verbose=False)
    elif str(model).endswith(".pt2"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"compiled student not found: {path}")
    else:
        path = cached_compile(model, device=device.type, target="batch", verbose=False)
    return load_artifact(path, device=device, target="batch")


def contenders(
    artifact: CompiledArtifact,
    teacher: Any,
    *,
    dtype: torch.dtype,
    skin: float,
) -> list[Contender]:
    """Student, nequip and teacher, each building and returning states in ``dtype``."""
    from nequip.integrations.torchsim import NequIPTorchSimCalc

    student = DistilledTorchSimCalc(artifact, chemical_species_to_atom_type_map=True, skin=skin, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nequip = NequIPTorchSimCalc.from_compiled_model(
            str(artifact.path), device=artifact.device, chemical_species_to_atom_type_map=True,
            neighborlist_backend="alchemiops",
        )
    nequip_variant = "alchemiops"
    if dtype != nequip.dtype:
        # nequip's calculator passes state tensors straight to the compiled model,
        # which reads them as its own dtype: another dtype must be cast around it
        nequip = DtypeCastTeacher(nequip, dtype=dtype)
        nequip_variant += f", state cast to {str(nequip.model.dtype).removeprefix('torch.')}"
    teacher_model = load_teacher(teacher, device=artifact.device, dtype=dtype)
    return [
        Contender("student", f"skin={skin:g}", student),
        Contender("nequip", nequip_variant, nequip),
        Contender("teacher", _teacher_name(teacher), teacher_model),
    ]


def _teacher_name(teacher: Any) -> str:
    if isinstance(teacher, str | Path):
        return Path(teacher).name if str(teacher).endswith(".pt2") else str(teacher)
    return type(teacher).__name__


# -- MD and relaxation -----------------------------------------------------------------


def md_run(model: ModelInterface, state: ts.SimState, n_steps: int, *, seed: int = 0) -> ts.SimState:
    """``n_steps`` of NVE (``ts.integrate``) from 300 K velocities; ``n_steps + 1`` model calls."""
    start = state.clone()
    start.rng = seed  # the same initial momenta for every contender
    return ts.integrate(
        system=start, model=model, integrator=ts.Integrator.nve, n_steps=n_steps,
        temperature=MD_TEMPERATURE, timestep=MD_TIMESTEP,
    )


def _never_converged(state: ts.SimState, last_energy: torch.Tensor | None = None) -> torch.Tensor:
    return torch.zeros(state.n_systems, dtype=torch.bool, device=state.device)


def relax_run(model: ModelInterface, state: ts.SimState, n_steps: int) -> int:
    """``n_steps`` FIRE steps with the Fréchet cell filter through ``ts.optimize``.

    No structure is allowed to converge, so every one takes exactly ``n_steps``
    steps and contenders do the same work whatever their energy surface; returns
    the number of steps taken (counted, not assumed).
    """
    n_taken = 0

    def step(**kwargs: Any) -> Any:
        nonlocal n_taken
        n_taken += 1
        return ts.fire_step(**kwargs)

    with _quiet_torch_sim():
        ts.optimize(
            system=state, model=model, optimizer=(ts.fire_init, step), convergence_fn=_never_converged,
            max_steps=n_steps, steps_between_swaps=math.gcd(n_steps, RELAX_CHECK_EVERY),
            init_kwargs={"cell_filter": ts.CellFilter.frechet},
        )
    return n_taken


@contextmanager
def _quiet_torch_sim() -> Iterator[None]:
    """Silence torch-sim's 'maximum number of steps' notices: here every run reaches it."""
    logger = logging.getLogger("torch_sim")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="All systems have reached the maximum number of steps")
            yield
    finally:
        logger.setLevel(level)


def _steps_within(budget_s: float, seconds_per_step: float, max_steps: int, min_steps: int = 2) -> int:
    """Steps of one timed run: ``max_steps``, or fewer so the run lasts about ``budget_s``."""
    if seconds_per_step <= 0:
        return max_steps
    return max(min(min_steps, max_steps), min(max_steps, int(budget_s / seconds_per_step)))


# -- the call-cost split ---------------------------------------------------------------


class _Stopwatch:
    """Start and end times of the instrumented pieces of one calculator call."""

    def __init__(self, clock: Clock, sync: Callable[[], None]) -> None:
        self.clock, self.sync = clock, sync
        self.events: dict[str, tuple[float, float]] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            # on a GPU, wait for queued work so each piece is charged its own kernels
            self.sync()
            t0 = self.clock()
            out = fn(*args, **kwargs)
            self.sync()
            self.events[name] = (t0, self.clock())
            return out

        return timed


class _TimedSpecies:
    """Stands in for a calculator's species map; times ``atom_types``."""

    def __init__(self, inner: Any, watch: _Stopwatch) -> None:
        self._inner = inner
        self.atom_types = watch.wrap("type_mapping", inner.atom_types)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TimedNeighborList:
    """Stands in for a calculator's neighbor list; times each call."""

    def __init__(self, inner: Any, watch: _Stopwatch) -> None:
        self._inner = inner
        self._call = watch.wrap("neighbor_list", inner)

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def student_call_split(
    artifact: CompiledArtifact,
    state: ts.SimState,
    *,
    skin: float | None,
    reps: int,
    warmup: int = 2,
    clock: Clock = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds spent in each stage of a ``DistilledTorchSimCalc`` call, per call.

    The pieces are timed inside real calls (an instrumented calculator whose species
    map, neighbor list and compiled model report when they start and end), so cache
    hits and pruning of the skin are charged as they happen:

    * ``inputs``: the rest of input preparation (validation, casting to the model's
      dtype, contiguous copies, pbc, ``num_atoms``), and torch-sim's module call;
    * ``type_mapping``: ``calc.species.atom_types`` (atomic numbers → type indices);
    * ``neighbor_list``: ``calc.neighbor_list(...)`` (a rebuild, or a re-prune with skin);
    * ``forward``: ``calc.artifact.model(...)``, the AOTInductor student;
    * ``outputs``: output handling (casting back to the state's dtype and device, stress).

    The stages of each call add up to its ``total``; ``total_uninstrumented`` times
    plain calls interleaved with the instrumented ones, so the two show what the
    instrumentation itself costs. The state is the same every call, so with a skin
    the neighbor list is only re-pruned (the cost between rebuilds; MD rows count
    rebuilds).
    """
    sync = synchronizer(artifact.device)
    options: dict[str, Any] = {"chemical_species_to_atom_type_map": True, "skin": skin, "dtype": state.dtype}
    plain = DistilledTorchSimCalc(artifact, **options)
    watch = _Stopwatch(clock, sync)
    timed = DistilledTorchSimCalc(dataclasses.replace(artifact, model=watch.wrap("forward", artifact.model)), **options)
    timed.species = _TimedSpecies(timed.species, watch)
    timed.neighbor_list = _TimedNeighborList(timed.neighbor_list, watch)
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}

    def instrumented() -> None:
        watch.events.clear()
        sync()
        t0 = clock()
        timed(state)
        sync()
        t1 = clock()
        ev = watch.events
        pieces = {name: end - start for name, (start, end) in ev.items()}
        samples["type_mapping"].append(pieces["type_mapping"])
        samples["neighbor_list"].append(pieces["neighbor_list"])
        samples["forward"].append(pieces["forward"])
        samples["inputs"].append(ev["forward"][0] - t0 - pieces["type_mapping"] - pieces["neighbor_list"])
        samples["outputs"].append(t1 - ev["forward"][1])
        samples["total"].append(t1 - t0)

    for _ in range(warmup):
        instrumented()
        plain(state)
    for values in samples.values():
        values.clear()
    times = interleaved({"instrumented": instrumented, "plain": lambda: plain(state)}, reps, 0, clock, sync)
    samples["total_uninstrumented"] = times["plain"]
    return samples


# -- memory ---------------------------------------------------------------------------


def memory_profile(
    model: ModelInterface, state: ts.SimState, n_calls: int, *, time_limit_s: float = float("inf")
) -> dict[str, float]:
    """Memory over ``n_calls`` repeated calls on one state (fewer if ``time_limit_s`` runs out).

    RSS (whole process, sampled ~100 times) shows what the OS sees, CPU tensors
    included; ``tracemalloc`` sees only Python objects (leaked references, caches),
    and ``torch.cuda`` the GPU allocator. Baselines are taken after two warm-up
    calls, so first-call buffers and kernels count in the baseline, not the growth.

    Returns:
        ``calls`` made, ``seconds`` taken, RSS baseline/peak/growth in MB, Python
        heap peak/growth in kB, and on CUDA the allocator's peak and growth in MB.
    """
    device = model.device
    sync = synchronizer(device)
    model(state)
    model(state)
    sync()
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        cuda0 = torch.cuda.memory_allocated(device)
    py0 = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    rss0 = peak = _rss_bytes()
    every = max(1, n_calls // 100)
    t0 = time.perf_counter()
    calls = 0
    try:
        for k in range(n_calls):
            model(state)
            calls += 1
            if k % every == 0:
                peak = max(peak, _rss_bytes())
                if time.perf_counter() - t0 > time_limit_s:
                    break
        sync()
        seconds = time.perf_counter() - t0
        gc.collect()
        rss1 = _rss_bytes()
        py1, py_peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    mb = 1024.0**2
    out = {
        "calls": calls,
        "seconds": seconds,
        "rss_baseline_mb": rss0 / mb,
        "rss_peak_mb": max(peak, rss1) / mb,
        "rss_growth_mb": (rss1 - rss0) / mb,
        "py_heap_peak_kb": (py_peak - py0) / 1024.0,
        "py_heap_growth_kb": (py1 - py0) / 1024.0,
    }
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / mb
        out["cuda_growth_mb"] = (torch.cuda.memory_allocated(device) - cuda0) / mb
    return out


# -- the suite ----------------------------------------------------------------------------


@dataclass
class BenchResult:
    """What :func:`run_benchmarks` measured and wrote.

    Attributes:
        out_dir: the output folder.
        rows: one dict per CSV row (keys: :data:`COLUMNS`; ``None`` for empty cells).
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
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    batch_sizes: Sequence[int] | None = None,
    sizes: Sequence[int] | None = None,
    md_steps: int | None = None,
    relax_steps: int | None = None,
    memory_calls: int | None = None,
    reps: int | None = None,
    skin: float = SKIN,
    threads: int = 1,
    clock: str = "wall",
    time_budget_s: float | None = None,
    teacher_max_atoms: int | None | str = "plan",
    max_batch_atoms: int | None = None,
    verbose: bool = True,
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
        dtypes: state dtypes to run (the student and nequip cast to the model's own).
        batch_sizes: systems per batch (plan default: 1, 4, 16, 64; smoke 1, 2).
        sizes: atoms per system, each ``4·a·b·c`` (default 32, 108, 256, 500, 1000; smoke 32).
        md_steps, relax_steps: steps of one timed MD / relaxation run.
        memory_calls: calls of the memory test (default 10⁴; smoke 200).
        reps: timed runs per contender and measurement (default 3; smoke 2).
        skin: the student's Verlet skin in Å.
        threads: CPU threads for torch (1 makes results independent of the core count).
        clock: ``"wall"`` or ``"cpu"`` (this thread's CPU time; CPU only).
        time_budget_s: target seconds of one timed run (slow contenders run fewer steps).
        teacher_max_atoms: the teacher skips batches with more atoms (``None``: never;
            default: 256 on CPU for a full run, where SevenNet-0 is slow).
        max_batch_atoms: batches with more atoms are skipped (default 4096 on CPU,
            65536 on CUDA).
        verbose: print progress.
    """
    t_start = time.perf_counter()
    plan = SMOKE if smoke else FULL
    teacher = teacher if teacher is not None else ("emt" if smoke else "sevennet-0")
    if model is None and not smoke:
        model = "default"  # a full run measures the shipped student against its teacher
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    devices = _devices(device)
    sizes = tuple(sizes or plan.sizes)
    batch_sizes = tuple(sorted(batch_sizes or plan.batch_sizes))
    for n in sizes:
        fcc_repeat(n)  # fail on a bad size before anything runs
    if not dtypes or any(d not in (torch.float32, torch.float64) for d in dtypes):
        raise ValueError(f"dtypes must be torch.float32 and/or torch.float64, got {dtypes}")
    settings = _Settings(
        plan=plan,
        sizes=sizes,
        batch_sizes=batch_sizes,
        dtypes=tuple(dtypes),
        md_steps=md_steps or plan.md_steps,
        relax_steps=relax_steps or plan.relax_steps,
        memory_calls=memory_calls or plan.memory_calls,
        reps=reps or plan.reps,
        skin=skin,
        clock=clock,
        time_budget_s=time_budget_s or plan.time_budget_s,
        teacher_max_atoms=teacher_max_atoms,
        max_batch_atoms=max_batch_atoms,
        mode="smoke" if smoke else "full",
        log=(lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None),
    )
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with pinned_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for dev in devices:
            rows += _run_device(dev, model, teacher, settings, notes)
    _add_speedups(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    write_csv(rows, csv_path)
    plots = write_plots(rows, out_dir)
    wall = time.perf_counter() - t_start
    summary = summary_markdown(rows, notes, wall_time_s=wall, settings=settings)
    summary_path = out_dir / "summary.md"
    summary_path.write_text(summary)
    settings.log(f"wrote {csv_path}, {summary_path} and {len(plots)} plots in {wall:.0f} s")
    return BenchResult(out_dir, rows, csv_path, summary_path, plots, summary, notes, wall)


@dataclass
class _Settings:
    """Resolved options of one run (plan defaults filled in)."""

    plan: BenchPlan
    sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    md_steps: int
    relax_steps: int
    memory_calls: int
    reps: int
    skin: float
    clock: str
    time_budget_s: float
    teacher_max_atoms: int | None | str
    max_batch_atoms: int | None
    mode: str
    log: Callable[[str], None]

    def batch_limit(self, device: torch.device) -> int:
        return self.max_batch_atoms or self.plan.max_batch_atoms.get(device.type, 4096)

    def teacher_limit(self, device: torch.device) -> int | None:
        if self.teacher_max_atoms == "plan":
            return self.plan.teacher_max_atoms.get(device.type)
        return self.teacher_max_atoms  # type: ignore[return-value]


def _devices(device: str) -> list[torch.device]:
    if device == "all":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'all', got {device!r}")
    return [dev]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _run_device(
    device: torch.device, model: str | Path | None, teacher: Any, s: _Settings, notes: list[str]
) -> list[dict[str, Any]]:
    """Every measurement on one device."""
    clock = CLOCKS["wall"] if device.type == "cuda" else CLOCKS[s.clock]
    artifact = student_artifact(model, device, s.plan.student_size)
    s.log(f"[{device}] student {artifact.path}")
    base = {
        **machine_info(device),
        "device": str(device),
        "model": artifact.path.name,
        "teacher": _teacher_name(teacher),
        "mode": s.mode,
        "clock": "wall" if device.type == "cuda" else s.clock,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rows: list[dict[str, Any]] = []
    batch_limit, teacher_limit = s.batch_limit(device), s.teacher_limit(device)
    configs = [(n, b) for n in s.sizes for b in s.batch_sizes if n * b <= batch_limit]
    skipped = [(n, b) for n in s.sizes for b in s.batch_sizes if n * b > batch_limit]
    if skipped:
        notes.append(
            f"{device}: skipped {len(skipped)} size × batch combinations above {batch_limit} atoms per batch"
        )
    if teacher_limit is not None and any(n * b > teacher_limit for n, b in configs):
        notes.append(
            f"{device}: the teacher ran only batches of at most {teacher_limit} atoms "
            "(speedups are measured only there)"
        )
    memory_dtype = torch.float64 if torch.float64 in s.dtypes else s.dtypes[0]
    for dtype in s.dtypes:
        s.log(f"[{device}, {_dtype_name(dtype)}] loading contenders")
        calcs = contenders(artifact, teacher, dtype=dtype, skin=s.skin)
        if dtype == torch.float64:
            notes.append(_agreement_note(device, calcs, s.sizes[0]))
        rows += [{**base, **r} for r in _throughput_rows(calcs, configs, teacher_limit, device, dtype, s, clock)]
        rows += [{**base, **r} for r in _split_rows(artifact, batch_limit, dtype, s, clock)]
        if dtype == memory_dtype:  # the pipeline's precision only: 10⁴ calls per contender take a while
            rows += [{**base, **r} for r in _memory_rows(calcs, device, dtype, s, notes)]
        del calcs
        gc.collect()
    return rows


def _shape(n: int, b: int, dtype: torch.dtype) -> dict[str, Any]:
    return {"atoms_per_system": n, "batch_size": b, "n_atoms": n * b, "dtype": _dtype_name(dtype)}


def _throughput_rows(
    calcs: list[Contender],
    configs: list[tuple[int, int]],
    teacher_limit: int | None,
    device: torch.device,
    dtype: torch.dtype,
    s: _Settings,
    clock: Clock,
) -> list[dict[str, Any]]:
    """MD and relaxation rows for every (atoms per system, batch size)."""
    sync = synchronizer(device)
    rows = []
    for n, b in configs:
        active = [c for c in calcs if c.name != "teacher" or teacher_limit is None or n * b <= teacher_limit]
        md_state = ts.io.atoms_to_state(cu_au_cells(b, n, seed=n + b), device, dtype)
        relax_cells = cu_au_cells(b, n, seed=n + b + 1, rattle=0.1, strain=0.02)
        relax_state = ts.io.atoms_to_state(relax_cells, device, dtype)
        rows += [{**_shape(n, b, dtype), **r} for r in _bench_md(active, md_state, s, clock, sync)]
        rows += [{**_shape(n, b, dtype), **r} for r in _bench_relax(active, relax_state, s, clock, sync)]
        s.log(f"[{device}, {_dtype_name(dtype)}] {b} × {n} atoms: MD and relaxation done")
    return rows


def _split_rows(
    artifact: CompiledArtifact, batch_limit: int, dtype: torch.dtype, s: _Settings, clock: Clock
) -> list[dict[str, Any]]:
    """What one student call costs, stage by stage: every size, at the largest batch that fits."""
    rows = []
    for n in s.sizes:
        fits = [b for b in s.batch_sizes if n * b <= batch_limit]
        if not fits:
            continue
        b = fits[-1]
        state = ts.io.atoms_to_state(cu_au_cells(b, n, seed=7 * n + b), artifact.device, dtype)
        for skin in (None, s.skin):
            split = student_call_split(artifact, state, skin=skin, reps=s.plan.split_reps, clock=clock)
            rows += [
                {**_shape(n, b, dtype), "benchmark": "call_split", "calculator": "student",
                 "variant": f"skin={skin or 0:g}", "stage": stage, "calls": len(samples), **_stats(samples)}
                for stage, samples in split.items()
            ]
        s.log(f"[{artifact.device}, {_dtype_name(dtype)}] {b} × {n} atoms: call split done")
    return rows


def _memory_rows(
    calcs: list[Contender], device: torch.device, dtype: torch.dtype, s: _Settings, notes: list[str]
) -> list[dict[str, Any]]:
    """Memory of every contender over many calls on the cheapest state (one smallest system)."""
    n = s.sizes[0]
    state = ts.io.atoms_to_state(cu_au_cells(1, n, seed=11), device, dtype)
    rows = []
    for c in calcs:
        mem = memory_profile(c.model, state, s.memory_calls, time_limit_s=s.plan.memory_time_s)
        mem.pop("seconds")
        if mem["calls"] < s.memory_calls:
            notes.append(
                f"{device}: memory test of the {c.name} stopped after {mem['calls']} of "
                f"{s.memory_calls} calls ({s.plan.memory_time_s:.0f} s limit)"
            )
        rows.append({**_shape(n, 1, dtype), "benchmark": "memory", "calculator": c.name, "variant": c.variant, **mem})
        s.log(f"[{device}, {_dtype_name(dtype)}] memory of the {c.name}: {mem['calls']} calls")
    return rows


def _stats(samples: Sequence[float]) -> dict[str, float]:
    return {"median_s": median(samples), "min_s": min(samples), "iqr_s": iqr(samples), "reps": len(samples)}


def _agreement_note(device: torch.device, calcs: list[Contender], n: int) -> str:
    """Student vs nequip on one state: timing two calculators only makes sense if they agree."""
    by_name = {c.name: c.model for c in calcs}
    state = ts.io.atoms_to_state(cu_au_cells(2, n, seed=3), device, torch.float64)
    ours, theirs = by_name["student"](state), by_name["nequip"](state)
    de = float((ours["energy"] - theirs["energy"]).abs().max())
    df = float((ours["forces"] - theirs["forces"]).abs().max())
    flag = "" if max(de, df) < 1e-5 else " — they DISAGREE, timings compare different computations"
    return f"{device}: student vs nequip on the same .pt2: max |ΔE| {de:.1e} eV, max |ΔF| {df:.1e} eV/Å{flag}"


def _cuda_peak_tracker(device: torch.device) -> tuple[Callable[[], None], Callable[[], float | None]]:
    """Reset and read the CUDA allocator's peak (no-ops on CPU)."""
    if device.type != "cuda":
        return (lambda: None), (lambda: None)
    return (lambda: torch.cuda.reset_peak_memory_stats(device)), (
        lambda: torch.cuda.max_memory_allocated(device) / 1024.0**2
    )


def _bench_md(
    calcs: list[Contender], state: ts.SimState, s: _Settings, clock: Clock, sync: Callable[[], None]
) -> list[dict[str, Any]]:
    """Interleaved NVE runs of every contender on one batch."""
    reset_peak, read_peak = _cuda_peak_tracker(state.device)
    steps: dict[str, int] = {}
    for c in calcs:  # warm-up runs (excluded) also tell how long a step takes
        for _ in range(max(1, s.plan.warmup)):
            sync()
            t0 = clock()
            md_run(c.model, state, 1)  # two model calls
            sync()
            seconds_per_step = (clock() - t0) / 2
        steps[c.name] = _steps_within(s.time_budget_s, seconds_per_step, s.md_steps)
    builds: dict[str, list[int]] = {c.name: [] for c in calcs}
    peaks: dict[str, list[float]] = {c.name: [] for c in calcs}

    def runner(c: Contender) -> Callable[[], None]:
        nl = getattr(c.model, "neighbor_list", None)

        def run() -> None:
            before = nl.n_builds if nl is not None else 0
            reset_peak()
            md_run(c.model, state, steps[c.name])
            if (peak := read_peak()) is not None:
                peaks[c.name].append(peak)
            if nl is not None:
                builds[c.name].append(nl.n_builds - before)

        return run

    times = interleaved({c.name: runner(c) for c in calcs}, s.reps, 0, clock, sync)
    rows = []
    for c in calcs:
        t = times[c.name]
        rows.append(
            {"benchmark": "md", "calculator": c.name, "variant": c.variant, "steps": steps[c.name],
             "calls": steps[c.name] + 1, **_stats(t),
             "throughput": state.n_atoms * steps[c.name] / median(t), "unit": "atom-steps/s",
             "nl_builds": median(builds[c.name]) if builds[c.name] else None,
             "cuda_peak_mb": max(peaks[c.name]) if peaks[c.name] else None}
        )
    return rows


def _bench_relax(
    calcs: list[Contender], state: ts.SimState, s: _Settings, clock: Clock, sync: Callable[[], None]
) -> list[dict[str, Any]]:
    """Interleaved fixed-length FIRE relaxations of every contender on one batch."""
    reset_peak, read_peak = _cuda_peak_tracker(state.device)
    steps: dict[str, int] = {}
    for c in calcs:
        for _ in range(max(1, s.plan.warmup)):
            sync()
            t0 = clock()
            relax_run(c.model, state, 1)  # the optimizer's set-up call and one step
            sync()
            seconds_per_step = (clock() - t0) / 2
        steps[c.name] = _steps_within(s.time_budget_s, seconds_per_step, s.relax_steps)
    taken: dict[str, list[int]] = {c.name: [] for c in calcs}
    peaks: dict[str, list[float]] = {c.name: [] for c in calcs}

    def runner(c: Contender) -> Callable[[], None]:
        def run() -> None:
            reset_peak()
            taken[c.name].append(relax_run(c.model, state, steps[c.name]))
            if (peak := read_peak()) is not None:
                peaks[c.name].append(peak)

        return run

    times = interleaved({c.name: runner(c) for c in calcs}, s.reps, 0, clock, sync)
    rows = []
    for c in calcs:
        t = times[c.name]
        n_steps = int(median(taken[c.name]))
        rows.append(
            {"benchmark": "relax", "calculator": c.name, "variant": f"{c.variant}; FIRE + Frechet",
             "steps": n_steps, "calls": n_steps + 1, **_stats(t),
             "throughput": 60.0 * state.n_systems / median(t), "unit": "structures/min",
             "cuda_peak_mb": max(peaks[c.name]) if peaks[c.name] else None}
        )
    return rows


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_teacher``: throughput ÷ the teacher's on the same measurement.

    Relaxation throughput counts structures at a fixed number of steps, which may
    differ between contenders (time budget), so relaxation speedups compare per-step
    rates.
    """

    def key(r: dict[str, Any]) -> tuple:
        return (r["benchmark"], r["device"], r["dtype"], r["atoms_per_system"], r["batch_size"])

    def rate(r: dict[str, Any]) -> float:
        return r["throughput"] * (r["steps"] if r["benchmark"] == "relax" else 1)

    teachers = {key(r): r for r in rows if r["benchmark"] in ("md", "relax") and r["calculator"] == "teacher"}
    for r in rows:
        if r["benchmark"] in ("md", "relax") and key(r) in teachers:
            r["speedup_vs_teacher"] = rate(r) / rate(teachers[key(r)])


# -- output -------------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per measurement, columns :data:`COLUMNS` (empty where they do not apply)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r.get(k)) for k in COLUMNS})


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


_COLORS = {"student": "tab:blue", "nequip": "tab:orange", "teacher": "tab:green"}
_MARKERS = "osD^v<>ph*"
_THROUGHPUTS = (("md", "MD throughput (atom-steps/s)"), ("relax", "relaxation (structures/min)"))


def write_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``throughput_vs_batch.png``, ``speedup_vs_size.png`` and ``call_split.png``."""
    paths = []
    if any(r["benchmark"] in ("md", "relax") for r in rows):
        paths.append(out_dir / "throughput_vs_batch.png")
        _line_grid(
            rows, paths[-1], calculators=CALCULATORS, x="batch_size", y="throughput", series="atoms_per_system",
            series_label="{} atoms", xlabel="batch size (systems)", ylabel="{}", log2_x=True,
        )
        paths.append(out_dir / "speedup_vs_size.png")
        _line_grid(
            rows, paths[-1], calculators=("student", "nequip"), x="atoms_per_system", y="speedup_vs_teacher",
            series="batch_size", series_label="batch {}", xlabel="atoms per system",
            ylabel="speedup over the teacher, {}", ratio=True,
        )
    split = _split_table(rows)
    if split:
        paths.append(out_dir / "call_split.png")
        _split_bars(split, paths[-1])
    return paths


def _line_grid(
    rows: list[dict[str, Any]],
    path: Path,
    *,
    calculators: Sequence[str],
    x: str,
    y: str,
    series: str,
    series_label: str,
    xlabel: str,
    ylabel: str,
    log2_x: bool = False,
    ratio: bool = False,
) -> None:
    """MD (top) and relaxation (bottom) panels, one column per (device, dtype).

    One line per calculator (colour) and value of ``series`` (marker); log axes.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in any process
    from matplotlib.ticker import FuncFormatter

    panels = sorted({(r["device"], r["dtype"]) for r in rows if r["benchmark"] in ("md", "relax")})
    fig = Figure(figsize=(5.5 * len(panels), 8.5), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, panel in enumerate(panels):
        for i, (bench, label) in enumerate(_THROUGHPUTS):
            ax = axes[i][j]
            sel = [
                r for r in rows
                if r["benchmark"] == bench and (r["device"], r["dtype"]) == panel and r.get(y) is not None
            ]
            for calc in calculators:
                for k, value in enumerate(sorted({r[series] for r in sel})):
                    pts = sorted((r[x], r[y]) for r in sel if r["calculator"] == calc and r[series] == value)
                    if pts:
                        xs, ys = zip(*pts, strict=True)
                        marker = _MARKERS[k % len(_MARKERS)]
                        name = f"{calc}, {series_label.format(value)}"
                        ax.plot(xs, ys, marker=marker, color=_COLORS[calc], label=name)
            ax.set_xscale("log", base=2 if log2_x else 10)
            ax.set_yscale("log")
            if ratio:
                ax.axhline(1.0, color="grey", lw=0.8)
                low, high = ax.get_ylim()
                times = FuncFormatter(lambda v, _: f"{v:g}×")
                ax.yaxis.set_major_formatter(times)
                # label minor ticks too when the axis spans too little for two decades
                ax.yaxis.set_minor_formatter(times if high / low < 100 else FuncFormatter(lambda v, _: ""))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel.format(label if not ratio else label.split(" (")[0]))
            ax.set_title(f"{panel[0]}, {panel[1]}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no measurement", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def _split_bars(split: list[tuple[str, dict[str, float]]], path: Path) -> None:
    """Stacked bars of the stages of one student call, a tick at the plain call."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 1.2 + 0.45 * len(split)), layout="constrained")
    ax = fig.subplots()
    for y, (_, stages) in enumerate(split):
        left = 0.0
        for k, stage in enumerate(STAGES):
            ms = 1e3 * stages[stage]
            ax.barh(y, ms, left=left, color=f"C{k}", label=stage if y == 0 else None)
            left += ms
        plain = 1e3 * stages["total_uninstrumented"]
        ax.plot([plain], [y], "k|", markersize=14, label="plain call" if y == 0 else None)
    ax.set_yticks(range(len(split)), [name for name, _ in split], fontsize=8)
    ax.set_xlabel("ms per call (medians)")
    ax.set_title("one student call, split")
    ax.legend(fontsize=7, ncols=3)
    fig.savefig(path, dpi=110)


def _split_table(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, float]]]:
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["benchmark"] == "call_split":
            name = f"{r['device']} {r['dtype']} {r['batch_size']}×{r['atoms_per_system']} {r['variant']}"
            out.setdefault(name, {})[r["stage"]] = r["median_s"]
    return list(out.items())


def _table_head(*names: str) -> list[str]:
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def summary_markdown(
    rows: list[dict[str, Any]], notes: list[str], *, wall_time_s: float, settings: _Settings | None = None
) -> str:
    """A short report: throughput tables with speedups, the call split, memory, and the method."""
    lines = [f"# Benchmark: student vs teacher vs nequip ({rows[0]['mode'] if rows else ''})", ""]
    if rows:
        r0 = rows[0]
        gpus = sorted({r["gpu"] for r in rows if r["gpu"]})
        lines += [
            (
                f"Machine: {r0['cpu_model']} ({r0['cpu_count']} cores){'; GPU ' + ', '.join(gpus) if gpus else ''}; "
                f"torch {r0['torch_version']}, torch-sim {r0['torch_sim_version']}, nequip {r0['nequip_version']}, "
                f"nvalchemiops {r0['nvalchemiops_version']}, python {r0['python_version']}; "
                f"torch threads {r0['torch_threads']} (OMP_NUM_THREADS={r0['omp_num_threads'] or 'unset'})."
            ),
            f"Student `{r0['model']}`, teacher `{r0['teacher']}`. Total {wall_time_s:.0f} s.",
            "",
        ]
    for bench, title, unit in (
        ("md", "MD throughput", "atom-steps/s, NVE"),
        ("relax", "Relaxation throughput", "structures/min, FIRE + Fréchet, a fixed number of steps"),
    ):
        sel = [r for r in rows if r["benchmark"] == bench]
        if not sel:
            continue
        lines += [f"## {title} ({unit})", ""]
        lines += _table_head(
            "device", "dtype", "atoms/system", "batch", "steps (s/n/t)", "student", "nequip", "teacher",
            "student ÷ teacher", "student ÷ nequip",
        )
        groups: dict[tuple, dict[str, dict[str, Any]]] = {}
        for r in sel:
            groups.setdefault((r["device"], r["dtype"], r["atoms_per_system"], r["batch_size"]), {})[r["calculator"]] = r
        for (dev, dt, n, b), by in sorted(groups.items()):
            st, nq, te = by.get("student"), by.get("nequip"), by.get("teacher")
            steps = "/".join(str(x["steps"]) if x else "–" for x in (st, nq, te))
            vs_teacher = _fmt(st["speedup_vs_teacher"]) + "×" if st and st.get("speedup_vs_teacher") else "–"
            vs_nequip = "–"
            if st and nq:
                per_step = (st["throughput"] * (st["steps"] if bench == "relax" else 1)) / (
                    nq["throughput"] * (nq["steps"] if bench == "relax" else 1)
                )
                vs_nequip = _fmt(per_step) + "×"
            lines.append(
                f"| {dev} | {dt} | {n} | {b} | {steps} | {_fmt(st and st['throughput'])} | "
                f"{_fmt(nq and nq['throughput'])} | {_fmt(te and te['throughput'])} | {vs_teacher} | {vs_nequip} |"
            )
        lines.append("")
    split = _split_table(rows)
    if split:
        lines += [
            "## One student call, split (median ms)",
            "",
            "| state | " + " | ".join(STAGES) + " | sum | plain call | neighbor list share |",
            "|---|" + "---|" * (len(STAGES) + 3),
        ]
        for name, st in split:
            total = sum(st[k] for k in STAGES)
            cells = " | ".join(f"{1e3 * st[k]:.3f}" for k in STAGES)
            share = 100 * st["neighbor_list"] / total if total else float("nan")
            lines.append(f"| {name} | {cells} | {1e3 * total:.3f} | {1e3 * st['total_uninstrumented']:.3f} | {share:.0f}% |")
        lines.append("")
    mem = [r for r in rows if r["benchmark"] == "memory"]
    if mem:
        lines += [
            "## Memory over repeated calls",
            "",
            *_table_head(
                "device", "dtype", "calculator", "state", "calls", "RSS baseline MB", "RSS peak MB", "RSS growth MB",
                "Python heap growth kB", "CUDA peak MB", "CUDA growth MB",
            ),
        ]
        for r in mem:
            lines.append(
                f"| {r['device']} | {r['dtype']} | {r['calculator']} | {r['batch_size']}×{r['atoms_per_system']} | "
                f"{r['calls']} | {r['rss_baseline_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['rss_growth_mb']:+.1f} | "
                f"{r['py_heap_growth_kb']:+.1f} | {_fmt(r.get('cuda_peak_mb'))} | {_fmt(r.get('cuda_growth_mb'))} |"
            )
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    reps = settings.reps if settings else "?"
    method = (
        "Random fcc Cu–Au alloys (Vegard lattice constant, rattled; relaxations also strained 2 %). "
        f"Contenders run interleaved, {reps} timed runs each after excluded warm-ups; tables show medians. "
        "Steps (s/n/t = student/nequip/teacher) are per timed run: slow contenders run fewer so one run "
        "stays near the time budget, and throughput is per step, so ratios compare per-step rates. "
        f"The student uses a {settings.skin if settings else SKIN:g} Å Verlet skin; nequip's calculator runs the "
        "same .pt2 with the alchemiops neighbor list. The call split times pieces inside real calls "
        "(same state every call, so with a skin the neighbor list is only re-pruned). Memory: RSS of the "
        "whole process (sampled), Python heap by tracemalloc, CUDA by torch's allocator; baselines after "
        "two warm-up calls. Plots: throughput_vs_batch.png, speedup_vs_size.png, call_split.png; every "
        "number is in results.csv."
    )
    lines += ["## Method", "", method, ""]
    return "\n".join(lines)
