"""How much DistilledTorchSimCalc adds to the bare compiled model, and how it compares to nequip's calculator.

One compiled student (``.nequip.pt2``, ``--target batch``) is called three ways on
the same Cu–Au states:

* **raw**: ``artifact.model(inputs)`` on inputs prepared once (the floor: no
  neighbor list, no casting, no output handling);
* **Distilled**: ``DistilledTorchSimCalc(state)``, with ``skin=None`` (neighbor list
  rebuilt every call) and ``skin=0.5`` Å (identical positions, so the cached list is
  only re-pruned);
* **NequIP**: ``nequip.integrations.torchsim.NequIPTorchSimCalc`` with the
  ``alchemiops`` neighbor list (what a user would otherwise run).

It reports, per state, the medians of interleaved repetitions (warm-up excluded),
Distilled ÷ raw (goal <= 1.10), NequIP ÷ Distilled per call (goal >= 1.0), the share
of a Distilled call spent in the neighbor list, and NequIP ÷ Distilled over a
``ts.integrate`` NVE run with ``skin=0.5`` (goal >= 1.1). Everything runs on one CPU
thread, so results do not depend on the core count; other processes still slow it
(shared caches, SMT siblings), so run it on an idle machine and read the min column
and IQR/2 before trusting a ratio near its goal.

Usage::

    .venv/bin/python benchmarks/calc_overhead.py --smoke           # ~2 min on a cold cache
    .venv/bin/python benchmarks/calc_overhead.py --out benchmarks/calc_overhead_cpu.md
    .venv/bin/python benchmarks/calc_overhead.py --model student.nequip.pt2  # your CPU --target batch model
"""

from __future__ import annotations

import os

# pin threads before torch (and its OpenMP runtime) is imported: later calls cannot shrink the pool
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch_sim as ts  # noqa: E402

from torchsim_distill import DistilledTorchSimCalc, load_artifact  # noqa: E402
from torchsim_distill.bench import (  # noqa: E402
    CLOCKS,
    Clock,
    cu_au_cells,
    interleaved,
    iqr,
    machine_info,
    median,
    pinned_threads,
)
from torchsim_distill.bench.toy import toy_student  # noqa: E402
from torchsim_distill.compile import cached_compile  # noqa: E402

SKIN = 0.5  # Å, the skin used for the skin runs and for MD
GOAL_OVERHEAD = 1.10  # Distilled ÷ raw, at most
GOAL_CALL = 1.0  # NequIP ÷ Distilled per call, at least
GOAL_MD = 1.1  # NequIP ÷ Distilled over an NVE run, at least


@dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one benchmark mode."""

    student_size: str
    batch_systems: int
    batch_atoms: int  # atoms per system, 4·a·b·c (the 4-atom cubic fcc cell repeated)
    single_atoms: int
    warmup: int
    reps: int
    md_steps: int
    md_reps: int


FULL = Plan("small", 16, 64, 1000, warmup=3, reps=30, md_steps=200, md_reps=5)  # 2×2×4 and 5×5×10 cells
SMOKE = Plan("tiny", 2, 32, 108, warmup=1, reps=5, md_steps=10, md_reps=1)  # 2×2×2 and 3×3×3 cells


# -- inputs ---------------------------------------------------------------------


def build_states(plan: Plan) -> dict[str, ts.SimState]:
    """The two shapes that matter: many small systems per call, and one large one.

    Random fcc Cu–Au alloys near their Vegard lattice constant, lightly rattled: the
    composition range the toy student was trained on, so neighbor counts (and hence
    model cost) are what a real run would see.
    """
    batch = cu_au_cells(plan.batch_systems, plan.batch_atoms, seed=1)
    single = cu_au_cells(1, plan.single_atoms, seed=2)
    to_state = lambda atoms: ts.io.atoms_to_state(atoms, device=torch.device("cpu"), dtype=torch.float64)  # noqa: E731
    return {
        f"{len(batch)} × {len(batch[0])} atoms": to_state(batch),
        f"1 × {len(single[0])} atoms": to_state(single),
    }


def student_model(args: argparse.Namespace, plan: Plan) -> Path:
    """The ``.pt2`` to benchmark: ``--model`` as given, else the cached toy student."""
    if args.model is not None:
        return Path(args.model)
    ckpt = toy_student(size=args.size or plan.student_size, n_train=40, max_epochs=10)
    return cached_compile(ckpt, device="cpu")


# -- timing (clocks, interleaving, medians: torchsim_distill.bench) -----------------


class TimedNeighborList:
    """Stands in for a calc's neighbor list and records how long each call takes.

    Timing the builder inside real calls (rather than separately) measures exactly
    the share of a calc call it accounts for, cache hits and pruning included.
    """

    def __init__(self, inner: Callable[..., tuple[torch.Tensor, torch.Tensor]], clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.samples: list[float] = []

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = self.clock()
        out = self.inner(*args)
        self.samples.append(self.clock() - t0)
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def spread(xs: list[float]) -> str:
    """Half the interquartile range relative to the median: how far to trust a median."""
    if len(xs) < 4:
        return "–"
    return f"±{50 * iqr(xs) / median(xs):.1f}%"


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio(num: list[float], den: list[float]) -> tuple[float, str]:
    """Median ratio (the goal's measure) and, in brackets, the ratio of minima.

    On a shared machine interference only ever adds time, so the minima show what
    the code costs when it runs undisturbed; a gap between the two means noise.
    """
    r = median(num) / median(den)
    return r, f"{r:.3f} [min {min(num) / min(den):.3f}]"


# -- the benchmark ----------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``samples`` (seconds) is empty for derived lines."""

    state: str
    what: str
    samples: list[float] = field(default_factory=list)
    ratio: str = ""
    goal: str = ""


def verdict(value: float, goal: float, at_most: bool) -> str:
    ok = value <= goal if at_most else value >= goal
    return f"{'≤' if at_most else '≥'} {goal:g} {'✓' if ok else '✗'}"


def bench_calls(name: str, state: ts.SimState, pt2: Path, plan: Plan, nequip_cls: type, clock: Clock) -> list[Row]:
    """Per-call times of raw, Distilled (both skins) and NequIP on one state, interleaved."""
    artifact = load_artifact(pt2, device="cpu", target="batch")
    calcs = {
        skin: DistilledTorchSimCalc(artifact, chemical_species_to_atom_type_map=True, skin=skin)
        for skin in (None, SKIN)
    }
    nl_timers = {}
    for skin, calc in calcs.items():
        nl_timers[skin] = calc.neighbor_list = TimedNeighborList(calc.neighbor_list, clock)
    nequip = nequip_cls.from_compiled_model(
        str(pt2), device="cpu", chemical_species_to_atom_type_map=True, neighborlist_backend="alchemiops"
    )
    inputs = calcs[None]._prepare(
        state.positions, state.atomic_numbers, state.row_vector_cell, state.system_idx, state.pbc
    )
    raw_args = [inputs[k] for k in artifact.input_keys]

    def raw() -> None:
        with torch.no_grad():
            artifact.model(raw_args)

    check_agreement(name, calcs[None](state), nequip(state))
    times = interleaved(
        {
            "raw": raw,
            "skin=None": lambda: calcs[None](state),
            f"skin={SKIN}": lambda: calcs[SKIN](state),
            "nequip": lambda: nequip(state),
        },
        plan.reps,
        plan.warmup,
        clock,
    )
    rows = [Row(name, "raw compiled forward", times["raw"])]
    for skin in (None, SKIN):
        key = f"skin={skin}"
        r, text = ratio(times[key], times["raw"])
        goal = verdict(r, GOAL_OVERHEAD, at_most=True)
        rows.append(Row(name, f"Distilled, {key}", times[key], f"{text} ÷ raw", goal))
    for skin in (None, SKIN):
        nl = nl_timers[skin].samples[-plan.reps :]  # one neighbor-list call per timed calc call
        share = 100 * median(nl) / median(times[f"skin={skin}"])
        rows.append(Row(name, f"  neighbor list inside Distilled, skin={skin}", nl, f"{share:.1f}% of call"))
    r, text = ratio(times["nequip"], times["skin=None"])
    rows.append(
        Row(
            name,
            "NequIPTorchSimCalc (alchemiops)",
            times["nequip"],
            f"{text} ÷ Distilled skin=None",
            verdict(r, GOAL_CALL, at_most=False),
        )
    )
    rows.append(Row(name, "", [], f"{ratio(times['nequip'], times[f'skin={SKIN}'])[1]} ÷ Distilled skin={SKIN}"))
    return rows


def check_agreement(name: str, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Refuse to time two calculators that do not compute the same thing."""
    de = float((ours["energy"] - theirs["energy"]).abs().max())
    df = float((ours["forces"] - theirs["forces"]).abs().max())
    ds = float((ours["stress"] - theirs["stress"]).abs().max())
    print(f"[{name}] Distilled vs NequIP: max |dE| {de:.1e} eV, |dF| {df:.1e} eV/Å, |dσ| {ds:.1e} eV/Å³", flush=True)
    if de > 1e-6 or df > 1e-6:
        raise SystemExit(f"[{name}] the calculators disagree; timings would be meaningless")


def bench_md(name: str, state: ts.SimState, pt2: Path, plan: Plan, nequip_cls: type, clock: Clock) -> list[Row]:
    """Time of ``ts.integrate`` NVE runs with each calculator, same seed, interleaved.

    Distilled without a skin runs too: it shows what the skin itself buys in MD.
    """
    calcs: dict[str, torch.nn.Module] = {
        "nequip": nequip_cls.from_compiled_model(
            str(pt2), device="cpu", chemical_species_to_atom_type_map=True, neighborlist_backend="alchemiops"
        ),
    }
    for skin in (SKIN, None):
        calcs[f"skin={skin}"] = DistilledTorchSimCalc.from_compiled_model(
            pt2, chemical_species_to_atom_type_map=True, skin=skin
        )
    builds: dict[str, list[int]] = {key: [] for key in calcs}

    def md(key: str, n_steps: int) -> Callable[[], object]:
        calc = calcs[key]
        nl = getattr(calc, "neighbor_list", None)

        def run() -> object:
            start = state.clone()
            start.rng = 0  # same initial momenta for every calculator
            before = nl.n_builds if nl is not None else 0
            out = ts.integrate(
                system=start, model=calc, integrator=ts.Integrator.nve, n_steps=n_steps, temperature=300, timestep=0.002
            )
            builds[key].append(nl.n_builds - before if nl is not None else n_steps + 1)
            return out

        return run

    for key in calcs:  # warm-up: a few steps each, so first-call allocations are not timed
        md(key, 2)()
    times = interleaved({key: md(key, plan.md_steps) for key in calcs}, plan.md_reps, 0, clock)
    n = plan.md_steps
    rows = [
        Row(
            name,
            f"NVE {n} steps, NequIPTorchSimCalc",
            times["nequip"],
            f"{1e3 * median(times['nequip']) / n:.2f} ms/step",
        )
    ]
    for key in (f"skin={SKIN}", "skin=None"):
        r, text = ratio(times["nequip"], times[key])
        rows.append(
            Row(
                name,
                f"NVE {n} steps, Distilled {key}",
                times[key],
                f"NequIP ÷ this: {text}; {median(builds[key][1:]):.0f} NL builds / {n + 1} calls",
                verdict(r, GOAL_MD, at_most=False) if key == f"skin={SKIN}" else "",
            )
        )
    return rows


# -- report -----------------------------------------------------------------------------


def machine_line() -> str:
    """Enough about the machine to know whether two tables are comparable."""
    m = machine_info("cpu")
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"Machine: {m['cpu_model']} ({m['cpu_count']} cores{load}); torch {m['torch_version']}, "
        f"torch-sim {m['torch_sim_version']}, nequip {m['nequip_version']}, "
        f"nvalchemiops {m['nvalchemiops_version']}; torch threads {m['torch_threads']}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; python {m['python_version']}"
    )


def markdown(rows: list[Row]) -> str:
    """The table: medians decide the goals; minima and IQR/2 say how noisy they were."""
    lines = [
        "| state | measurement | median | min | IQR/2 | ratio [of minima] | goal (on medians) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        med, low, noise = (ms(median(r.samples)), ms(min(r.samples)), spread(r.samples)) if r.samples else ("", "", "")
        lines.append(f"| {r.state} | {r.what} | {med} | {low} | {noise} | {r.ratio} | {r.goal} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few repetitions (about 2 minutes)")
    parser.add_argument("--size", help="toy student size preset (default: small; tiny with --smoke)")
    parser.add_argument("--model", help="benchmark this .nequip.pt2 (--target batch, cpu) instead of the toy student")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="wall time, or this thread's CPU time (shared machines)"
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    with pinned_threads(1):  # OMP_NUM_THREADS above already did; this also covers AOTInductor's kernels
        warnings.filterwarnings("ignore", category=FutureWarning)
        from nequip.integrations.torchsim import NequIPTorchSimCalc

        t_start = time.perf_counter()
        pt2 = student_model(args, plan)
        t_model = time.perf_counter() - t_start
        print(f"model: {pt2} (ready in {t_model:.0f} s)", flush=True)
        states = build_states(plan)
        rows: list[Row] = []
        for name, state in states.items():
            rows += bench_calls(name, state, pt2, plan, NequIPTorchSimCalc, CLOCKS[args.clock])
            print(f"[{name}] per-call timings done", flush=True)
            rows += bench_md(name, state, pt2, plan, NequIPTorchSimCalc, CLOCKS[args.clock])
            print(f"[{name}] MD timings done", flush=True)

        mode = "smoke" if args.smoke else "full"
        table = markdown(rows)
        footer = (
            f"{machine_line()}\n\nMode {mode}, {args.clock} clock: medians of {plan.reps} interleaved calls "
            f"after {plan.warmup} warm-up rounds; MD medians of {plan.md_reps} interleaved runs. Model {pt2.name} "
            f"({'--model' if args.model else f'toy student size {args.size or plan.student_size}'}). "
            f"Total {time.perf_counter() - t_start:.0f} s (model ready in {t_model:.0f} s)."
        )
        print("\n" + table + "\n\n" + footer)
        if args.out:
            Path(args.out).write_text(f"# calc_overhead ({mode})\n\n{table}\n\n{footer}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
