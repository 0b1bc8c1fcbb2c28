"""The measurements: MD and relaxation throughput, the cost split of one student call,
and memory over many calls.

It exists to hold what is timed and how, apart from what is run (:mod:`.plan`), who
runs (:mod:`.contenders`) and how results are written (:mod:`.report`). Each function
measures one batch and returns rows (dicts keyed by :data:`~torchsim_distill.bench.report.COLUMNS`)
or raw samples:

* :func:`bench_md`: interleaved ``ts.integrate`` NVE runs (atom-steps/s, neighbor-list rebuilds);
* :func:`bench_relax`: interleaved fixed-length ``ts.optimize`` FIRE + Fréchet runs (structures/min);
* :func:`student_call_split`: seconds per stage of a ``DistilledTorchSimCalc`` call;
* :func:`memory_profile`: RSS, Python heap and CUDA memory over repeated calls.

Slow contenders run fewer steps per timed run (down to a few) so that one run stays
near the time budget; throughput is per step, so their numbers stay comparable.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch_sim as ts
from torch_sim.models.interface import ModelInterface

try:  # optional; imported here, not while tracemalloc traces (its import would count as growth)
    import psutil

    _PROCESS: Any = psutil.Process()
except ImportError:
    _PROCESS = None

from torchsim_distill.bench.call_split import (
    STAGES,
    Stopwatch,
    TimedNeighborList,
    TimedSpecies,
)
from torchsim_distill.bench.contenders import Contender
from torchsim_distill.bench.plan import Settings
from torchsim_distill.runtime.artifact import CompiledArtifact
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.timing import Clock, interleaved, iqr, median, synchronizer

#: FIRE steps between convergence checks in the relaxation runs (torch-sim's default).
RELAX_CHECK_EVERY = 5
#: MD settings: NVE from Maxwell–Boltzmann velocities at this temperature (K), time step in ps.
MD_TEMPERATURE, MD_TIMESTEP = 300.0, 0.002


def stats(samples: Sequence[float]) -> dict[str, float]:
    """``median_s``, ``min_s``, ``iqr_s`` and ``reps`` of timing samples."""
    return {"median_s": median(samples), "min_s": min(samples), "iqr_s": iqr(samples), "reps": len(samples)}


def per_step_rate(row: dict[str, Any]) -> float:
    """A throughput row's rate per step: relaxation throughput counts structures at a
    fixed number of steps, which may differ between contenders (time budget)."""
    return row["throughput"] * (row["steps"] if row["benchmark"] == "relax" else 1)


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
    ts_logger = logging.getLogger("torch_sim")
    level = ts_logger.level
    ts_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="All systems have reached the maximum number of steps")
            yield
    finally:
        ts_logger.setLevel(level)


def steps_within(budget_s: float, seconds_per_step: float, max_steps: int, min_steps: int = 2) -> int:
    """Steps of one timed run: ``max_steps``, or fewer so the run lasts about ``budget_s``."""
    if seconds_per_step <= 0:
        return max_steps
    return max(min(min_steps, max_steps), min(max_steps, int(budget_s / seconds_per_step)))


def _steps_per_run(
    calcs: list[Contender],
    one_step: Callable[[ModelInterface], object],
    max_steps: int,
    s: Settings,
    clock: Clock,
    sync: Callable[[], None],
) -> dict[str, int]:
    """Warm-up runs of one step (two model calls; excluded from the results) per
    contender, which also tell how many steps fit its timed runs."""
    steps: dict[str, int] = {}
    for c in calcs:
        for _ in range(max(1, s.plan.warmup)):
            sync()
            t0 = clock()
            one_step(c.model)
            sync()
            seconds_per_step = (clock() - t0) / 2
        steps[c.name] = steps_within(s.time_budget_s, seconds_per_step, max_steps)
    return steps


def _cuda_peak_tracker(device: torch.device) -> tuple[Callable[[], None], Callable[[], float | None]]:
    """Reset and read the CUDA allocator's peak (no-ops on CPU)."""
    if device.type != "cuda":
        return (lambda: None), (lambda: None)
    return (lambda: torch.cuda.reset_peak_memory_stats(device)), (
        lambda: torch.cuda.max_memory_allocated(device) / 1024.0**2
    )


def bench_md(
    calcs: list[Contender], state: ts.SimState, s: Settings, clock: Clock, sync: Callable[[], None]
) -> list[dict[str, Any]]:
    """Interleaved NVE runs of every contender on one batch.

    ``nl_builds`` is the median number of neighbor-list rebuilds per timed run, for
    contenders that expose ``neighbor_list.n_builds`` (the student).
    """
    reset_peak, read_peak = _cuda_peak_tracker(state.device)
    steps = _steps_per_run(calcs, lambda model: md_run(model, state, 1), s.md_steps, s, clock, sync)
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
             "calls": steps[c.name] + 1, **stats(t),
             "throughput": state.n_atoms * steps[c.name] / median(t), "unit": "atom-steps/s",
             "nl_builds": median(builds[c.name]) if builds[c.name] else None,
             "cuda_peak_mb": max(peaks[c.name]) if peaks[c.name] else None}
        )
    return rows


def bench_relax(
    calcs: list[Contender], state: ts.SimState, s: Settings, clock: Clock, sync: Callable[[], None]
) -> list[dict[str, Any]]:
    """Interleaved fixed-length FIRE relaxations of every contender on one batch."""
    reset_peak, read_peak = _cuda_peak_tracker(state.device)
    # one warm-up step: the optimizer's set-up call and one step
    steps = _steps_per_run(calcs, lambda model: relax_run(model, state, 1), s.relax_steps, s, clock, sync)
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
             "steps": n_steps, "calls": n_steps + 1, **stats(t),
             "throughput": 60.0 * state.n_systems / median(t), "unit": "structures/min",
             "cuda_peak_mb": max(peaks[c.name]) if peaks[c.name] else None}
        )
    return rows


# -- the call-cost split ---------------------------------------------------------------


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
    * ``type_mapping``: ``calc.species.atom_types`` (atomic numbers → type indices); 0 on the
      calls that reuse the previous call's mapping (same atoms, cells and pbc: the calculator
      keeps it, and the comparison that decides so is charged to ``inputs``);
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
    watch = Stopwatch(clock, sync)
    timed = DistilledTorchSimCalc(dataclasses.replace(artifact, model=watch.wrap("forward", artifact.model)), **options)
    timed.species = TimedSpecies(timed.species, watch)
    timed.neighbor_list = TimedNeighborList(timed.neighbor_list, watch)
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
        mapping = pieces.get("type_mapping", 0.0)  # absent: the mapping of the previous call was reused
        samples["type_mapping"].append(mapping)
        samples["neighbor_list"].append(pieces["neighbor_list"])
        samples["forward"].append(pieces["forward"])
        samples["inputs"].append(ev["forward"][0] - t0 - mapping - pieces["neighbor_list"])
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


def rss_bytes() -> float:
    """Resident set size of this process in bytes (nan where it cannot be read)."""
    if _PROCESS is not None:
        return float(_PROCESS.memory_info().rss)
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return float(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return float("nan")


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
    rss0 = peak = rss_bytes()
    every = max(1, n_calls // 100)
    t0 = time.perf_counter()
    calls = 0
    try:
        for k in range(n_calls):
            model(state)
            calls += 1
            if k % every == 0:
                peak = max(peak, rss_bytes())
                if time.perf_counter() - t0 > time_limit_s:
                    break
        sync()
        seconds = time.perf_counter() - t0
        gc.collect()
        rss1 = rss_bytes()
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
