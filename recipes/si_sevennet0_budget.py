"""Silicon from SevenNet-0 within one hour of one CPU core: issue 26's case, budgeted.

Three diamond seeds (8, 16 and 64 atoms: one crystal in three supercells, which the
acceptance suite measures once), SevenNet-0 as the teacher, and ``--budget 1h``: the run
measures this teacher and this machine, plans configs, epochs, size, committee and rounds,
prints the plan and records it (``run.json``, the card's "Budget and plan")::

    OMP_NUM_THREADS=1 python recipes/si_sevennet0_budget.py            # runs/si_sevennet0_budget_v3/
    OMP_NUM_THREADS=1 python recipes/si_sevennet0_budget.py --budget 45m --out /tmp/si

Rerun the same command after an interruption: the plan in ``run.json`` is reused, the
frames and labels are kept, training resumes from ``last.ckpt`` and the teacher's side of
the acceptance suite is cached. It is the command line's run, so the same thing is::

    torchsim-distill distill --teacher sevennet-0 --structures runs/si_sevennet0_budget_v3/seeds.extxyz \\
        --out runs/si_sevennet0_budget_v3 --budget 1h

The card (``report/model_card.md``) then says, against SevenNet-0 on held-out frames, the
frame gates met or missed (5 meV/atom, 60 meV/Å, 0.1 GPa), the elastic constants and the
vacancy energy against the teacher's, and the time each stage took beside its estimate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ase.build import bulk
from ase.io import write

from torchsim_distill.cli import main as cli

#: where the run lives (resumable across sessions)
#: (``si_sevennet0_budget`` and ``_v2`` are the earlier tries the README compares, kept as they ran)
DEFAULT_RUN = Path(__file__).parent / "runs" / "si_sevennet0_budget_v3"


def seeds(path: Path) -> Path:
    """The three diamond seeds of the issue: the cubic cell (8 atoms), 2×1×1 and 2×2×2."""
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    if not path.exists():  # written once: a resumed run must see the same seeds
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, [si, si.repeat((2, 1, 1)), si.repeat((2, 2, 2))], format="extxyz")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_RUN, help="run directory (rerun to resume)")
    parser.add_argument("--budget", default="1h", help="wall time: 45m, 1h, 1.5h, 3600s")
    parser.add_argument("--teacher", default="sevennet-0", help="the teacher (default: SevenNet-0)")
    args, extra = parser.parse_known_args(argv)
    structures = seeds(args.out / "seeds.extxyz")
    return cli(["distill", "--teacher", args.teacher, "--structures", str(structures), "--out", str(args.out),
                "--budget", args.budget, *extra])


if __name__ == "__main__":
    sys.exit(main())
