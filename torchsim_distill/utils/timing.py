"""Timing that is fair on a noisy machine: interleaved runs, device sync, robust statistics.

The one timing helper of the package (the benchmark harness, the evaluation's speed
measure and the demo's teacher comparison all use it)::

    times = interleaved({"student": lambda: student(state), "teacher": lambda: teacher(state)}, reps=5, warmup=1)
    ratio = median(times["teacher"]) / median(times["student"])
    with pinned_threads(1): ...   # one torch/OpenMP thread, restored afterwards
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import torch

_T = TypeVar("_T")
Clock = Callable[[], float]
#: ``wall`` is what a user waits; ``cpu`` (this thread's CPU time) leaves out the time
#: the OS gives to other processes, most of the noise on a shared machine. With one
#: thread both count everything: torch, AOTInductor and Warp's CPU kernels all run in
#: the calling thread. On a GPU only ``wall`` means anything.
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.thread_time}


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved(
    fns: dict[str, Callable[[], object]],
    reps: int,
    warmup: int,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per run of each function, run round-robin with a rotating start.

    Interleaving makes slow drifts (frequency scaling, other processes, allocator
    growth) hit every contender alike instead of whichever ran last; warm-up rounds
    (first-call compilation, buffer growth) are run and discarded.
    """
    if reps < 1:
        raise ValueError(f"reps must be ≥ 1, got {reps}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            t0 = clock()
            fns[name]()
            sync()
            times[name].append(clock() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def iqr(xs: Sequence[float]) -> float:
    """Interquartile range (0 for fewer than four samples)."""
    if len(xs) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(xs, n=4)
    return float(q3 - q1)


@contextmanager
def torch_setting(get: Callable[[], _T], set_: Callable[[_T], object], value: _T) -> Iterator[None]:
    """Temporarily change one of torch's global settings through its getter and setter.

    ``with torch_setting(torch.get_num_threads, torch.set_num_threads, 1): ...`` sets
    the value on entry and restores the previous one on exit, also after an error.
    """
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def pinned_threads(n: int) -> AbstractContextManager[None]:
    """Run with ``n`` torch (OpenMP) threads, then restore the previous count.

    ``OMP_NUM_THREADS`` only takes effect before torch loads (scripts set it first);
    ``torch.set_num_threads`` also limits the ``#pragma omp parallel`` regions of
    AOTInductor's CPU kernels, which take their thread count from the caller.
    """
    return torch_setting(torch.get_num_threads, torch.set_num_threads, n)


def default_dtype(dtype: torch.dtype) -> AbstractContextManager[None]:
    """Temporarily set torch's default dtype (global, so not thread-safe)."""
    return torch_setting(torch.get_default_dtype, torch.set_default_dtype, dtype)
