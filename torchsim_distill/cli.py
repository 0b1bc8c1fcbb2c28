"""The ``torchsim-distill`` command: a thin layer over the package's functions.

    torchsim-distill compile best.ckpt student.nequip.pt2 --device cpu --target batch
    torchsim-distill evaluate student.nequip.pt2 structures.xyz
    torchsim-distill demo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _cmd_compile(args: argparse.Namespace) -> int:
    from .compile import CompileError, cached_compile, compile_model

    configs = dict(item.split("=", 1) for item in args.inductor_configs)
    opts = dict(tf32=args.tf32, constant_fold=args.constant_fold, inductor_configs=configs or None)
    out = Path(args.output)
    try:
        if args.no_cache:
            compile_model(args.source, out, device=args.device, target=args.target, **opts)
        else:
            import shutil

            cached = cached_compile(args.source, device=args.device, target=args.target, **opts)
            if not out.name.endswith(".nequip.pt2"):
                raise ValueError(f"output must end with '.nequip.pt2', got {out.name!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, out)
    except (CompileError, FileNotFoundError, ValueError) as err:
        print(f"torchsim-distill compile: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate every structure in the files in one batched call; print a table."""
    import torch
    import torch_sim as ts
    from ase.io import read

    from .calculator import DistilledTorchSimCalc

    try:
        atoms = [a for f in args.structures for a in read(f, index=":")]
    except Exception as err:  # ASE raises many kinds for unreadable files
        print(f"torchsim-distill evaluate: error: cannot read structures: {err}", file=sys.stderr)
        return 1
    if not atoms:
        print("torchsim-distill evaluate: error: no structures in the input", file=sys.stderr)
        return 1
    calc = DistilledTorchSimCalc.from_compiled_model(args.model, device=args.device, chemical_species_to_atom_type_map=True)
    state = ts.io.atoms_to_state(atoms, calc.device, torch.float64)
    calc(state)  # warm-up (Warp kernels, allocator)
    t0 = time.perf_counter()
    out = calc(state)
    dt = time.perf_counter() - t0
    print(f"{'id':>4} {'formula':>12} {'n_atoms':>7} {'energy/eV':>14} {'fmax/(eV/A)':>12}")
    for k, a in enumerate(atoms):
        f = out["forces"][state.system_idx == k]
        print(f"{k:>4} {a.get_chemical_formula():>12} {len(a):>7} {out['energy'][k].item():>14.6f} {f.norm(dim=1).max().item():>12.4f}")
    print(f"{len(atoms)} systems, {state.n_atoms} atoms in one call: {dt * 1e3:.1f} ms")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(n_structures=args.n_structures, device=args.device, relax_steps=args.relax_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchsim-distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a nequip checkpoint/package to an AOTInductor .nequip.pt2")
    p.add_argument("source", help="nequip checkpoint (.ckpt) or package (.nequip.zip)")
    p.add_argument("output", help="output file, ending with .nequip.pt2")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--target", default="batch", choices=["batch", "ase"])
    p.add_argument("--tf32", action="store_true", help="allow TF32 (CUDA; checked with looser tolerances)")
    p.add_argument("--constant-fold", action="store_true", help="AOTInductor constant folding")
    p.add_argument("--inductor-configs", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-cache", action="store_true", help="always recompile instead of reusing the cache")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("evaluate", help="evaluate structures with a compiled student in one batched call")
    p.add_argument("model", help="a .nequip.pt2 compiled with --target batch")
    p.add_argument("structures", nargs="+", help="files ASE can read")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="train/compile a Cu-Au student and evaluate and relax ~100 structures in batch")
    p.add_argument("--n-structures", type=int, default=100)
    p.add_argument("--relax-steps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
