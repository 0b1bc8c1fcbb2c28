"""Screening at scale: structures per minute and peak resident memory of ``torchsim-distill relax``
for 10³, 10⁴ and 10⁵ small structures, to show memory flat in the input size (issue 25).

Each size runs in a fresh process (the command itself, as a user runs it), on the default
student, with a low ``--max-steps`` so that the run takes minutes; the process reports its own
peak RSS (``ru_maxrss``). The structures are 4-atom fcc Cu–Au cells, rattled, one extxyz file
per size, generated once into ``--work``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/screening_scale.py --work /tmp/screen \\
        --table benchmarks/results/screening_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import write

#: What runs in the child: the CLI's relax, then its own peak memory on the last line.
CHILD = """
import json, resource, sys, time
from torchsim_distill.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def structures(n: int, path: Path, seed: int = 0) -> Path:
    """``n`` rattled 4-atom Cu–Au cells in one extxyz file (written once)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.8, cubic=True)
    frames = []
    for k in range(n):
        atoms = base.copy()
        atoms.set_chemical_symbols(rng.choice(["Cu", "Au"], size=4))
        atoms.positions += rng.normal(scale=0.05, size=(4, 3))
        atoms.info["name"] = f"c{k}"
        frames.append(atoms)
    tmp = path.with_suffix(".partial.extxyz")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    return path


def run(n: int, work: Path, max_steps: int, chunk_size: int) -> dict:
    """One relaxation of ``n`` structures in a fresh process; its time, rate and peak memory."""
    path = structures(n, work / f"in_{n}.extxyz")
    out = work / f"out_{n}"
    # a fresh run: an earlier run's outputs or stored chunks (it resumes from them) would skew the time
    for old in [out, *work.glob(f".{out.name}.parts-*")]:
        shutil.rmtree(old, ignore_errors=True)
    argv = ["relax", str(path), "--model", "default", "--out", str(out), "--max-steps", str(max_steps),
            "--chunk-size", str(chunk_size), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(n=n, structures_per_min=60.0 * n / result["seconds"],
                  relaxed_mb=(out / "relaxed.extxyz").stat().st_size / 2**20)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the inputs and outputs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--max-steps", type=int, default=5, help="FIRE steps per structure (low: minutes per run)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--table", type=Path, help="Markdown table to write")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        results.append(run(n, args.work, args.max_steps, args.chunk_size))
        print(json.dumps(results[-1]), flush=True)
    lines = [
        "| structures | wall time (whole command) | structures/min | peak resident memory | relaxed.extxyz |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['n']:,} | {r['seconds']:.0f} s | {r['structures_per_min']:,.0f} | {r['peak_rss_mb']:,.0f} MB | "
              f"{r['relaxed_mb']:.1f} MB |" for r in results]
    lines += ["", f"`torchsim-distill relax` on the default student, 4-atom Cu–Au cells, --max-steps {args.max_steps}, "
              f"--chunk-size {args.chunk_size}, Fréchet cell filter, one thread; {platform.processor() or platform.machine()}, "
              f"{time.strftime('%Y-%m-%d')}. Peak memory of each run's own process (ru_maxrss); ratio of the largest to "
              f"the smallest: {results[-1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.2f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.table:
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
