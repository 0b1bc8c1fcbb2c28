"""Screening throughput on a local Ray cluster: 1 vs 2 CPU actors, side by side.

Relaxes the demo's Cu–Au structures (32 and 108 atoms, strained and rattled) with the
shipped default student through ``relax_structures_on_ray(..., ray="local")``, with 1 and with
2 actors (one core and one torch thread each), and once in a single process without Ray,
interleaved (single, 1 actor, 2 actors, single, ...). Prints structures/min (medians of
the repeats; the relaxation only: the cluster and the actors' model loading are timed
apart) and the 2 ÷ 1 ratio, whose ideal on 2 free cores is 2::

    OMP_NUM_THREADS=1 python benchmarks/ray_throughput.py                       # 48 structures, 3 repeats
    OMP_NUM_THREADS=1 python benchmarks/ray_throughput.py --n 16 --repeats 1    # smoke
    OMP_NUM_THREADS=1 python benchmarks/ray_throughput.py --out benchmarks/results/ray_throughput.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _start_cluster(num_cpus: int) -> float:
    """A local cluster of ``num_cpus`` CPUs; seconds it took to start."""
    import ray

    saved = os.environ.get("PYTHONPATH")
    if importlib.util.find_spec("rfc3987_syntax") is not None:
        # as in tests/test_distributed.py: an optional import of jsonschema that costs each of
        # Ray's processes ~10 s of CPU (jupyterlab installs it) and can run out Ray's start-up
        # window on a loaded 2-core machine; Ray does not need it
        stub = Path(__file__).resolve().parents[1] / "tests" / "ray_env"
        os.environ["PYTHONPATH"] = os.pathsep.join([str(stub), saved or ""])
    t0 = time.perf_counter()
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="structures (the demo's)")
    parser.add_argument("--shard-size", type=int, default=6)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()

    import ray

    from torchsim_distill.jobs.demo import demo_structures
    from torchsim_distill.jobs.distributed import relax_structures_on_ray
    from torchsim_distill.jobs.relax import relax_structures

    torch.set_num_threads(1)
    structures = demo_structures(args.n)
    startup = _start_cluster(2)
    options = dict(max_steps=args.max_steps, progress=False)
    runs = {"single process, no Ray": {}, "Ray, 1 actor": {"ray": "local", "n_actors": 1},
            "Ray, 2 actors": {"ray": "local", "n_actors": 2}}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    warmups: dict[str, list[float]] = {name: [] for name in runs}
    loads: dict[str, list[float]] = {name: [] for name in runs}
    energies: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, extra in runs.items():
                relax = relax_structures_on_ray if extra else relax_structures
                out = Path(tmp) / f"{repeat}-{extra.get('n_actors', 0)}"
                summary = relax(structures, args.model, out, **options, **extra, **({"shard_size": args.shard_size} if extra else {}))
                rates[name].append(summary.structures_per_min)
                warmups[name].append(summary.warmup_time)
                loads[name].append(os.getloadavg()[0])  # 1-min load: other processes on the cores
                energies[name] = [r.energy for r in summary.structures]
                print(f"repeat {repeat}: {name}: {summary.structures_per_min:.1f} structures/min "
                      f"(+{summary.warmup_time:.1f} s start-up)", flush=True)
    ray.shutdown()

    median = {name: statistics.median(values) for name, values in rates.items()}
    worst = max(abs(a - b) for name in runs for a, b in zip(energies[name], energies["single process, no Ray"], strict=True))
    lines = [
        f"# Screening on a local Ray cluster: {args.n} demo structures (32 and 108 atoms), model {args.model}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average before "
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, Ray {ray.__version__}; one torch thread per actor "
        f"and in the single process (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}). Shards of "
        f"{args.shard_size} structures, FIRE up to {args.max_steps} steps; medians of {args.repeats} interleaved repeats. "
        f"Cluster start {startup:.1f} s.",
        "",
        "| run | structures/min (median) | each repeat | actors' start-up, s (median) | load average after each |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in runs:
        lines.append(f"| {name} | {median[name]:.1f} | {', '.join(f'{r:.1f}' for r in rates[name])} | "
                     f"{statistics.median(warmups[name]):.1f} | {', '.join(f'{x:.1f}' for x in loads[name])} |")
    lines += [
        "",
        f"**2 actors ÷ 1 actor: {median['Ray, 2 actors'] / median['Ray, 1 actor']:.2f}×** (ideal on two free cores: 2); "
        f"1 actor ÷ single process: {median['Ray, 1 actor'] / median['single process, no Ray']:.2f}×.",
        f"Largest energy difference from the single process over all structures: {worst:.1e} eV.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
