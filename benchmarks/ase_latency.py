"""What one ASE call of the drop-in costs at small sizes, against the compiled forward and the teacher.

MD users call the ASE calculator once per step, one small system at a time, millions of
times. On Cu–Au cells of 32, 108 and 500 atoms (random fcc alloys, lightly rattled) this
times, interleaved on one CPU thread:

* **raw**: the compiled student's forward (``artifact.model``) on inputs prepared once —
  the floor: no neighbor list, no checks, no output handling;
* **evaluate**: ``DistilledTorchSimCalc.evaluate`` on positions that move every call by
  less than half the skin (as in MD: the neighbor list is reused and re-pruned);
* **ASE step**: ``DistilledCalculator(model="default")`` (skin 0.3 Å), positions moved,
  then ``get_potential_energy``, ``get_forces`` and ``get_stress`` — one model evaluation;
* **SevenNet-0**: ``SevenNetCalculator(model="7net-0")``, the same ASE step (the teacher a
  script swaps out); fewer rounds, interleaved with the ASE student so their ratio is
  measured side by side.

Goals (issue 24): evaluate ÷ raw ≤ 1.05 and ASE step ÷ raw ≤ 1.10 at 32 and 108 atoms.
Then it makes many ASE calls on the 32-atom cell and reports resident memory (RSS) after
warm-up and at the end (goal: flat within 1 %).

Medians of the interleaved rounds, with the ratio of medians and, in brackets, the ratio
of minima: on a shared machine interference only adds time, so a gap between the two
means noise. Usage (one thread is pinned before torch loads)::

    .venv/bin/python benchmarks/ase_latency.py --out benchmarks/results/ase_latency.md
    .venv/bin/python benchmarks/ase_latency.py --sizes 32 --no-teacher --memory-calls 1000 --out /tmp/a.md  # quick
"""

from __future__ import annotations

import os

# one thread, pinned before torch (and its OpenMP runtime) is imported
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402

from torchsim_distill import DistilledCalculator  # noqa: E402
from torchsim_distill.bench import CLOCKS, interleaved, machine_info, median  # noqa: E402
from torchsim_distill.models.cu_au import random_alloy  # noqa: E402

REPS = {32: (2, 2, 2), 108: (3, 3, 3), 256: (4, 4, 4), 500: (5, 5, 5), 864: (6, 6, 6)}
SKIN = 0.3  # Å, the drop-in's default
STEP = 0.01  # Å, how far positions move per call (below skin / 2: the neighbor list is reused)


def cell(n_atoms: int, seed: int = 0) -> Atoms:
    if n_atoms not in REPS:
        raise SystemExit(f"--sizes: {n_atoms} is not one of {sorted(REPS)} (4·k³ atoms)")
    atoms = random_alloy(0.3, REPS[n_atoms], np.random.default_rng(seed))
    atoms.rattle(0.02, seed=seed)
    return atoms


def ase_step(atoms: Atoms) -> Callable[[], None]:
    """Move the atoms (alternating between two nearby configurations), then the three getters."""
    base = atoms.positions.copy()
    shifted = [base, base + STEP]
    k = [0]

    def step() -> None:
        k[0] += 1
        atoms.positions = shifted[k[0] % 2]
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()

    return step


def contenders(atoms: Atoms, student: DistilledCalculator) -> dict[str, Callable[[], None]]:
    calc = student.model
    n = len(atoms)
    positions = [torch.from_numpy(atoms.positions + d) for d in (0.0, STEP)]
    numbers = torch.from_numpy(atoms.numbers)
    box = torch.from_numpy(atoms.cell.array).unsqueeze(0)
    system_idx = torch.zeros(n, dtype=torch.long)
    pbc = torch.from_numpy(atoms.pbc)
    inputs = calc._prepare(positions[0], numbers, box, system_idx, pbc)
    raw_args = [inputs[key] for key in calc.artifact.input_keys]
    k = [0]

    def raw() -> None:
        with torch.no_grad():
            calc.artifact.model(raw_args)

    def evaluate() -> None:
        k[0] += 1
        calc.evaluate(positions[k[0] % 2], numbers, box, system_idx, pbc)

    mine = atoms.copy()
    mine.calc = student
    return {"raw": raw, "evaluate": evaluate, "ASE step": ase_step(mine)}


def ratio(num: list[float], den: list[float]) -> str:
    return f"{median(num) / median(den):.3f} [min {min(num) / min(den):.3f}]"


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def memory(student: DistilledCalculator, calls: int, warmup: int) -> list[str]:
    """RSS over ``calls`` ASE steps on the 32-atom cell, after ``warmup`` steps."""
    import psutil

    process = psutil.Process()
    atoms = cell(32, seed=7)
    atoms.calc = student
    step = ase_step(atoms)
    for _ in range(warmup):
        step()
    gc.collect()
    marks = [(0, process.memory_info().rss)]
    t0 = time.perf_counter()
    for i in range(1, calls + 1):
        step()
        if i % max(1, calls // 10) == 0:
            marks.append((i, process.memory_info().rss))
    seconds = time.perf_counter() - t0
    first, last = marks[0][1], marks[-1][1]
    growth = 100 * (last - first) / first
    lines = [
        f"Resident memory over {calls} ASE steps on the 32-atom cell (after {warmup} warm-up steps; "
        f"{1e3 * seconds / calls:.2f} ms per step):",
        "",
        "| calls | RSS |",
        "| ---: | ---: |",
        *(f"| {i} | {rss / 2**20:.1f} MiB |" for i, rss in marks),
        "",
        f"Growth: {growth:+.3f} % ({(last - first) / 2**20:+.2f} MiB) — goal: flat within 1 % "
        f"{'✓' if abs(growth) <= 1 else '✗'}.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Markdown file for the results")
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 108, 500], help="atoms per cell (4·k³)")
    parser.add_argument("--reps", type=int, default=40, help="interleaved rounds of raw, evaluate and ASE step")
    parser.add_argument("--teacher-reps", type=int, default=5, help="interleaved rounds of SevenNet-0 vs the ASE student")
    parser.add_argument("--no-teacher", action="store_true", help="skip SevenNet-0")
    parser.add_argument("--memory-calls", type=int, default=10_000, help="ASE steps of the memory test (0: skip)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: this thread's CPU time, which leaves out the time other processes hold the core "
                             "(on a shared machine), not their effect on shared caches")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    student = DistilledCalculator(model="default", device="cpu", skin=SKIN)
    teacher = None
    if not args.no_teacher:
        from sevenn.calculator import SevenNetCalculator

        teacher = SevenNetCalculator(model="7net-0", device="cpu")
    lines = [
        "# ASE drop-in: per-call latency at small sizes",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ase_latency.py {' '.join(sys.argv[1:])}`",
        "",
        f"Student: the shipped default (`DistilledCalculator(model=\"default\")`, skin {SKIN} Å, float64); "
        f"positions move {STEP} Å per call. One torch thread, {args.clock} clock. "
        f"Machine: {machine_info('cpu').get('cpu_model', '?')}, {os.cpu_count()} cores.",
        "",
        "| atoms | raw forward | evaluate | ASE step | evaluate ÷ raw (goal ≤ 1.05) | ASE step ÷ raw (goal ≤ 1.10) "
        "| SevenNet-0 ASE step | SevenNet-0 ÷ ASE student |",
        "| ---: | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for n in args.sizes:
        atoms = cell(n)
        fns = contenders(atoms, student)
        times = interleaved(fns, reps=args.reps, warmup=3, clock=CLOCKS[args.clock])
        teacher_cols = ["–", "–"]
        if teacher is not None:
            theirs = atoms.copy()
            theirs.calc = teacher
            side = interleaved({"ASE step": fns["ASE step"], "SevenNet-0": ase_step(theirs)},
                               reps=args.teacher_reps, warmup=1, clock=CLOCKS[args.clock])
            teacher_cols = [ms(median(side["SevenNet-0"])), ratio(side["SevenNet-0"], side["ASE step"])]
        row = [str(n), *(ms(median(times[k])) for k in ("raw", "evaluate", "ASE step")),
               ratio(times["evaluate"], times["raw"]), ratio(times["ASE step"], times["raw"]), *teacher_cols]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    if args.memory_calls:
        lines += ["", *memory(student, args.memory_calls, warmup=min(1000, args.memory_calls))]
        print("\n".join(lines[-6:]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
