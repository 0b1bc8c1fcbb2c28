"""Float32 vs float64 students of the same size: accuracy against SevenNet-0, speed and NVE drift on one CPU thread.

Both students start from the shipped default student's weights (float64; the float32 one gets
them cast by :func:`~torchsim_distill.distill.training.model_cast_from`, so the two start as the
same function up to round-off) and are fine-tuned with the shipped recipe (``near``: lr 5e-4,
energy weight 10, stress weight 1000, batch 8, without the compressed and 0.2–0.25 Å rattled
frames) for the same number of epochs, side by side, one thread each. Then, in one process, one
thread:

- accuracy: the rebuild's 296 held-out frames (seeds never trained on) against SevenNet-0's labels,
  all of them and the near-equilibrium ones (nearest distance ≥ 2 Å, the gates' split); the
  acceptance suite (SevenNet-0's side read from the rebuild's cache);
- speed: one batched call (16 systems: 8 of 32 and 8 of 64 atoms) and NVE steps on that batch,
  the contenders interleaved, medians;
- drift: NVE, 10⁴ steps of 2 fs from 300 K, on two 32-atom cells (random CuAu, L1_2 Cu3Au), each
  student on states of its own dtype (so the float32 run integrates in float32 too).

Writes ``results.json`` in ``--out`` after each stage and the Markdown table to ``--table``;
rerunning resumes (training from ``last.ckpt``, finished stages from ``results.json``).
One fine-tuning epoch by default: what a shared 2-core VM allows in a session::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/precision.py --out benchmarks/runs/precision
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/precision.py --out /tmp/p --quick   # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ase.io import read, write

from torchsim_distill.compile import cached_compile_all, stored_check_report
from torchsim_distill.distill.acceptance import acceptance_suite
from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.evaluation import (
    Gates,
    compute_metrics,
    predict,
    reference_labels,
    split_distorted,
)
from torchsim_distill.distill.properties import energy_drift, run_md
from torchsim_distill.distill.sampling import read_seeds
from torchsim_distill.distill.training import ModelOptions, TrainingOptions, student_config, train_student
from torchsim_distill.models.cu_au import phase, random_alloy
from torchsim_distill.models.default import default_package
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.timing import interleaved, iqr, median

ROOT = Path(__file__).resolve().parents[1]
REBUILD = ROOT / "recipes" / "runs" / "cu_au_sevennet0_v2"
TYPE_NAMES = ["Au", "Cu"]
#: the shipped recipe's fine-tune (recipes/cu_au_sevennet0_v2.py, candidate ``near``)
EXCLUDED_KINDS = ("compress", "large_rattle")
RECIPE = dict(lr=5e-4, energy_weight=10.0, stress_weight=1000.0, batch_size=8, seed=0)
PRECISIONS = ("float64", "float32")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: speed contenders: (student precision, SimState dtype); drift runs the first two
CONTENDERS = [("float64", "float64"), ("float32", "float32"), ("float32", "float64")]


def labels(out: Path) -> dict[str, Path]:
    """The rebuild's train/val labels without the excluded kinds, as the shipped fine-tune saw them."""
    paths = {}
    for split in ("train", "val"):
        path = out / "labels" / f"{split}.xyz"
        if not path.exists():
            frames = [a for a in read(REBUILD / "labels" / f"{split}.xyz", index=":") if a.info["kind"] not in EXCLUDED_KINDS]
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, frames, format="extxyz")
        paths[split] = path
    return paths


def train_config(precision: str, epochs: int, files: dict[str, Path]) -> dict:
    """The fine-tune of the shipped student in ``precision`` (nequip-train's config)."""
    return student_config(
        [files["train"]], [files["val"]], type_names=TYPE_NAMES,
        model=ModelOptions(size="small", r_max=5.0, precision=precision),
        training=TrainingOptions(max_epochs=epochs, init_from=default_package(), **RECIPE),
    )




#: the held-out groups of the README's table: nearest distance ≥ 2 Å (the gates' split), of
#: those the near-equilibrium ones (without the excluded kinds), and the strongly distorted rest
GROUPS = {"bonded": "{n} frames, nearest ≥ 2 Å", "near": "{n} of them near equilibrium",
          "distorted": "{n} strongly distorted (nearest < 2 Å): forces"}


def accuracy(calc: DistilledTorchSimCalc, frames: list) -> dict[str, dict[str, float]]:
    """Energy (meV/atom), force (meV/Å) and stress (GPa) MAE against the teacher's labels, per group."""
    bonded, distorted = split_distorted(frames, Gates(distorted_force_mae=150.0, distorted_distance=2.0))
    near = [a for a in bonded if a.info["kind"] not in EXCLUDED_KINDS]
    out = {}
    for name, group in {"all": frames, "bonded": bonded, "near": near, "distorted": distorted}.items():
        m = compute_metrics(reference_labels(group), predict(calc, group), group)
        out[name] = {"n": len(group), "energy": m.energy_mae, "forces": m.force_mae, "stress": m.stress_mae}
    return out


def acceptance(pt2: Path) -> dict:
    """The acceptance suite on the rebuild's property structures, SevenNet-0's side from its cache."""
    run = DistillConfig.from_dict(json.loads((REBUILD / "run.json").read_text())["config"])  # flat or nested
    options = run.acceptance
    calc = DistilledTorchSimCalc.from_compiled_model(pt2, chemical_species_to_atom_type_map=True, skin=None)
    report = acceptance_suite(calc, "sevennet-0", read_seeds([str(REBUILD / "properties.xyz")]), options=options,
                              cache_dir=REBUILD / "acceptance", teacher_id="sevennet-0")
    if not report.teacher_cached:
        raise RuntimeError("SevenNet-0's acceptance side was not in the rebuild's cache: measured anew")
    return {"passed": len(report.rows) - len(report.failures), "rows": len(report.rows),
            "failed": [f"{r.property} {r.system}" for r in report.failures],
            "values": {f"{r.property} {r.system}": [r.teacher, r.student] for r in report.rows}}


def batch(seed: int = 0) -> list:
    """16 systems: 8 random Cu–Au cells of 32 atoms and 8 of 64, rattled."""
    rng = np.random.default_rng(seed)
    cells = [random_alloy(rng.uniform(0.1, 0.9), (2, 2, 2) if k < 8 else (4, 2, 2), rng) for k in range(16)]
    for atoms in cells:
        atoms.rattle(0.05, seed=int(rng.integers(2**31)))
    return cells


def speed(pt2: dict[str, Path], reps: int, md_steps: int, md_reps: int) -> dict[str, dict[str, float]]:
    """Seconds per batched call and per NVE step of each contender, interleaved."""
    import torch_sim as ts
    from torch_sim.units import MetalUnits

    cells = batch()
    calls, md = {}, {}
    for precision, state_dtype in CONTENDERS:
        name = f"{precision} student, {state_dtype} state"
        calc = DistilledTorchSimCalc.from_compiled_model(
            pt2[precision], chemical_species_to_atom_type_map=True, skin=0.5, dtype=DTYPES[state_dtype])
        state = ts.io.atoms_to_state(cells, calc.device, calc.dtype)
        calls[name] = lambda calc=calc, state=state: calc(state)
        kT = torch.tensor(300.0 * MetalUnits.temperature, dtype=calc.dtype)
        dt = torch.tensor(2.0 / 1000.0 * MetalUnits.time, dtype=calc.dtype)

        def nve(calc=calc, state=state, kT=kT, dt=dt) -> None:
            s = state.clone()
            s.rng = 0
            s = ts.nve_init(s, calc, kT=kT)
            for _ in range(md_steps):
                s = ts.nve_step(s, calc, dt=dt, kT=kT)

        md[name] = nve
    call_times = interleaved(calls, reps=reps, warmup=3)
    md_times = interleaved(md, reps=md_reps, warmup=1)
    n_atoms = sum(len(a) for a in cells)
    return {
        name: {"call_ms": 1e3 * median(call_times[name]), "call_iqr_ms": 1e3 * iqr(call_times[name]),
               "md_step_ms": 1e3 * median(md_times[name]) / (md_steps + 1),
               "md_atom_steps_per_s": n_atoms * (md_steps + 1) / median(md_times[name]), "n_atoms": n_atoms}
        for name in calls
    }


def drift(pt2: Path, dtype: torch.dtype, steps: int) -> dict:
    """NVE energy drift (meV/atom/ns) and the largest excursion of E_tot/N from its start (meV/atom)
    of the student ``pt2`` run on states of ``dtype`` (the integrator's arithmetic too)."""
    rng = np.random.default_rng(3)
    cells = [random_alloy(0.5, (2, 2, 2), rng), phase("Cu3Au", (2, 2, 2))]
    calc = DistilledTorchSimCalc.from_compiled_model(pt2, chemical_species_to_atom_type_map=True, skin=0.5, dtype=dtype)
    t0 = time.perf_counter()
    traj = run_md(calc, cells, ensemble="nve", temperature=300.0, timestep=2.0, steps=steps, stride=steps + 1, seed=0)
    excursion = np.abs(traj.total_energy - traj.total_energy[0]).max(axis=0)
    return {
        "drift_meV_atom_ns": [1e3 * float(d) for d in energy_drift(traj.times, traj.total_energy)],
        "max_excursion_meV_atom": [1e3 * float(e) for e in excursion],
        "seconds": time.perf_counter() - t0,
    }


def table(results: dict) -> str:
    """The Markdown table of ``results``, with the verdict on the issue's goal."""
    acc, lines = results["accuracy"], []
    lines += ["# Float32 vs float64 students (Cu–Au, SevenNet-0 teacher, CPU, one thread)", "",
              results["how"], "",
              "| vs SevenNet-0 (held-out) | " + " | ".join(acc) + " |", "|---" * (len(acc) + 1) + "|"]
    for group, label in GROUPS.items():
        n = next(iter(acc.values()))[group]["n"]
        cells = []
        for a in acc.values():
            m = a[group]
            cells.append(f"{m['forces']:.1f} meV/Å" if group == "distorted" else
                         f"{m['energy']:.2f} meV/atom, {m['forces']:.1f} meV/Å, {m['stress']:.3f} GPa")
        lines.append(f"| {label.format(n=n)} | " + " | ".join(cells) + " |")
    if "acceptance" in results:
        row = [f"{a['passed']}/{a['rows']}" for a in results["acceptance"].values()]
        lines.append("| acceptance gates passed | " + " | ".join(row) + (" | –" if len(row) < len(acc) else "") + " |")
        if len(row) == 2:
            a64, a32 = (results["acceptance"][p]["values"] for p in PRECISIONS)
            diffs = sorted((abs(a32[k][1] - v[1]), k, v[1], a32[k][1]) for k, v in a64.items()
                           if v[1] is not None and a32.get(k, [None, None])[1] is not None)
            _, key, x64, x32 = diffs[-1]
            same = results["acceptance"]["float32"]["failed"] == results["acceptance"]["float64"]["failed"]
            lines.append(f"| acceptance: largest difference of the {len(diffs)} property values | {key}: {x64:.4f} | {x32:.4f} "
                         f"({'the same gates failed' if same else 'different gates failed'}) |")
    ratio = {k: acc["float32"]["near"][k] / acc["float64"]["near"][k] for k in ("energy", "forces", "stress")}
    ratio_all = {k: acc["float32"]["bonded"][k] / acc["float64"]["bonded"][k] for k in ("energy", "forces", "stress")}
    lines += ["", "float32 ÷ float64 errors, near equilibrium: " + ", ".join(f"{k} {v:.5f}" for k, v in ratio.items())
              + "; nearest ≥ 2 Å: " + ", ".join(f"{k} {v:.5f}" for k, v in ratio_all.items()), ""]
    sp = results["speed"]
    ref = sp["float64 student, float64 state"]
    lines += ["| one CPU thread | batched call (16 systems, " + f"{ref['n_atoms']} atoms) | ÷ float64 | "
              "NVE step, same batch | atom-steps/s | ÷ float64 |",
              "|---|---|---|---|---|---|"]
    for name, s in sp.items():
        lines.append(f"| {name} | {s['call_ms']:.1f} ms (IQR {s['call_iqr_ms']:.1f}) | {ref['call_ms'] / s['call_ms']:.2f}× | "
                     f"{s['md_step_ms']:.1f} ms | {s['md_atom_steps_per_s']:,.0f} | {ref['md_step_ms'] / s['md_step_ms']:.2f}× |")
    if results.get("drift"):
        d = results["drift"]
        lines += ["", f"NVE, {results['drift_steps']} steps of 2 fs from 300 K, random CuAu and L1_2 Cu3Au (32 atoms each):", "",
                  "| contender | drift, meV/atom/ns (CuAu, Cu3Au) | max \\|E_tot/N − E_0/N\\|, meV/atom | wall time |", "|---|---|---|---|"]
        for name, r in d.items():
            lines.append(f"| {name} | " + ", ".join(f"{x:+.3f}" for x in r["drift_meV_atom_ns"]) + " | "
                         + ", ".join(f"{x:.3f}" for x in r["max_excursion_meV_atom"]) + f" | {r['seconds']:.0f} s |")
    fast = sp["float32 student, float32 state"]
    speedup = min(ref["call_ms"] / fast["call_ms"], ref["md_step_ms"] / fast["md_step_ms"])
    within = all(v <= 1.10 for v in ratio.values()) and all(v <= 1.10 for v in ratio_all.values())
    verdict = "meets" if speedup >= 1.5 and within else "does not meet"
    lines += ["", f"**Goal (≥ 1.5× faster, every error within 10 %): float32 {verdict} it** "
              f"(slower of call and MD speed-up {speedup:.2f}×; errors {'within' if within else 'not all within'} 10 %).", ""]
    lines += [results["machine"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "precision")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "results" / "precision.md")
    parser.add_argument("--epochs", type=int, default=1,
                        help="fine-tuning epochs of each student (an epoch is ~15 min on one thread of a loaded 2-core VM)")
    parser.add_argument("--reps", type=int, default=30, help="batched calls per contender")
    parser.add_argument("--md-steps", type=int, default=50)
    parser.add_argument("--md-reps", type=int, default=5)
    parser.add_argument("--drift-steps", type=int, default=10_000)
    parser.add_argument("--no-acceptance", action="store_true")
    parser.add_argument("--only", choices=PRECISIONS, help="train, compile, score and run the drift of this student only "
                        "(ahead of the other; speed is measured only when both run)")
    parser.add_argument("--quick", action="store_true", help="fewer reps, 200 drift steps, no acceptance")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.md_steps, args.md_reps, args.drift_steps, args.no_acceptance = 1, 5, 5, 2, 200, True
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}

    def save(stage: str) -> None:
        saved.write_text(json.dumps(results, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {stage} done", flush=True)

    files = labels(args.out)
    precisions = [args.only] if args.only else list(PRECISIONS)
    configs = {p: train_config(p, args.epochs, files) for p in precisions}
    with ThreadPoolExecutor(2) as pool:  # side by side: each nequip-train is its own process, one thread
        checkpoints = list(pool.map(lambda p: train_student(configs[p], args.out / f"train_{p}"), precisions))
    print(f"[{time.strftime('%H:%M:%S')}] trained", flush=True)
    pt2 = dict(zip(precisions, cached_compile_all(checkpoints, workers=2, device="cpu"), strict=True))
    for p, path in pt2.items():
        results.setdefault("compile_check", {})[p] = {
            k: stored_check_report(path)[k] for k in ("max_abs_energy_error", "max_abs_force_error", "energy_tol", "force_tol")}
    save("compile")
    test = read(REBUILD / "labels" / "test.xyz", index=":")
    for p, path in pt2.items():  # each student in its own dtype
        if p not in results.setdefault("accuracy", {}):
            calc = DistilledTorchSimCalc.from_compiled_model(path, chemical_species_to_atom_type_map=True, dtype=DTYPES[p])
            results["accuracy"][p] = accuracy(calc, test)
            save(f"accuracy {p}")
    if not args.only and "speed" not in results:
        results["speed"] = speed(pt2, args.reps, args.md_steps, args.md_reps)
        results["speed_load_avg"] = os.getloadavg()[0]
        save("speed")
        write_table(results, args)
    if results.get("drift_steps") != args.drift_steps:
        results["drift"], results["drift_steps"] = {}, args.drift_steps
    for p in precisions:
        name = f"{p} student, {p} state"
        if name not in results["drift"]:
            results["drift"][name] = drift(pt2[p], DTYPES[p], args.drift_steps)
            save(f"drift {name}")
    if args.only:
        return 0
    write_table(results, args)
    if not args.no_acceptance:
        results.setdefault("acceptance", {})
        for p, path in pt2.items():
            if p not in results["acceptance"]:
                results["acceptance"][p] = acceptance(path)
                save(f"acceptance {p}")
        write_table(results, args)
    return 0


def cpu_model() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def write_table(results: dict, args: argparse.Namespace) -> None:
    """Describe the run in ``results``, save them, and write (and print) the table."""
    results["how"] = (
        "Both students: the shipped default student (small NequIP, r_max 5 Å) fine-tuned "
        f"{args.epochs} epoch{'s' if args.epochs > 1 else ''} with its own "
        f"recipe (lr 5e-4, energy weight 10, stress weight 1000, batch 8, without compressed and large-rattle frames), "
        f"from its float64 weights (cast to float32 for the float32 student). "
        "Compiled (AOTInductor, CPU) and checked against the eager model: "
        + "; ".join(f"{p} max |ΔE| {c['max_abs_energy_error']:.1e} eV, |ΔF| {c['max_abs_force_error']:.1e} eV/Å "
                    f"(tol {c['energy_tol']:g}, {c['force_tol']:g})"
                    for p, c in results["compile_check"].items()) + ". Accuracy: held-out test frames with each student in its own dtype."
    )
    results["machine"] = (f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared with other jobs), load avg "
                          f"{results.get('speed_load_avg', float('nan')):.1f} after the speed runs; torch {torch.__version__}, "
                          f"threads {torch.get_num_threads()}; "
                          f"speed: medians of {args.reps} interleaved calls and {args.md_reps} interleaved NVE runs of {args.md_steps} steps; "
                          f"{time.strftime('%Y-%m-%d')}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
