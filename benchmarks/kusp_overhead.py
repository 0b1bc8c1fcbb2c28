"""What serving the student to LAMMPS through KIM + KUSP costs per force call, against a direct call.

For a periodic fcc Cu–Au cell of 108 and 1000 atoms, one CPU thread:

* **direct**: one ``DistilledCalculator`` energy + forces call on the periodic cell (the
  compiled student as ``load_student`` gives it, 0.3 Å Verlet skin; the server's folded route
  uses the same);
* **LAMMPS via KIM**: LAMMPS (Debian's, with KIM) runs ``kim init KUSP__MO_000000000000_000``
  for ``--steps`` MD steps against ``torchsim-distill``'s KUSP server (in this process, in a
  thread); per call = LAMMPS's ``Pair`` time ÷ steps;
* of which **server compute**: the time the server spent answering (``folded``: finding the
  cell and the compiled student on it, and of that the **folding**, all but the compiled call;
  ``exact``: the eager student on KIM's padded cluster; see ``jobs/serve.py``), and
  **transport**: the rest (LAMMPS's KIM glue, socket, serialisation).

Each route is served by its own server (``serve`` and ``serve --exact``). It prints medians
(direct) and means over the MD steps (LAMMPS), the added ms per call and the ratio. A second
table times the folded server's compiled call on the cell in this process, interleaved with
the direct calls: the same evaluation, so the LAMMPS call's excess over the direct call that
folding and transport do not account for is the compiled call's own variance during the run.
Needs the KIM set-up of ``.ci/run`` (LAMMPS with KIM, KUSP's portable model)::

    .venv/bin/python benchmarks/kusp_overhead.py --steps 20 --repeats 10 --out benchmarks/results/kusp_overhead.md
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

LAMMPS_INPUT = """\
kim init KUSP__MO_000000000000_000 metal
read_data cell.data
kim interactions {species}
neighbor 1.0 bin
velocity all create 300.0 12345
fix 1 all nve
timestep 0.001
run {steps}
"""


def cell(n: int):
    from ase.build import bulk

    reps = {108: (3, 3, 3), 1000: (5, 5, 10), 32: (2, 2, 2)}[n]
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(reps)
    rng = np.random.default_rng(0)
    atoms.set_chemical_symbols(rng.choice(["Cu", "Au"], size=len(atoms)))
    atoms.rattle(0.05, seed=1)
    return atoms


def direct_times(calc, atoms, repeats: int, served=None) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` energy + forces calls (after one warm-up call) and, interleaved
    with them, of ``served``'s (a folded server's model) compiled call on the same cell."""
    direct, on_cell = [], []
    if served is not None:  # the cell as the folded route hands it over: species codes, wrapped positions
        codes = np.array([served.type_names.index(s) for s in atoms.get_chemical_symbols()])
        positions, lattice = atoms.get_positions(wrap=True), atoms.cell.array
    for _ in range(repeats + 1):
        a = atoms.copy()
        a.calc = calc
        t0 = time.perf_counter()
        a.get_forces()
        direct.append(time.perf_counter() - t0)
        if served is not None:
            t0 = time.perf_counter()
            served.on_cell(codes, positions, lattice, pbc=True)
            on_cell.append(time.perf_counter() - t0)
    return direct[1:], on_cell[1:]


def timed(server) -> list[float]:
    """Seconds of each call the folded route makes to the compiled student (the rest of its
    compute is folding: pairing images with owners, the virial's carriers)."""
    seconds: list[float] = []
    periodic = server.model.periodic
    if periodic is not None:
        evaluate = periodic.evaluate

        def timed_evaluate(*args, **kwargs):
            t0 = time.perf_counter()
            out = evaluate(*args, **kwargs)
            seconds.append(time.perf_counter() - t0)
            return out

        periodic.evaluate = timed_evaluate
    return seconds


def lammps_ms(server, atoms, steps: int, model_seconds: list[float]) -> tuple[float, float, float, int]:
    """(LAMMPS Pair ms per call, server compute ms per call, of which folding, cluster atoms per
    call); the first call (set-up, and the folded route's search for the cell) is left out."""
    from ase.io import write

    with tempfile.TemporaryDirectory() as tmp:
        species = server.model.type_names
        write(Path(tmp) / "cell.data", atoms, format="lammps-data", specorder=species, masses=True)
        (Path(tmp) / "in.lmp").write_text(LAMMPS_INPUT.format(species=" ".join(species), steps=steps))
        config = server.write_config(Path(tmp) / "kusp.yaml")
        env = {**os.environ, "KUSP_SERVER_CONFIG": str(config), "KUSP_CONFIG": str(config)}
        proc = subprocess.run(["lmp", "-in", "in.lmp", "-log", "none"], cwd=tmp, env=env,
                              capture_output=True, text=True, check=True)
    pair = float(re.search(r"^Pair\s*\|\s*([\d.eE+-]+)", proc.stdout, re.M).group(1))
    ghosts = int(float(re.search(r"^Nghost:\s*([\d.]+)", proc.stdout, re.M).group(1)))
    per_compute = float(np.mean(server.compute_seconds[-steps:]))  # the loop's calls, not the set-up call
    folding = per_compute - float(np.mean(model_seconds[-steps:])) if model_seconds else float("nan")
    return 1e3 * pair / steps, 1e3 * per_compute, 1e3 * folding, len(atoms) + ghosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 1000])
    parser.add_argument("--steps", type=int, default=5, help="MD steps LAMMPS runs per size")
    parser.add_argument("--repeats", type=int, default=5, help="direct calls per size")
    parser.add_argument("--model", default="default", help="'default', a .nequip.zip or a .ckpt")
    parser.add_argument("--routes", nargs="+", default=["folded", "exact"], choices=["folded", "exact"])
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from torchsim_distill import DistilledCalculator
    from torchsim_distill.jobs.relax import load_model
    from torchsim_distill.jobs.serve import KuspServer, load_served_model

    calc = DistilledCalculator(load_model(args.model, "cpu"))
    servers, model_seconds = {}, {}
    for route in args.routes:
        servers[route] = KuspServer(load_served_model(args.model, exact=route == "exact"), port=0)
        model_seconds[route] = timed(servers[route])
        threading.Thread(target=servers[route].serve_forever, daemon=True).start()
    rows = ["| atoms | route | cluster atoms per KIM call | direct DistilledCalculator | LAMMPS via KIM + KUSP "
            "| of which server compute | (of which folding) | of which transport | added per call | ratio |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    side_by_side = ["| atoms | direct DistilledCalculator | the folded route's compiled call on the cell | ratio |",
                    "|---:|---:|---:|---:|"]
    served = servers["folded"].model if "folded" in servers else None
    for n in args.sizes:
        atoms = cell(n)
        # direct calls before and after the LAMMPS runs, one median over both: a busy machine's
        # drift during the runs then weighs on both sides of the ratio (lammps_ms reads the
        # folded server's timings of its run before the calls after it add theirs)
        before, on_cell = direct_times(calc, atoms, args.repeats, served)
        results = {route: lammps_ms(server, atoms, args.steps, model_seconds[route]) for route, server in servers.items()}
        after, on_cell_after = direct_times(calc, atoms, args.repeats, served)
        direct = 1e3 * float(np.median(before + after))
        if served is not None:
            compiled = 1e3 * float(np.median(on_cell + on_cell_after))
            side_by_side.append(f"| {n} | {direct:.1f} ms | {compiled:.1f} ms | {compiled / direct:.2f}x |")
        for route, (via_kim, compute, folding, cluster) in results.items():
            assert servers[route].model.last_route == route, f"{route} server answered on {servers[route].model.last_route}"
            fold_cell = "—" if np.isnan(folding) else f"{folding:.1f} ms"
            rows.append(f"| {n} | {route} | {cluster} | {direct:.1f} ms | {via_kim:.1f} ms | {compute:.1f} ms | {fold_cell} | "
                        f"{via_kim - compute:.1f} ms | {via_kim - direct:.1f} ms | {via_kim / direct:.2f}x |")
            print(rows[-1], flush=True)
    for server in servers.values():
        server.close()
    table = "\n".join(rows)
    if served is not None:
        table += ("\n\nIn this process, interleaved (medians of the direct calls before and after the LAMMPS runs):\n\n"
                  + "\n".join(side_by_side))
    print(table)
    if args.out:
        Path(args.out).write_text(
            f"# KUSP overhead ({args.model}, one thread, {time.strftime('%Y-%m-%d')})\n\n"
            f"`{' '.join(['python', 'benchmarks/kusp_overhead.py'] + (argv if argv is not None else sys.argv[1:]))}`\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
