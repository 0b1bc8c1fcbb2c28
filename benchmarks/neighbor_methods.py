"""When is nvalchemiops' O(N²) kernel faster than its cell list? (CPU, one thread)

Sets ``NAIVE_MAX_ATOMS_PER_SYSTEM`` in ``torchsim_distill/neighbors.py``::

    OMP_NUM_THREADS=1 python benchmarks/neighbor_methods.py          # prints a table of medians
    OMP_NUM_THREADS=1 python benchmarks/neighbor_methods.py --smoke

For batches of 16 fcc Cu cells of growing size it times both methods interleaved
(naive, cell list, naive, ...) after a warm-up and prints median times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from torchsim_distill.runtime.neighbors import BatchedNeighborList  # noqa: E402


def batch_inputs(reps: tuple[int, int, int], n_systems: int, r_max: float):
    """Positions, cells, pbc, system index and types of ``n_systems`` rattled fcc cells."""
    systems = []
    for k in range(n_systems):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(reps)
        atoms.rattle(0.05, seed=k)
        systems.append(atoms)
    pos = torch.tensor(np.concatenate([a.positions for a in systems]))
    cell = torch.tensor(np.stack([np.array(a.cell) for a in systems]))
    pbc = torch.ones(n_systems, 3, dtype=torch.bool)
    sidx = torch.cat([torch.full((len(a),), k) for k, a in enumerate(systems)])
    return pos, cell, pbc, sidx, torch.zeros(len(pos), dtype=torch.long)


def median_times(inputs, r_max: float, repeats: int) -> dict[str, float]:
    """Interleaved median wall times of one full build per method."""
    builders = {m: BatchedNeighborList(r_max, method=m) for m in ("naive", "cell_list")}
    for b in builders.values():
        b(*inputs)  # warm-up: Warp kernel compilation and buffer sizing
    times: dict[str, list[float]] = {m: [] for m in builders}
    for _ in range(repeats):
        for m, b in builders.items():
            t0 = time.perf_counter()
            b(*inputs)
            times[m].append(time.perf_counter() - t0)
    return {m: float(np.median(t)) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two sizes, few repeats")
    parser.add_argument("--r-max", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [(1, 1, 1), (2, 2, 2)] if args.smoke else [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 3, 2), (3, 3, 3), (4, 4, 4)]
    repeats = 3 if args.smoke else 15
    print(f"16 systems per batch, r_max {args.r_max} Å, torch threads {torch.get_num_threads()}")
    print("| atoms/system | naive (ms) | cell list (ms) | naive / cell list |")
    print("|---:|---:|---:|---:|")
    for reps in sizes:
        inputs = batch_inputs(reps, 16, args.r_max)
        t = median_times(inputs, args.r_max, repeats)
        n = 4 * reps[0] * reps[1] * reps[2]
        print(f"| {n} | {t['naive'] * 1e3:.2f} | {t['cell_list'] * 1e3:.2f} | {t['naive'] / t['cell_list']:.2f} |")


if __name__ == "__main__":
    main()
