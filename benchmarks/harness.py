"""Student vs teacher vs nequip's calculator: throughput against batch size, call cost, memory.

A thin script over :func:`torchsim_distill.bench.run_benchmarks` (also
``torchsim-distill bench``) that exposes every option and pins OpenMP to one thread
before torch loads. It writes ``results.csv``, ``summary.md`` and PNG plots::

    .venv/bin/python benchmarks/harness.py --smoke --out benchmarks/out/smoke     # < 1 min warm
    .venv/bin/python benchmarks/harness.py --out benchmarks/out/full              # SevenNet-0 teacher
    .venv/bin/python benchmarks/harness.py --teacher emt --sizes 32 108 --batch-sizes 1 4 16 --out /tmp/b
"""

from __future__ import annotations

import os

# pin threads before torch (and its OpenMP runtime) is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from torchsim_distill.bench import CLOCKS, BenchOptions, run_benchmarks  # noqa: E402

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--smoke", action="store_true", help="CI-sized run (tiny student, EMT teacher)")
    parser.add_argument("--model", help="student: 'default' (the shipped one), .nequip.pt2 (--target batch) or "
                        "checkpoint; default: 'default' (--smoke: the tiny toy student)")
    parser.add_argument("--teacher", help="sevennet-0 (default), emt, or a compiled .nequip.pt2")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(_DTYPES), default=["float32", "float64"])
    parser.add_argument("--sizes", nargs="+", type=int, help="atoms per system, each 4*a*b*c (default 32 108 256 500 1000)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="systems per batch (default 1 4 16 64)")
    parser.add_argument("--md-steps", type=int)
    parser.add_argument("--relax-steps", type=int)
    parser.add_argument("--memory-calls", type=int, help="calls of the memory test (default 10000)")
    parser.add_argument("--reps", type=int, help="timed runs per contender (default 3)")
    parser.add_argument("--skin", type=float, default=0.5, help="the student's Verlet skin, Angstrom")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: this thread's CPU time (shared machines)")
    parser.add_argument("--time-budget", type=float, help="target seconds of one timed run; slow contenders run fewer steps")
    parser.add_argument("--teacher-max-atoms", type=int, help="the teacher skips larger batches; 0: no limit (default 256 on CPU, none on CUDA)")
    parser.add_argument("--max-batch-atoms", type=int, help="skip larger batches (default 4096 CPU, 65536 CUDA)")
    args = parser.parse_args(argv)
    options = BenchOptions(
        dtypes=[_DTYPES[d] for d in args.dtypes],
        sizes=args.sizes,
        batch_sizes=args.batch_sizes,
        md_steps=args.md_steps,
        relax_steps=args.relax_steps,
        memory_calls=args.memory_calls,
        reps=args.reps,
        skin=args.skin,
        threads=args.threads,
        clock=args.clock,
        time_budget_s=args.time_budget,
        teacher_max_atoms="plan" if args.teacher_max_atoms is None else (args.teacher_max_atoms or None),
        max_batch_atoms=args.max_batch_atoms,
    )
    logging.basicConfig(format="%(message)s")  # progress on stderr: the package's INFO messages only
    logging.getLogger("torchsim_distill").setLevel(logging.INFO)
    result = run_benchmarks(
        args.out, smoke=args.smoke, model=args.model, teacher=args.teacher, device=args.device, options=options
    )
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
