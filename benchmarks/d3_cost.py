"""What D3(BJ) on top of a student costs per call, relative to the student, on one CPU thread.

The default student (``load_student("default")``) and torch-sim's nvalchemiops D3 model with
PBE's parameters (:func:`torchsim_distill.runtime.dispersion.dispersion_model`) on the same
states of lightly rattled fcc Cu–Au (L1_2 Cu3Au cells), interleaved after a warm-up, medians:

- student alone (``skin=None``: its neighbor list is rebuilt every call, as in a relaxation);
- D3 alone, at the default cutoff (60 Bohr, 31.75 Å) and at the original dftd3 program's
  95 Bohr (50.3 Å; the number of pairs grows as the cube of the cutoff);
- student + D3 through ``load_student("default", dispersion="d3bj")`` (one call per batch).

Run on an otherwise idle machine::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/d3_cost.py --out benchmarks/results/d3_cost.md
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/d3_cost.py --quick   # one size, few repetitions
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import torch_sim as ts

from torchsim_distill.models.cu_au import phase
from torchsim_distill.models.registry import load_student
from torchsim_distill.runtime.dispersion import DEFAULT_CUTOFF, dispersion_model
from torchsim_distill.utils.timing import interleaved, iqr, median

BOHR = 0.52917721
#: (label, repeat of the 4-atom L1_2 cell, systems in the batch)
STATES = [("1 × 108 atoms", (3, 3, 3), 1), ("8 × 32 atoms", (2, 2, 2), 8), ("1 × 500 atoms", (5, 5, 5), 1)]


def state_of(reps: tuple[int, int, int], n_systems: int) -> ts.SimState:
    systems = []
    for k in range(n_systems):
        atoms = phase("Cu3Au", reps)
        atoms.rattle(0.03, seed=k)
        systems.append(atoms)
    return ts.io.atoms_to_state(systems, "cpu", torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="the 108-atom state only, 3 repetitions")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else args.reps
    student = load_student("default", skin=None)
    both = load_student("default", skin=None, dispersion="d3bj", functional="pbe")
    d3 = dispersion_model("d3bj", "pbe")
    d3_far = dispersion_model("d3bj", "pbe", cutoff=95 * BOHR)
    lines = [
        (
            f"D3(BJ, PBE) vs the default student, one CPU thread ({platform.processor() or platform.machine()}), "
            f"median of {reps} interleaved calls (± IQR/2), ms per call:"
        ),
        "",
        f"| state | student | D3 ({DEFAULT_CUTOFF / BOHR:.0f} Bohr) | D3 ÷ student | student + D3 | D3 (95 Bohr) | D3 (95) ÷ student |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, repeat, n in STATES[:1] if args.quick else STATES:
        state = state_of(repeat, n)
        fns = {"student": lambda s=state: student(s), "d3": lambda s=state: d3(s), "both": lambda s=state: both(s)}
        if state.n_atoms <= 108:  # 95 Bohr is seconds per call beyond
            fns["d3_far"] = lambda s=state: d3_far(s)
        times = interleaved(fns, reps=reps, warmup=1)
        ms = {k: 1e3 * median(v) for k, v in times.items()}
        spread = {k: 0.5e3 * iqr(v) for k, v in times.items()}
        far = f"{ms['d3_far']:.0f} ± {spread['d3_far']:.0f}" if "d3_far" in ms else "—"
        far_ratio = f"{ms['d3_far'] / ms['student']:.1f}×" if "d3_far" in ms else "—"
        lines.append(
            f"| {label} | {ms['student']:.1f} ± {spread['student']:.1f} | {ms['d3']:.1f} ± {spread['d3']:.1f} | "
            f"{ms['d3'] / ms['student']:.1f}× | {ms['both']:.1f} ± {spread['both']:.1f} | {far} | {far_ratio} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
