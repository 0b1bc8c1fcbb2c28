"""The error-vs-speed front of the Cu–Au students: held-out errors against SevenNet-0 beside the
speed-up over SevenNet-0 on the same batched call, one CPU thread, so that a user can pick the
fastest student that meets the gates they need (issue 23).

Each contender is a nequip checkpoint or package (its size and precision are read from it). For
each one, in one process and one thread:

- errors on the rebuild's held-out frames (``recipes/runs/cu_au_sevennet0_v2/labels/test.xyz``:
  seeds no candidate trained on), split as the gates split them: every frame with its nearest
  distance ≥ 2 Å (the gated set), the near-equilibrium ones among them (without the compressed
  cells and the 0.2–0.25 Å rattles), and the strongly distorted ones (nearest < 2 Å);
- optionally (``--acceptance``) the property gates passed, by the acceptance suite with
  SevenNet-0's side read from the rebuild's cache (``acceptance/``);
- speed: one batched call on the same 16 systems (8 of 32 and 8 of 64 atoms), every contender
  and SevenNet-0 interleaved (:func:`~torchsim_distill.utils.timing.interleaved`), medians.

Results go to ``--out/results.json`` after each contender (a rerun resumes), the table to
``--table`` and the plot (near-equilibrium force MAE against speed-up) to ``--plot``::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/error_vs_speed.py \\
        --contender small-f64=torchsim_distill/models/cu_au_sevennet0/student.nequip.zip \\
        --contender medium-f32=recipes/runs/cu_au_sevennet0_v2/train_medium/best.ckpt \\
        --out benchmarks/runs/front --table benchmarks/results/error_vs_speed.md \\
        --plot benchmarks/results/error_vs_speed.png
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch_sim as ts
from ase.io import read

from torchsim_distill.compile import cached_compile, load_eager_model
from torchsim_distill.distill.acceptance import AcceptanceOptions, acceptance_suite
from torchsim_distill.distill.evaluation import Gates, compute_metrics, predict, reference_labels, split_distorted
from torchsim_distill.distill.sampling import read_seeds
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.cu_au import phase, random_alloy
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.timing import interleaved, median, pinned_threads

ROOT = Path(__file__).resolve().parents[1]
REBUILD = ROOT / "recipes" / "runs" / "cu_au_sevennet0_v2"
#: the rebuild's gates (recipes/cu_au_sevennet0_v2.py)
GATES = Gates(energy_mae=3.0, force_mae=30.0, stress_mae=0.05, min_speedup=20.0,
              distorted_force_mae=150.0, distorted_distance=2.0)
#: kinds left out of "near equilibrium" (as the README's table does)
FAR_KINDS = ("compress", "large_rattle")


def speed_batch(seed: int = 0) -> list:
    """16 periodic cells: 8 of 32 atoms and 8 of 64 (pure, ordered and random, rattled)."""
    rng = np.random.default_rng(seed)
    cells = []
    for k in range(8):
        small = phase(("Cu", "Au", "Cu3Au", "CuAu")[k % 4], (2, 2, 2)) if k < 4 else random_alloy(0.5, (2, 2, 2), rng)
        large = random_alloy(0.25 + 0.5 * (k % 2), (4, 2, 2), rng)
        for atoms in (small, large):
            atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
            cells.append(atoms)
    return cells


def describe(path: Path) -> dict:
    """Size-relevant facts of a nequip checkpoint or package: dtype, parameters."""
    from nequip.nn.graph_model import MODEL_DTYPE_KEY

    model = load_eager_model(path)
    return {"precision": str(model.metadata.get(MODEL_DTYPE_KEY, "float64")),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def errors(calc: DistilledTorchSimCalc) -> dict:
    """meV/atom, meV/Å, GPa on the held-out frames, by group."""
    test = read(REBUILD / "labels" / "test.xyz", index=":")
    gated, distorted = split_distorted(test, GATES)
    near = [a for a in gated if a.info.get("kind") not in FAR_KINDS]
    out = {}
    for name, frames in (("nearest >= 2 A", gated), ("near equilibrium", near), ("strongly distorted", distorted)):
        m = compute_metrics(reference_labels(frames), predict(calc, frames), frames)
        out[name] = {"n": len(frames), "energy": m.energy_mae, "forces": m.force_mae, "stress": m.stress_mae}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", action="append", required=True, metavar="NAME=PATH",
                        help="a student checkpoint or package; repeat for each contender")
    parser.add_argument("--out", type=Path, required=True, help="folder of results.json (resumes)")
    parser.add_argument("--table", type=Path, help="Markdown table to write")
    parser.add_argument("--plot", type=Path, help="PNG of the front to write")
    parser.add_argument("--acceptance", action="store_true",
                        help="also count the property gates passed (the acceptance suite; minutes per contender)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per contender (SevenNet-0 takes seconds each)")
    args = parser.parse_args(argv)
    contenders = dict(item.split("=", 1) for item in args.contender)
    for name, path in contenders.items():
        if not Path(path).is_file():
            parser.error(f"contender {name}: {path} does not exist (a nequip checkpoint or .nequip.zip)")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    torch.set_num_threads(1)
    calcs = {}
    for name, path in contenders.items():
        compiled = cached_compile(path, device="cpu", target="batch")
        calcs[name] = DistilledTorchSimCalc.from_compiled_model(compiled, chemical_species_to_atom_type_map=True)
        entry = results.setdefault(name, {"source": str(path)})
        if "errors" not in entry:
            entry.update(describe(Path(path)))
            entry["errors"] = errors(calcs[name])
        if args.acceptance and "gates" not in entry:
            entry["gates"] = _acceptance(calcs[name])
        results_path.write_text(json.dumps(results, indent=1))
    # speed: every contender and the teacher on one state, interleaved, one thread
    cells = speed_batch()
    teacher = load_teacher("sevennet-0")
    state = ts.io.atoms_to_state(cells, "cpu", torch.float64)
    fns = {name: (lambda c=calc: c(state)) for name, calc in calcs.items()}
    fns["SevenNet-0"] = lambda: teacher(state)
    with pinned_threads(1):
        times = interleaved(fns, reps=args.reps, warmup=1)
    t_teacher = median(times["SevenNet-0"])
    for name in calcs:
        results[name]["speed"] = {"t_call_s": median(times[name]), "t_teacher_s": t_teacher,
                                  "speedup": t_teacher / median(times[name]),
                                  "n_systems": len(cells), "n_atoms": int(state.n_atoms)}
    results["_machine"] = {"cpu": platform.processor() or platform.machine(), "threads": 1,
                           "date": time.strftime("%Y-%m-%d"), "reps": args.reps}
    results_path.write_text(json.dumps(results, indent=1))
    if args.table:
        args.table.write_text(table(results))
    if args.plot:
        plot(results, args.plot)
    print(table(results))
    return 0


def _acceptance(calc: DistilledTorchSimCalc) -> dict:
    """Property gates passed (SevenNet-0's side read from the rebuild's cache, as ``score`` does)."""
    options = AcceptanceOptions(hot_factor=1.0)  # the recipe's acceptance options
    report = acceptance_suite(calc, "sevennet-0", read_seeds([str(REBUILD / "properties.xyz")]), options=options,
                              cache_dir=REBUILD / "acceptance", teacher_id="sevennet-0")
    return {"passed": len(report.rows) - len(report.failures), "total": len(report.rows),
            "failures": [str(f) for f in report.failures]}


def table(results: dict) -> str:
    """The front as Markdown: one row per contender."""
    lines = [
        "| student | precision | parameters | nearest ≥ 2 Å: E meV/atom, F meV/Å, S GPa | near equilibrium | "
        "strongly distorted: F meV/Å | property gates | one batched call | vs SevenNet-0 |",
        "|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        e = r["errors"]
        fmt = lambda g: f"{e[g]['energy']:.2f}, {e[g]['forces']:.1f}, {e[g]['stress']:.3f}"  # noqa: E731
        gates = f"{r['gates']['passed']}/{r['gates']['total']}" if "gates" in r else "–"
        speed = r.get("speed", {})
        lines.append(
            f"| {name} | {r['precision']} | {r['parameters']:,} | {fmt('nearest >= 2 A')} | {fmt('near equilibrium')} | "
            f"{e['strongly distorted']['forces']:.0f} | {gates} | {1e3 * speed.get('t_call_s', float('nan')):.1f} ms | "
            f"{speed.get('speedup', float('nan')):.0f}× |"
        )
    machine = results.get("_machine", {})
    first = next((r for n, r in results.items() if not n.startswith("_") and "speed" in r), None)
    if first:
        lines.append("")
        lines.append(f"Speed: one call on {first['speed']['n_systems']} systems ({first['speed']['n_atoms']} atoms), "
                     f"SevenNet-0 {first['speed']['t_teacher_s']:.1f} s per call; medians of {machine.get('reps')} "
                     f"interleaved calls, one thread, {machine.get('cpu')}, {machine.get('date')}. "
                     "Gates: 3 meV/atom, 30 meV/Å, 0.05 GPa on nearest ≥ 2 Å; 150 meV/Å distorted; ≥ 20× SevenNet-0.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Near-equilibrium force MAE against speed-up over SevenNet-0, one point per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in results.items():
        if name.startswith("_") or "speed" not in r:
            continue
        x, y = r["speed"]["speedup"], r["errors"]["near equilibrium"]["forces"]
        ax.scatter(x, y, marker="o" if r["precision"] == "float32" else "s", s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(GATES.force_mae, color="grey", ls="--", lw=0.8)
    ax.axvline(GATES.min_speedup, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over SevenNet-0 (one batched call, one CPU thread)")
    ax.set_ylabel("near-equilibrium force MAE (meV/Å)")
    ax.set_title("Cu–Au students: error vs speed (○ float32, □ float64)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
