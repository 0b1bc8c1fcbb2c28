"""What one training step of each size preset costs on one CPU core, and so an epoch per 1000
frames (issue 23: the presets' documentation said "want a GPU" without a measurement).

A step is what nequip's trainer does per batch: forward with forces and stress (autograd),
the energy/forces/stress MSE, backward, an Adam update. Batches of 8 frames from the rebuild's
training labels (Cu–Au, 32–108 atoms, r_max 5 Å), the same batches for every contender,
interleaved, medians; one thread. nequip's data pipeline (neighbour lists, collation) is done
once outside the clock, as its data loader does it in the background of a real run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_cost.py --table benchmarks/results/training_cost.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from ase.io import read

from torchsim_distill.distill.training import SIZE_PRESETS
from torchsim_distill.utils.timing import interleaved, median

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "recipes" / "runs" / "cu_au_sevennet0_v2" / "labels" / "train.xyz"
TYPE_NAMES = ["Au", "Cu"]
R_MAX = 5.0
BATCH = 8


def batches(n_batches: int, dtype: torch.dtype) -> list[dict]:
    """``n_batches`` nequip batches of :data:`BATCH` labelled frames, neighbour lists built."""
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    frames = read(LABELS, index=f":{n_batches * BATCH}")
    mapper = ChemicalSpeciesToAtomTypeMapper(TYPE_NAMES, {t: t for t in TYPE_NAMES})
    neighbors = NeighborListTransform(r_max=R_MAX)
    out = []
    for b in range(n_batches):
        data = [neighbors(mapper(from_ase(a))) for a in frames[b * BATCH:(b + 1) * BATCH]]
        batch = AtomicDataDict.batched_from_list(data)
        out.append({k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in batch.items()})
    return out


def model(size: str, precision: str) -> torch.nn.Module:
    """A fresh NequIP student of the preset (the options :mod:`~torchsim_distill.distill.training`
    writes into nequip's config, with fixed data statistics)."""
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import global_state_initialized, set_global_state

    if not global_state_initialized():  # what nequip-train sets up before building a model
        set_global_state()
    preset = SIZE_PRESETS[size]
    return NequIPGNNModel(
        seed=0, model_dtype=precision, type_names=TYPE_NAMES, r_max=R_MAX, l_max=preset["l_max"], parity=True,
        num_layers=preset["num_layers"], num_features=preset["features"], radial_mlp_depth=1,
        radial_mlp_width=preset["mlp_width"], avg_num_neighbors=40.0, per_type_energy_shifts={"Au": -3.2, "Cu": -3.6},
        per_type_energy_scales={"Au": 0.3, "Cu": 0.3},
    )


def step_fn(net: torch.nn.Module, data: list[dict]):
    """One training step per call, cycling through ``data``."""
    from nequip.data import AtomicDataDict as K

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    state = {"k": 0}

    def step() -> None:
        batch = dict(data[state["k"] % len(data)])
        state["k"] += 1
        out = net(batch)
        loss = (torch.mean((out[K.FORCE_KEY] - batch[K.FORCE_KEY]) ** 2)
                + torch.mean((out[K.TOTAL_ENERGY_KEY] - batch[K.TOTAL_ENERGY_KEY]) ** 2)
                + torch.mean((out[K.STRESS_KEY] - batch[K.STRESS_KEY]) ** 2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium"])
    parser.add_argument("--precisions", nargs="+", default=["float64", "float32"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--table", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fns, params = {}, {}
    for precision in args.precisions:
        dtype = getattr(torch, precision)
        data = batches(4, dtype)
        for size in args.sizes:
            net = model(size, precision)
            params[size] = sum(p.numel() for p in net.parameters())
            fns[(size, precision)] = step_fn(net, data)
    times = interleaved(fns, reps=args.reps, warmup=2)
    lines = ["| preset | l_max, layers, features | parameters | precision | step (8 frames) | epoch per 1000 frames |",
             "|---|---|---:|---|---:|---:|"]
    for (size, precision), ts in times.items():
        p = SIZE_PRESETS[size]
        t = median(ts)
        lines.append(f"| {size} | {p['l_max']}, {p['num_layers']}, {p['features']} | {params[size]:,} | {precision} | "
                     f"{1e3 * t:.0f} ms | {t * 1000 / BATCH:.0f} s |")
    lines += ["", f"One CPU thread, batches of {BATCH} Cu–Au frames (32–108 atoms, r_max {R_MAX} Å) from the rebuild's "
              f"labels; forward with forces and stress, MSE, backward, Adam; medians of {args.reps} interleaved steps; "
              f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}. An epoch adds validation "
              "(a forward pass per frame) and nequip's logging."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.table:
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
