"""Instruments for timing the pieces of one calculator call from inside it.

It exists because the call-cost split (:func:`~torchsim_distill.bench.suites.student_call_split`)
must time the species map, the neighbor list and the compiled model *inside real
calls*, so cache hits and skin pruning are charged as they happen; nothing else in
the package needs that. Generic timing (clocks, interleaving, medians, device sync,
pinned threads) is :mod:`torchsim_distill.utils.timing`::

    watch = Stopwatch(time.perf_counter, synchronizer(device))
    calc.species = TimedSpecies(calc.species, watch)
    calc.neighbor_list = TimedNeighborList(calc.neighbor_list, watch)
    calc(state); watch.events      # {"type_mapping": (t0, t1), "neighbor_list": (t0, t1)}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchsim_distill.utils.timing import Clock

#: Stages of one student call, in call order (see :func:`~torchsim_distill.bench.suites.student_call_split`).
STAGES = ("inputs", "type_mapping", "neighbor_list", "forward", "outputs")


class Stopwatch:
    """Start and end times of the instrumented pieces of one calculator call."""

    def __init__(self, clock: Clock, sync: Callable[[], None]) -> None:
        self.clock, self.sync = clock, sync
        self.events: dict[str, tuple[float, float]] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, recording in :attr:`events` under ``name`` when each call starts and ends."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            # on a GPU, wait for queued work so each piece is charged its own kernels
            self.sync()
            t0 = self.clock()
            out = fn(*args, **kwargs)
            self.sync()
            self.events[name] = (t0, self.clock())
            return out

        return timed


class TimedSpecies:
    """Stands in for a calculator's species map; times ``atom_types``."""

    def __init__(self, inner: Any, watch: Stopwatch) -> None:
        self._inner = inner
        self.atom_types = watch.wrap("type_mapping", inner.atom_types)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedNeighborList:
    """Stands in for a calculator's neighbor list; times each call."""

    def __init__(self, inner: Any, watch: Stopwatch) -> None:
        self._inner = inner
        self._call = watch.wrap("neighbor_list", inner)

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
