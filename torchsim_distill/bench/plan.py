"""What a benchmark run measures: the plans (sizes, repetitions, limits), the user's
tuning options, and the Cu–Au cells every measurement runs on.

It exists so that *what* is run is decided in one place, before anything is timed:
:class:`BenchPlan` holds a mode's defaults (:data:`FULL`, :data:`SMOKE`),
:class:`BenchOptions` the user's overrides, and :meth:`BenchOptions.resolve` checks
them and merges both into the :class:`Settings` the suites read::

    settings = BenchOptions(sizes=(32, 108), reps=5).resolve(smoke=False)
    cells = cu_au_cells(4, 108, seed=0)          # 4 random 108-atom alloys
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from torchsim_distill.models.cu_au import random_alloy
from torchsim_distill.utils.timing import CLOCKS

#: Verlet skin of the student in Å (the MD and relaxation runs use it).
SKIN = 0.5


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


# -- options -------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    """Tuning options of :func:`~torchsim_distill.bench.run_benchmarks`; ``None`` takes
    the plan's default.

    Attributes:
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
            ``"plan"``: 256 on CPU for a full run, where SevenNet-0 is slow).
        max_batch_atoms: batches with more atoms are skipped (default 4096 on CPU,
            65536 on CUDA).
    """

    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64)
    batch_sizes: Sequence[int] | None = None
    sizes: Sequence[int] | None = None
    md_steps: int | None = None
    relax_steps: int | None = None
    memory_calls: int | None = None
    reps: int | None = None
    skin: float = SKIN
    threads: int = 1
    clock: str = "wall"
    time_budget_s: float | None = None
    teacher_max_atoms: int | None | str = "plan"
    max_batch_atoms: int | None = None

    def resolve(self, *, smoke: bool) -> Settings:
        """These options over the plan of the mode, checked before anything runs."""
        plan = SMOKE if smoke else FULL
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")
        sizes = tuple(self.sizes or plan.sizes)
        for n in sizes:
            fcc_repeat(n)  # fail on a bad size before anything runs
        if not self.dtypes or any(d not in (torch.float32, torch.float64) for d in self.dtypes):
            raise ValueError(f"dtypes must be torch.float32 and/or torch.float64, got {self.dtypes}")
        return Settings(
            plan=plan,
            sizes=sizes,
            batch_sizes=tuple(sorted(self.batch_sizes or plan.batch_sizes)),
            dtypes=tuple(self.dtypes),
            md_steps=self.md_steps or plan.md_steps,
            relax_steps=self.relax_steps or plan.relax_steps,
            memory_calls=self.memory_calls or plan.memory_calls,
            reps=self.reps or plan.reps,
            skin=self.skin,
            threads=self.threads,
            clock=self.clock,
            time_budget_s=self.time_budget_s or plan.time_budget_s,
            teacher_max_atoms=self.teacher_max_atoms,
            max_batch_atoms=self.max_batch_atoms,
            mode="smoke" if smoke else "full",
        )


@dataclass(frozen=True)
class Settings:
    """Resolved options of one run (plan defaults filled in); see :class:`BenchOptions`."""

    plan: BenchPlan
    sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    md_steps: int
    relax_steps: int
    memory_calls: int
    reps: int
    skin: float
    threads: int
    clock: str
    time_budget_s: float
    teacher_max_atoms: int | None | str
    max_batch_atoms: int | None
    mode: str

    def batch_limit(self, device: torch.device) -> int:
        return self.max_batch_atoms or self.plan.max_batch_atoms.get(device.type, 4096)

    def teacher_limit(self, device: torch.device) -> int | None:
        if self.teacher_max_atoms == "plan":
            return self.plan.teacher_max_atoms.get(device.type)
        return self.teacher_max_atoms  # type: ignore[return-value]


#: Names :class:`BenchOptions` accepts (``run_benchmarks`` takes them as keywords too).
OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(BenchOptions))


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
    """``n`` random fcc Cu–Au alloys at their Vegard lattice constant
    (:func:`torchsim_distill.models.cu_au.random_alloy`), then strained and rattled.

    Args:
        n: number of systems.
        atoms_per_system: ``4·a·b·c`` atoms (see :func:`fcc_repeat`).
        seed: seeds compositions (Au fraction drawn from 0.2 to 0.8), strains and displacements.
        rattle: standard deviation of the random displacements, Å.
        strain: standard deviation of the random cell strain (0.02 = 2 %).
    """
    rng = np.random.default_rng(seed)
    repeat = fcc_repeat(atoms_per_system)
    cells = []
    for _ in range(n):
        atoms = random_alloy(rng.uniform(0.2, 0.8), repeat, rng)
        if strain:
            atoms.set_cell(atoms.cell @ (np.eye(3) + rng.normal(0, strain, (3, 3))), scale_atoms=True)
        atoms.rattle(rattle, seed=int(rng.integers(2**31)))
        cells.append(atoms)
    return cells
