"""The ``torchsim-distill`` command: a thin layer over the package's functions.

    torchsim-distill models                      # the students known by name
    torchsim-distill models show default         # one student's model card
    torchsim-distill compile best.ckpt student.nequip.pt2 --device cpu --target batch
    torchsim-distill evaluate student.nequip.pt2 structures.xyz
    torchsim-distill distill --teacher emt --structures seeds.xyz --out runs/cuau
    torchsim-distill relax structures.xyz --model student.nequip.pt2 --out relaxed/
    torchsim-distill bench --out bench/ --teacher sevennet-0
    torchsim-distill demo
    torchsim-distill serve default --port 12345 --config-out kusp_config.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Third-party warnings every command would print, known and harmless for our use: nequip's
#: models still call torch.jit (deprecated); torch's extension builder notes the missing
#: CUDA runtime on a CPU machine. Filtered for the command line only (``-v`` shows them);
#: library users keep Python's defaults, and warnings of ours still print.
KNOWN_WARNINGS = (r"`torch\.jit\.(script|save|load|trace)` is deprecated",)
KNOWN_LOGGERS = ("torch.utils.cpp_extension",)


def _cmd_compile(args: argparse.Namespace) -> int:
    from torchsim_distill.compile import CompileError, cached_compile, compile_model
    from torchsim_distill.models.registry import resolve_student

    configs = dict(item.split("=", 1) for item in args.inductor_configs)
    opts = dict(tf32=args.tf32, constant_fold=args.constant_fold, inductor_configs=configs or None)
    out = Path(args.output)
    try:
        source = resolve_student(args.source)
        if args.no_cache:
            compile_model(source, out, device=args.device, target=args.target, **opts)
        else:
            import shutil

            cached = cached_compile(source, device=args.device, target=args.target, **opts)
            if not out.name.endswith(".nequip.pt2"):
                raise ValueError(f"output must end with '.nequip.pt2', got {out.name!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, out)
    except (CompileError, FileNotFoundError, ValueError) as err:
        return _error("compile", err)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate every structure in the files in one batched call; print a table."""
    import torch
    import torch_sim as ts

    from torchsim_distill.jobs.relax import load_model, read_structures

    try:
        _, atoms = read_structures(args.structures)
        calc = load_model(args.model, args.device)
    except (ValueError, FileNotFoundError) as err:
        return _error("evaluate", err)
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


def _cmd_distill(args: argparse.Namespace) -> int:
    from torchsim_distill.distill.run import DistillConfig, distill
    from torchsim_distill.distill.evaluation import Gates

    gates = Gates(energy_mae=args.max_energy_mae, force_mae=args.max_force_mae, stress_mae=args.max_stress_mae)
    rounds = {"rounds": args.rounds, "budget": args.round_budget, "trust_low": args.trust_low,
              "trust_high": args.trust_high, "epochs": args.round_epochs}
    if args.round_structures:
        rounds["structures"] = tuple(args.round_structures)
    try:
        config = DistillConfig(
            teacher=args.teacher, structures=args.structures, out=args.out, student=args.student, size=args.size,
            precision=args.precision, n_configs=args.n_configs, seed=args.seed, r_max=args.r_max, max_epochs=args.max_epochs,
            device=args.device, gates=gates, committee=args.committee, rounds=rounds,
            acceptance=not args.no_acceptance, property_structures=args.property_structures or None,
            ray=args.ray,
        )
        config.check()  # bad settings fail before any work
        result = distill(config, progress=_progress(args))
    except (ValueError, FileNotFoundError, ImportError) as err:
        return _error("distill", err)
    m = result.report.metrics
    print(f"student: {result.package}")
    stress = "n/a" if m.stress_mae is None else f"{m.stress_mae:.3f} GPa"
    print(f"held-out: energy {m.energy_mae:.2f} meV/atom, forces {m.force_mae:.1f} meV/A, stress {stress}")
    print(f"model card: {Path(args.out) / 'report' / 'model_card.md'}")
    if not result.passed:
        for failure in result.report.failures:
            print(f"GATE FAILED: {failure}", file=sys.stderr)
        for line in result.advice:
            print(f"advice: {line}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from torchsim_distill.jobs.demo import run_demo

    run_demo(
        n_structures=args.n_structures, out=args.out, device=args.device,
        max_steps=args.max_steps, n_compare=args.n_compare, progress=_progress(args),
    )
    return 0


def _cmd_relax(args: argparse.Namespace) -> int:
    """Relax structures in batch; exit 1 with one line on stderr for bad input."""
    if args.ray is None:
        from torchsim_distill.jobs.relax import relax_structures as relax

        ray = {}
    else:  # Ray is optional: its module loads only when asked for
        from torchsim_distill.jobs.distributed import relax_structures_on_ray as relax

        ray = dict(ray=args.ray, shard_size=args.shard_size, n_actors=args.actors)
        if args.dispersion is not None:
            return _error("relax", ValueError("--dispersion is not supported with --ray yet; relax on this machine"))
    if args.dispersion is not None:  # D3 on top of the student
        ray.update(dispersion=args.dispersion, functional=args.functional)
    try:
        relax(
            args.structures, args.model, args.out, device=args.device, fmax=args.fmax,
            max_steps=args.max_steps, cell_filter=None if args.cell_filter == "none" else args.cell_filter,
            max_memory_scaler=args.max_memory_scaler, progress=_progress(args), summary=not args.quiet, **ray,
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        return _error("relax", err)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark student vs teacher vs nequip's calculator; write results.csv, plots and summary.md."""
    from torchsim_distill.bench import run_benchmarks

    try:
        result = run_benchmarks(args.out, smoke=args.smoke, model=args.model, teacher=args.teacher, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        return _error("bench", err)
    print(result.summary)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the students known by name, or print one's model card."""
    from torchsim_distill.models.registry import ALIASES, resolve_student, students

    known = students()
    if args.models_command == "show":
        name = ALIASES.get(args.name, args.name)
        if name not in known:
            try:
                resolve_student(args.name)  # a path, or the error listing the names
            except (ValueError, FileNotFoundError) as err:
                return _error("models show", err)
            return _error("models show", f"{args.name!r} is a file, not a registered student; its card is the "
                                         "model_card.md written beside it by the distillation")
        card = known[name].card.with_suffix(".md")
        if not card.is_file():
            return _error("models show", f"student {name!r} ({known[name].source}) has no model card at {card}")
        print(card.read_text().rstrip())
        return 0
    rows = [student.describe() for student in known.values()]
    head = ("name", "teacher", "species", "size", "r_max/A", "model card", "from")
    table = [head] + [
        (r["name"] + "".join(f" ({a})" for a in r["aliases"]), r["teacher"], "-".join(r["species"]) or "?",
         r["size"], "?" if r["r_max"] is None else f"{r['r_max']:g}", r["card"], r["source"])
        for r in rows
    ]
    widths = [max(len(str(row[k])) for row in table) for k in range(len(head))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\nuse a name wherever a model is asked for (relax --model NAME, DistilledCalculator(model=NAME)); "
          "'torchsim-distill models show NAME' prints its card")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a student to KIM codes through KUSP until Ctrl-C."""
    from torchsim_distill.jobs.serve import KuspServer, load_served_model

    try:
        model = load_served_model(args.model, args.device, exact=args.exact)
        server = KuspServer(model, host=args.host, port=args.port)
    except (ValueError, FileNotFoundError, OSError) as err:
        return _error("serve", err)
    config = server.write_config(args.config_out).resolve()
    print(f"KIM model KUSP__MO_000000000000_000 now serves {args.model}; in the simulator's shell:")
    print(f"  export KUSP_SERVER_CONFIG={config} KUSP_CONFIG={config}")
    print("  LAMMPS: kim init KUSP__MO_000000000000_000 metal; kim interactions " + " ".join(model.type_names))
    print("routes: " + ("a periodic cell (LAMMPS on one MPI rank, ASE's KIM calculator) is folded onto the compiled "
                        "student; any other cluster is exact" if model.periodic is not None else
                        "every request exact (the eager student on the whole padded cluster)"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        routes = ", ".join(f"{n} {route}" for route, n in model.routes.items() if n)
        print(f"stopped after {server.served} requests" + (f" ({routes})" if routes else ""))
    return 0


def _error(command: str, err: object) -> int:
    """``err`` as one line on stderr (its whitespace and line breaks collapsed); exit code 1."""
    print(f"torchsim-distill {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 1


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars (tqdm, on stderr) only on a terminal: a log file or a pipe gets the results."""
    return sys.stderr.isatty() and not getattr(args, "quiet", False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchsim-distill",
        description="Distil foundation interatomic potentials into fast compiled students, and run them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show third-party warnings (torch.jit deprecation, Warp's missing-CUDA notice, ...)")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = _ShowDefaults
    model_help = ("a student's name ('default'; 'torchsim-distill models' lists them), a .nequip.zip package or "
                  ".ckpt checkpoint (compiled on first use), or a .nequip.pt2 compiled with --target batch")

    p = sub.add_parser("models", help="list the students known by name; 'models show NAME' prints one's model card")
    shows = p.add_subparsers(dest="models_command")
    shows.add_parser("show", help="print a student's model card").add_argument("name", help="a student's name")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("compile", formatter_class=defaults, help="compile a nequip checkpoint/package to an AOTInductor .nequip.pt2")
    p.add_argument("source", help="a student's name ('default'), a nequip checkpoint (.ckpt) or package (.nequip.zip)")
    p.add_argument("output", help="output file, ending with .nequip.pt2")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the device it will run on")
    p.add_argument("--target", default="batch", choices=["batch", "ase"],
                   help="batch: many systems per call, for this package's calculators (torch-sim and ASE); "
                        "ase: one system per call, for nequip's own NequIPCalculator only")
    p.add_argument("--tf32", action="store_true", help="allow TF32 (CUDA; checked with looser tolerances)")
    p.add_argument("--constant-fold", action="store_true", help="AOTInductor constant folding")
    p.add_argument("--inductor-configs", nargs="*", default=[], metavar="KEY=VALUE", help="TorchInductor settings")
    p.add_argument("--no-cache", action="store_true", help="always recompile instead of reusing the cache")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("evaluate", formatter_class=defaults, help="evaluate structures with a student in one batched call")
    p.add_argument("model", help=model_help)
    p.add_argument("structures", nargs="+", help="files ASE can read")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("distill", formatter_class=defaults, help="distil a teacher into a compiled student for your structures")
    p.add_argument("--teacher", required=True, help="sevennet-0, emt, or a compiled .nequip.pt2")
    p.add_argument("--structures", nargs="+", required=True, help="seed structure files ASE reads")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    p.add_argument("--student", default="nequip", choices=["nequip", "allegro"], help="the student's architecture")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium", "large"], help="the student's size preset")
    p.add_argument("--precision", default="float64", choices=["float64", "float32"],
                   help="the student's dtype (nequip's model_dtype); float32 is faster, compile keeps it")
    p.add_argument("--n-configs", type=int, default=500, help="frames sampled from the seeds and labelled by the teacher")
    p.add_argument("--seed", type=int, default=0, help="random seed (sampling, split, training)")
    p.add_argument("--r-max", type=float, default=5.0, help="the student's cutoff, A")
    p.add_argument("--max-epochs", type=int, default=100, help="training epochs at most")
    p.add_argument("--device", default="cpu", help="cpu or cuda (teacher, training and student)")
    p.add_argument("--max-energy-mae", type=float, default=5.0, help="gate, meV/atom")
    p.add_argument("--max-force-mae", type=float, default=60.0, help="gate, meV/A")
    p.add_argument("--max-stress-mae", type=float, default=0.1, help="gate, GPa")
    p.add_argument("--committee", type=int, default=1, metavar="K",
                   help="train K students (the shipped one and K-1 fine-tuned members) whose force spread is the uncertainty; 1: none")
    p.add_argument("--rounds", type=int, default=0, metavar="N",
                   help="on-policy rounds: the student's own MD and relaxations, frames its committee doubts labelled by the teacher (needs --committee >= 2)")
    p.add_argument("--round-budget", type=int, default=40, metavar="N", help="frames labelled per round at most")
    p.add_argument("--round-epochs", type=int, default=20, metavar="N", help="fine-tuning epochs of the student and each member per round")
    p.add_argument("--trust-low", type=float, default=0.1, help="eV/A: committee spread from which a frame is worth labelling (and the run-time warning level)")
    p.add_argument("--trust-high", type=float, default=1.5, help="eV/A: spread above which a frame counts as unphysical and is not labelled")
    p.add_argument("--round-structures", nargs="*", default=[], metavar="FILE", help="your own structures, explored in each round beside the seeds")
    p.add_argument("--no-acceptance", action="store_true", help="skip the property acceptance suite (teacher vs student)")
    p.add_argument("--property-structures", nargs="*", default=[], metavar="FILE",
                   help="structures the acceptance suite measures (default: the seeds); its teacher MD runs on each, so keep them few and small")
    p.add_argument("--ray", default=None, metavar="local|ADDRESS",
                   help="label with teacher actors on a Ray cluster: local (this machine) or a cluster address (needs the distributed extra)")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("relax", formatter_class=defaults, help="relax structures in batch (FIRE + Frechet cell filter); write relaxed.extxyz and results.csv")
    p.add_argument("structures", nargs="+", help="files ASE can read (every frame is relaxed)")
    p.add_argument("--model", default="default", help=model_help)
    p.add_argument("--out", required=True, help="output folder (created; its result files are replaced)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--fmax", type=float, default=0.05, help="force convergence threshold, eV/A")
    p.add_argument("--max-steps", type=int, default=500, help="FIRE steps at most per structure")
    p.add_argument("--cell-filter", default="frechet", choices=["frechet", "unit", "none"], help="none: fixed cell")
    p.add_argument("--dispersion", default=None, choices=["d3bj"],
                   help="add a dispersion correction on top of the student: d3bj (two-body D3 with Becke-Johnson damping; needs the d3 extra)")
    p.add_argument("--functional", default="pbe", help="with --dispersion: the teacher's functional, whose D3(BJ) parameters are used")
    p.add_argument("--max-memory-scaler", type=float, default=None, help="batch limit in torch-sim's n_atoms_x_density metric (default: 2e5 on CPU; estimated by torch-sim on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--ray", default=None, metavar="local|ADDRESS",
                   help="relax on Ray actors: local (this machine) or a cluster address; resumable (needs the distributed extra)")
    p.add_argument("--shard-size", type=int, default=None, help="with --ray: structures per shard (default 64)")
    p.add_argument("--actors", type=int, default=None, help="with --ray: actors (default: one per GPU, or per CPU core)")
    p.set_defaults(func=_cmd_relax)

    p = sub.add_parser("bench", formatter_class=defaults, help="benchmark student vs teacher vs nequip's calculator (throughput, call cost, memory)")
    p.add_argument("--out", required=True, help="output folder: results.csv, summary.md and PNG plots")
    p.add_argument("--smoke", action="store_true", help="CI-sized run: tiny student, EMT teacher, a few steps (< 1 min warm)")
    p.add_argument("--teacher", default=None, help="sevennet-0 (default), emt (quick), or a compiled .nequip.pt2")
    p.add_argument("--model", default=None, help="the student: 'default' (the shipped one), a .nequip.pt2 (--target batch) or a checkpoint; default: 'default' (--smoke: the tiny toy student)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"], help="all: CPU, then CUDA if available")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", formatter_class=defaults, help="relax ~100 Cu-Au structures in batch with the default student; compare with SevenNet-0")
    p.add_argument("--n-structures", type=int, default=100, help="structures to relax")
    p.add_argument("--out", default="torchsim_distill_demo", help="folder for structures, relaxed.extxyz, results.csv")
    p.add_argument("--max-steps", type=int, default=300, help="FIRE steps at most per structure")
    p.add_argument("--n-compare", type=int, default=8, help="structures evaluated by both student and teacher (0: skip)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("serve", formatter_class=defaults,
                       help="serve a student to KIM codes (LAMMPS, ASE's KIM calculator) through KUSP's portable model")
    p.add_argument("model", help="a student's name ('default'; 'torchsim-distill models' lists them), a .nequip.zip package or a .ckpt checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only by default)")
    p.add_argument("--port", type=int, default=12345, help="TCP port (0: any free one; the config names it)")
    p.add_argument("--config-out", default="kusp_config.yaml", help="YAML for KUSP_SERVER_CONFIG / KUSP_CONFIG")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--exact", action="store_true",
                   help="answer every request on the exact route (the eager model on KIM's whole padded cluster; "
                        "5-10x slower), not only those that are not one periodic cell; for a client that reads "
                        "padding atoms' forces one by one instead of summing them onto their owners")
    p.add_argument("--debug", action="store_true", help="log every connection and request")
    p.set_defaults(func=_cmd_serve)
    return parser


class _ShowDefaults(argparse.HelpFormatter):
    """Help that ends each option with its default, when it has one worth saying
    (not for flags, required options, or ``None``: their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and not action.required and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _StdoutHandler(logging.Handler):
    """Writes each message as a plain line to the *current* ``sys.stdout`` (looked up
    at each message, so redirections made after start-up, e.g. by tests, are honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # logging must never take the command down
            self.handleError(record)


@contextmanager
def _show_package_logs(level: int = logging.INFO) -> Iterator[None]:
    """Show the package's log messages as the command's output, for this call only.

    Library code logs and never prints; the command line is where those messages
    become the user's output. Nothing is changed for library users or other loggers.
    """
    logger = logging.getLogger("torchsim_distill")
    handler = _StdoutHandler(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextmanager
def _quiet_third_party(verbose: bool) -> Iterator[None]:
    """:data:`KNOWN_WARNINGS` and :data:`KNOWN_LOGGERS` silenced for this command, and Warp
    initialised with its C-level stderr muted (it prints a missing-CUDA-driver notice on
    every CPU machine, from native code no Python filter reaches). ``verbose``: nothing changes."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in KNOWN_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            _init_warp_quietly()
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _init_warp_quietly() -> None:
    """``wp.init()`` with file descriptor 2 pointed at /dev/null for its duration only, and
    without its start-up banner on stdout."""
    try:
        import warp as wp
    except ImportError:  # the neighbor list's backend; without it there is nothing to quiet
        return
    wp.config.log_level = max(wp.config.log_level, wp.LOG_WARNING)  # as nvalchemiops sets it on import
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            wp.init()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _show_package_logs(logging.DEBUG if getattr(args, "debug", False) else logging.INFO), \
            _quiet_third_party(args.verbose):
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print(f"torchsim-distill {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # one clean line for what a command did not foresee; -v keeps the traceback
            if args.verbose:
                raise
            return _error(args.command, f"{type(err).__name__}: {err} (run with -v for the traceback)")


if __name__ == "__main__":
    sys.exit(main())
