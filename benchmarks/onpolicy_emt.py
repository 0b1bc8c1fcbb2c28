"""On-policy rounds vs one-shot sampling at an equal labelling budget (EMT teacher, Cu–Au, CPU).

Two distillations of EMT into the same student, both with a committee of two:

- ``oneshot``: ``n_configs + rounds × budget`` frames sampled once, no rounds;
- ``onpolicy``: ``n_configs`` frames, then ``rounds`` on-policy rounds of at most ``budget``
  frames each (the student's own MD and relaxations, selected by its committee).

Then both final students are judged on the same data neither trained on: each run's
held-out split (whole seeds), and the on-policy run's round frames (the structures the
student's own simulations lead to; for the on-policy student they are measured *before*
it trained on them, from its run.json). Prints Markdown tables::

    .venv/bin/python benchmarks/onpolicy_emt.py --out benchmarks/out/onpolicy   # ~30 min on 2 cores
    .venv/bin/python benchmarks/onpolicy_emt.py --out /tmp/op --quick          # a few minutes

Runs resume (rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from ase.io import read, write

from torchsim_distill.distill.evaluation import compute_metrics, predict, reference_labels
from torchsim_distill.distill.run import DistillConfig, distill
from torchsim_distill.models.cu_au import phase, random_alloy
from torchsim_distill.models.student import student_calc


def seeds(path: Path) -> Path:
    """The pure metals and ordered phases (8 atoms) and seven random alloys (16 atoms): 12 seeds,
    enough to hold whole seeds out."""
    rng = np.random.default_rng(0)
    cells = [phase(name, (2, 1, 1)) for name in ("Cu", "Au", "Cu3Au", "CuAu", "CuAu3")]
    cells += [random_alloy(x, (2, 2, 1), rng) for x in (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, cells, format="extxyz")
    return path


def run(kind: str, out: Path, seeds_path: Path, args: argparse.Namespace) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    extra = args.rounds * args.budget
    config = DistillConfig(
        teacher="emt", structures=[str(seeds_path)], out=str(out / kind), size=args.size, r_max=4.5,
        n_configs=args.n_configs + (extra if kind == "oneshot" else 0), max_epochs=args.epochs, seed=0,
        committee=2, rounds={"rounds": args.rounds if kind == "onpolicy" else 0, "budget": args.budget,
                             "candidates": 3 * args.budget, "epochs": max(5, args.epochs // 2)},
    )
    t0 = time.perf_counter()
    result = distill(config, progress=False)
    return {"kind": kind, "seconds": time.perf_counter() - t0, "package": str(result.package)}


def errors(calc, frames) -> str:
    m = compute_metrics(reference_labels(frames), predict(calc, frames), frames)
    return f"{m.energy_mae:.2f} / {m.force_mae:.0f} / {m.stress_mae:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--n-configs", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="48 frames, 2 rounds of 12, 5 epochs")
    args = parser.parse_args()
    if args.quick:
        args.n_configs, args.budget, args.epochs = 48, 12, 5
    seeds_path = seeds(args.out / "seeds.xyz")
    with ProcessPoolExecutor(2) as pool:  # one run per core
        runs = list(pool.map(run, ["oneshot", "onpolicy"], [args.out] * 2, [seeds_path] * 2, [args] * 2))

    calcs = {r["kind"]: student_calc(r["package"]) for r in runs}
    onpolicy = args.out / "onpolicy"
    records = json.loads((onpolicy / "run.json").read_text())["stages"]["rounds"]["records"]
    sets = {f"held-out ({k}'s split)": read(args.out / k / "labels" / "test.xyz", index=":") for k in calcs}
    for rec in records:
        sets[f"round {rec['round']} frames"] = read(onpolicy / "labels" / f"round_{rec['round']}.xyz", index=":")

    n_labelled = {
        k: sum(len(read(p, index=":")) for p in (args.out / k / "labels").glob("*.xyz") if p.stem != "test")
        for k in calcs
    }
    print(f"EMT teacher, Cu–Au, {args.size} student, committee of 2; frames labelled for training and "
          f"validation: {n_labelled}; wall: " + ", ".join(f"{r['kind']} {r['seconds']:.0f} s" for r in runs))
    print("\nErrors vs EMT, energy meV/atom / forces meV/Å / stress GPa (lower is better):\n")
    print("| frames | n | one-shot student | on-policy student |")
    print("|---|---|---|---|")
    for name, frames in sets.items():
        print(f"| {name} | {len(frames)} | {errors(calcs['oneshot'], frames)} | {errors(calcs['onpolicy'], frames)} |")

    print("\nOn-policy rounds (the on-policy student's run.json):\n")
    print("| round | proposed | below / in / above trust | labelled | new frames before training: E / F | "
          "committee Spearman on new | held-out after: E / F / σ |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        b, a, c = r.get("new_frames_before") or {}, r.get("held_out_after") or {}, r.get("committee_on_new") or {}
        print(f"| {r['round']} | {r['proposed']} | {r['below_trust']} / {r['in_trust']} / {r['above_trust']} | "
              f"{r.get('labelled', 0)} | {b.get('energy_mae', float('nan')):.2f} / {b.get('force_mae', float('nan')):.0f} | "
              f"{c.get('spearman', float('nan')):.2f} | {a.get('energy_mae', float('nan')):.2f} / "
              f"{a.get('force_mae', float('nan')):.0f} / {a.get('stress_mae', float('nan')):.3f} |")

    for k in calcs:
        card = json.loads((args.out / k / "report" / "model_card.json").read_text())
        cal = card.get("committee", {}).get("calibration", {})
        acc = card.get("acceptance", {})
        print(f"\n{k}: committee on held-out: Spearman {cal.get('spearman')}, recall {cal.get('recall')}, "
              f"flagged {cal.get('n_flagged')}/{cal.get('n_frames')}; acceptance {acc.get('n_failures')} of "
              f"{len(acc.get('rows', []))} property gates failed; card {args.out / k / 'report' / 'model_card.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
