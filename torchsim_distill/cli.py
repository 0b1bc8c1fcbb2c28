"""The ``torchsim-distill`` command: a thin layer over the package's functions.

    torchsim-distill models                      # the students known by name
    torchsim-distill models show default         # one student's model card
    torchsim-distill teachers [--measure]        # the teachers known by name, their elements and cost
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
    if (code := _check_inputs("compile", model=args.source)) is not None:
        return code
    from torchsim_distill.compile import CompileError, CompileOptions, cached_compile, compile_model
    from torchsim_distill.models.registry import resolve_student

    configs = dict(item.split("=", 1) for item in args.inductor_configs)
    options = CompileOptions.of(tf32=args.tf32, constant_fold=args.constant_fold, inductor_configs=configs)
    out = Path(args.output)
    try:
        source = resolve_student(args.source)
        if args.no_cache:
            compile_model(source, out, options=options, device=args.device, target=args.target)
        else:
            import shutil

            cached = cached_compile(source, device=args.device, target=args.target, options=options)
            if not out.name.endswith(".nequip.pt2"):
                raise ValueError(f"output must end with '.nequip.pt2', got {out.name!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, out)
    except (CompileError, FileNotFoundError, ValueError) as err:
        return _error("compile", err)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate every structure once, in batches; print a table (and write --out). Exit 0:
    all evaluated; 2: some structures skipped (each named on stderr); 1: bad input or settings."""
    if (code := _check_inputs("evaluate", structures=args.structures, model=args.model)) is not None:
        return code
    from torchsim_distill.jobs.relax import load_model
    from torchsim_distill.jobs.single_points import (
        evaluate_structures,
        training_pbc_of,
        warn_if_outside_training_pbc,
    )
    from torchsim_distill.models.registry import load_student

    def show(row: dict) -> None:
        pressure = row.get("pressure_gpa")
        print(f"{row['id']:>24} {row['formula']:>12} {row['n_atoms']:>7} {row['energy']:>14.6f} "
              f"{row['max_force']:>12.4f} {'' if pressure is None else f'{pressure:10.3f}':>10}"
              + (f" {row['uncertainty']:>10.4f}" if "uncertainty" in row else ""))

    try:
        calc = (load_student(args.model, args.device, uncertainty=True) if args.uncertainty
                else load_model(args.model, args.device))
        print(f"{'id':>24} {'formula':>12} {'n_atoms':>7} {'energy/eV':>14} {'fmax/(eV/A)':>12} {'p/GPa':>10}"
              + (f" {'unc/(eV/A)':>10}" if args.uncertainty else ""))
        t0 = time.perf_counter()
        summary = evaluate_structures(args.structures, calc, args.out, on_error=args.on_error, on_row=show)
        dt = time.perf_counter() - t0
        warn_if_outside_training_pbc(training_pbc_of(args.model), summary.molecules, args.model)
    except (ValueError, FileNotFoundError) as err:
        return _error("evaluate", err)
    print(f"{len(summary.rows)} structures evaluated in {dt:.2f} s" + (f"; wrote {args.out}" if args.out else ""))
    for error in summary.errors:
        print(f"torchsim-distill evaluate: skipped {error.id}: {error.reason}", file=sys.stderr)
    return 2 if summary.errors else 0


def _cmd_distill(args: argparse.Namespace) -> int:
    if (code := _check_inputs("distill", structures=args.structures)) is not None:
        return code
    from torchsim_distill.distill.config import DistillConfig
    from torchsim_distill.distill.run import distill
    from torchsim_distill.utils.options import from_flags

    try:
        config = DistillConfig(**from_flags(args, DistillConfig.cli_defaults()))
        config.check()  # bad settings fail before any work
        keep = None
        if config.budget is not None:  # the knobs given on the command line are kept, the others planned
            from torchsim_distill.distill.budget import knobs_on_command_line

            keep = knobs_on_command_line(getattr(args, "argv", []))
        result = distill(config, progress=_progress(args), keep=keep)
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
    """Relax structures in batch. Exit 0: every structure relaxed (converged or stopped at
    --max-steps); 2: the run finished but some structures were not relaxed (errors.csv);
    1: bad input or settings (one line on stderr; with --on-error stop, nothing written)."""
    if (code := _check_inputs("relax", structures=args.structures, model=args.model)) is not None:
        return code
    from torchsim_distill.jobs.relax_options import RelaxOptions
    from torchsim_distill.utils.options import from_flags

    if args.ray is None:
        from torchsim_distill.jobs.relax import relax_structures as relax

        ray = {}
    else:  # Ray is optional: its module loads only when asked for
        from torchsim_distill.jobs.distributed import relax_structures_on_ray as relax

        ray = dict(ray=args.ray, shard_size=args.shard_size, n_actors=args.actors)
    try:
        options = RelaxOptions(**from_flags(args, RelaxOptions()))
        summary = relax(args.structures, args.model, args.out, options=options, device=args.device,
                        progress=not args.quiet, summary=not args.quiet, **ray)
    except (ValueError, FileNotFoundError, ImportError) as err:
        return _error("relax", err)
    if summary.n_failed:
        print(f"torchsim-distill relax: {summary.n_failed} structure(s) not relaxed; reasons in "
              f"{Path(args.out) / 'errors.csv'}", file=sys.stderr)
        return 2
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
        (r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else ""), r["teacher"], "-".join(r["species"]) or "?",
         r["size"], "?" if r["r_max"] is None else f"{r['r_max']:g}", r["card"], r["source"])
        for r in rows
    ]
    widths = [max(len(str(row[k])) for row in table) for k in range(len(head))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\nuse a name wherever a model is asked for (relax --model NAME, DistilledCalculator(model=NAME)); "
          "'torchsim-distill models show NAME' prints its card")
    return 0


def _cmd_teachers(args: argparse.Namespace) -> int:
    """List the teachers known by name; with --measure, load and time them first (cached)."""
    from torchsim_distill.models.teacher_registry import cached_measurement, resolve_teacher, teacher_specs

    known = teacher_specs()
    try:
        chosen = [resolve_teacher(name) for name in args.names] if args.names else list(known.values())
    except (ValueError, FileNotFoundError) as err:
        return _error("teachers", err)
    if args.measure:
        from torchsim_distill.distill.teacher_cost import measure_teacher

        for spec in chosen:
            if spec.missing() is None:
                print(f"measuring {spec.name} ...", file=sys.stderr)
                try:
                    measure_teacher(spec.name, device=args.device)
                except Exception as err:  # one teacher that fails to load must not hide the others
                    print(f"torchsim-distill teachers: {spec.name}: {type(err).__name__}: {err}", file=sys.stderr)
    head = ("name", "from", "status", "elements", "dtype", "cost/atom", "timed on")
    table, notes = [head], {}
    for spec in chosen:
        record = cached_measurement(spec, args.device) or {}
        missing = spec.missing()
        if missing:
            notes[spec.name] = missing
        elements = record.get("elements") or spec.elements
        version = spec.version()
        table.append((
            spec.name + (":MODAL" if record.get("modals") else ""),
            f"{spec.package} {version}" if spec.package and version else spec.kind,
            "ready" if missing is None else ("not installed" if missing.startswith("not installed") else "no weights"),
            "?" if not elements else (" ".join(elements) if len(elements) <= 12 else f"{len(elements)} elements"),
            record.get("dtype", "float64" if spec.kind == "ase" else "?"),
            f"{record['us_per_atom']:.0f} us" if "us_per_atom" in record else "?",
            f"{record['cell']}, {record['threads']} thread(s), {record['measured'][:10]}" if record else "-",
        ))
        if record.get("modals"):
            notes[spec.name] = f"modals: {', '.join(record['modals'])} (give one: {spec.name}:{record['modals'][0]})"
    widths = [max(len(str(row[k])) for row in table) for k in range(len(head))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for name, note in notes.items():
        print(f"  {name}: {note}")
    print("\ncost/atom: one energy-forces-stress call on a ~64-atom cell, on this machine, as last measured by "
          "'torchsim-distill teachers --measure' (loads each teacher: seconds each); '?': not measured here yet.\n"
          "also accepted as --teacher: a student's name ('torchsim-distill models'), a file (.nequip.zip, .ckpt, "
          ".nequip.pt2, SevenNet .pth, MACE .model), or module:callable returning a torch-sim model or an ASE "
          "calculator; packages add names through the 'torchsim_distill.teachers' entry-point group")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a student to KIM codes through KUSP until Ctrl-C."""
    if (code := _check_inputs("serve", model=args.model)) is not None:
        return code
    from torchsim_distill.jobs.serve import KuspServer, load_served_model

    try:
        model = load_served_model(args.model, args.device, exact=args.exact, dispersion=args.dispersion,
                                  functional=args.functional)
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
    if model.dispersion is not None:
        print(f"with {model.dispersion} on top: periodic cells and isolated clusters only (other clusters are refused)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        routes = ", ".join(f"{n} {route}" for route, n in model.routes.items() if n)
        print(f"stopped after {server.served} requests" + (f" ({routes})" if routes else ""))
    return 0


def _check_inputs(command: str, *, structures: list[str] = (), model: str | None = None) -> int | None:
    """The bad inputs found without importing torch, nequip or Warp (seconds of start-up):
    structure files that are missing or folders, and models that are neither a student's name
    nor a student file. Their messages are those the command's functions give; ``None``: none found."""
    from torchsim_distill.models.registry import resolve_student

    for item in structures:
        path = Path(item)
        if path.is_dir():
            return _error(command, f"{str(item)!r} is a folder, not a structure file; give the files in it")
        if not path.is_file():
            return _error(command, f"structure file {str(item)!r} does not exist")
    if model is not None:
        try:
            resolve_student(model)
        except (ValueError, FileNotFoundError) as err:
            return _error(command, err)
    return None


def _error(command: str, err: object) -> int:
    """``err`` as one line on stderr (its whitespace and line breaks collapsed); exit code 1."""
    print(f"torchsim-distill {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 1


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars (tqdm, on stderr) only on a terminal: a log file or a pipe gets the results."""
    return sys.stderr.isatty() and not getattr(args, "quiet", False)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. ``command``: the subcommand about to be parsed, when known
    (``main`` passes it): ``distill``'s flags, generated from the distillation's options
    (whose modules import torch), are then built only for ``distill`` (``None``: every one)."""
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

    p = sub.add_parser("teachers", formatter_class=defaults,
                       help="list the teachers known by name, with elements, dtype and cost per atom measured here")
    p.add_argument("names", nargs="*", help="teachers to show or measure (default: every one known by name)")
    p.add_argument("--measure", action="store_true",
                   help="load each teacher and time it on this machine first (seconds per teacher; the result is "
                        "cached, and the listing without --measure shows the cached one)")
    p.add_argument("--device", default="cpu", help="where to measure (cpu or cuda)")
    p.set_defaults(func=_cmd_teachers)

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

    p = sub.add_parser("evaluate", formatter_class=defaults, help="energies, forces, pressure and stress of structures (no relaxation), batched",
                       epilog="exit status: 0 all evaluated; 2 some structures skipped (named on stderr); 1 bad input or settings")
    p.add_argument("model", help=model_help)
    p.add_argument("structures", nargs="+", help="files ASE can read (every frame is evaluated)")
    p.add_argument("--out", default=None, metavar="CSV",
                   help="write a table: file, frame, id, formula, n_atoms, energy, energy_per_atom, max_force, pressure_gpa, stress (Voigt, GPa)")
    p.add_argument("--uncertainty", action="store_true", help="also the committee's uncertainty (eV/A) and energy uncertainty (eV/atom)")
    p.add_argument("--on-error", default="skip", choices=["skip", "stop"],
                   help="skip: name each bad structure on stderr and evaluate the rest (exit 2); stop: the first bad one stops the run (exit 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("distill", formatter_class=defaults, help="distil a teacher into a compiled student for your structures")
    if command in (None, "distill"):
        _distill_flags(p)
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("relax", formatter_class=defaults,
                       help="relax structures in batch (FIRE + Frechet cell filter), streamed and resumable; "
                            "write relaxed.extxyz, results.csv and errors.csv",
                       epilog="exit status: 0 all relaxed; 2 finished, some structures not relaxed (errors.csv); "
                              "1 bad input or settings")
    p.add_argument("structures", nargs="+", help="files ASE can read (every frame is relaxed)")
    p.add_argument("--model", default="default", help=model_help)
    p.add_argument("--out", required=True, help="output folder (created; its result files are replaced)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    _relax_flags(p)  # --fmax, --max-steps, --cell-filter, --max-memory-scaler, --on-error, ...: RelaxOptions' fields
    p.add_argument("-q", "--quiet", action="store_true", help="no progress (bar or log lines) and no summary")
    p.add_argument("--ray", default=None, metavar="local|ADDRESS",
                   help="relax on Ray actors: local (this machine) or a cluster address; resumable (needs the distributed extra)")
    p.add_argument("--shard-size", type=int, default=None, help="with --ray: structures per shard (default 64)")
    p.add_argument("--actors", type=int, default=None, help="with --ray: actors (default: one per GPU, or per CPU core)")
    p.set_defaults(func=_cmd_relax)

    p = sub.add_parser("bench", formatter_class=defaults, help="benchmark student vs teacher vs nequip's calculator (throughput, call cost, memory)")
    p.add_argument("--out", required=True, help="output folder: results.csv, summary.md and PNG plots")
    p.add_argument("--smoke", action="store_true", help="CI-sized run: tiny student, EMT teacher, a few steps (< 1 min warm)")
    p.add_argument("--teacher", default=None, help="sevennet-0 (default), emt (quick), or any teacher "
                                                    "('torchsim-distill teachers' lists the names)")
    p.add_argument("--model", default=None, help="the student: 'default' (the shipped one), a .nequip.pt2 (--target batch) "
                                                  "or a checkpoint; default: 'default' (--smoke: the tiny toy student)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"], help="all: CPU, then CUDA if available")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", formatter_class=defaults,
                       help="relax ~100 Cu-Au structures in batch with the default student; compare with SevenNet-0")
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
    p.add_argument("--dispersion", default=None, choices=["d3bj"],
                   help="add a dispersion correction on top of the student: d3bj (two-body D3 with Becke-Johnson "
                        "damping; needs the d3 extra), on periodic cells and isolated clusters (not with --exact)")
    p.add_argument("--functional", default="pbe",
                   help="with --dispersion: the teacher's functional, whose D3(BJ) parameters are used")
    p.add_argument("--debug", action="store_true", help="log every connection and request")
    p.set_defaults(func=_cmd_serve)
    return parser


def _distill_flags(parser: argparse.ArgumentParser) -> None:
    """``distill``'s flags, generated from :class:`~torchsim_distill.distill.config.DistillConfig`'s
    fields and its options objects' (a field with ``cli`` metadata is a flag: one edit adds one).
    Imported here only, and built only for ``distill``: the other commands start without torch."""
    from torchsim_distill.distill.config import DistillConfig
    from torchsim_distill.utils.options import add_flags

    add_flags(parser, DistillConfig.cli_defaults())


def _relax_flags(parser: argparse.ArgumentParser) -> None:
    """``relax``'s relaxation flags, generated from :class:`~torchsim_distill.jobs.relax_options.RelaxOptions`
    (a module without torch: the parser stays light)."""
    from torchsim_distill.jobs.relax_options import RelaxOptions
    from torchsim_distill.utils.options import add_flags

    add_flags(parser, RelaxOptions())


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
    """:data:`KNOWN_WARNINGS` and :data:`KNOWN_LOGGERS` silenced for the whole command (the
    package's own imports silence them, and Warp's C-level CUDA notice, for library users too:
    see :mod:`torchsim_distill.utils.quiet`). ``verbose``: nothing changes."""
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
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    # for distill, the parser imports the distillation's options (its flags are their fields):
    # the third-party warnings are silenced before it is built
    with _quiet_third_party(any(a in ("-v", "--verbose") for a in argv)):
        args = build_parser(command).parse_args(argv)
    args.argv = argv  # which flags were given, not only their values (distill --budget keeps those)
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
