"""How benchmark results are written: ``results.csv``, the PNG plots and ``summary.md``.

It exists so that the measurements (:mod:`.suites`) only produce rows, and every
reader-facing format is decided here, from those rows alone::

    write_csv(rows, out / "results.csv")           # one row per measurement, COLUMNS
    plots = write_plots(rows, out)                 # throughput_vs_batch, speedup_vs_size, call_split
    text = summary_markdown(rows, notes, wall_time_s=42.0, settings=settings)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchsim_distill.bench.call_split import STAGES
from torchsim_distill.bench.contenders import CALCULATORS
from torchsim_distill.bench.plan import SKIN, Settings
from torchsim_distill.bench.suites import per_step_rate

#: Columns of ``results.csv``; cells that do not apply to a row are left empty.
COLUMNS = (
    # what was measured
    "benchmark", "calculator", "variant", "stage", "device", "dtype",
    "atoms_per_system", "batch_size", "n_atoms", "steps", "calls", "reps",
    # timings (seconds per timed run or call) and what they give
    "median_s", "min_s", "iqr_s", "throughput", "unit", "speedup_vs_teacher", "nl_builds",
    # memory
    "rss_baseline_mb", "rss_peak_mb", "rss_growth_mb", "py_heap_peak_kb", "py_heap_growth_kb",
    "cuda_peak_mb", "cuda_growth_mb",
    # where and with what
    "model", "teacher", "mode", "clock", "cpu_model", "cpu_count", "torch_threads", "omp_num_threads",
    "gpu", "torch_version", "torch_sim_version", "nequip_version", "nvalchemiops_version",
    "python_version", "timestamp",
)


# -- CSV ----------------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per measurement, columns :data:`COLUMNS` (empty where they do not apply)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r.get(k)) for k in COLUMNS})


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


# -- plots --------------------------------------------------------------------------------

_COLORS = {"student": "tab:blue", "nequip": "tab:orange", "teacher": "tab:green"}
_MARKERS = "osD^v<>ph*"
_THROUGHPUTS = (("md", "MD throughput (atom-steps/s)"), ("relax", "relaxation (structures/min)"))


def write_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``throughput_vs_batch.png``, ``speedup_vs_size.png`` and ``call_split.png``."""
    paths = []
    if any(r["benchmark"] in ("md", "relax") for r in rows):
        paths.append(out_dir / "throughput_vs_batch.png")
        _line_grid(
            rows, paths[-1], calculators=CALCULATORS, x="batch_size", y="throughput", series="atoms_per_system",
            series_label="{} atoms", xlabel="batch size (systems)", ylabel="{}", log2_x=True,
        )
        paths.append(out_dir / "speedup_vs_size.png")
        _line_grid(
            rows, paths[-1], calculators=("student", "nequip"), x="atoms_per_system", y="speedup_vs_teacher",
            series="batch_size", series_label="batch {}", xlabel="atoms per system",
            ylabel="speedup over the teacher, {}", ratio=True,
        )
    split = split_table(rows)
    if split:
        paths.append(out_dir / "call_split.png")
        _split_bars(split, paths[-1])
    return paths


def _line_grid(
    rows: list[dict[str, Any]],
    path: Path,
    *,
    calculators: Sequence[str],
    x: str,
    y: str,
    series: str,
    series_label: str,
    xlabel: str,
    ylabel: str,
    log2_x: bool = False,
    ratio: bool = False,
) -> None:
    """MD (top) and relaxation (bottom) panels, one column per (device, dtype).

    One line per calculator (colour) and value of ``series`` (marker); log axes. Eleven
    parameters, as a plotting call has: the data and file, then what goes on each axis and
    its label, each set by the caller's figure (a private helper of three plots).
    """
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend, safe in any process
    )

    panels = sorted({(r["device"], r["dtype"]) for r in rows if r["benchmark"] in ("md", "relax")})
    fig = Figure(figsize=(5.5 * len(panels), 8.5), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, panel in enumerate(panels):
        for i, (bench, label) in enumerate(_THROUGHPUTS):
            ax = axes[i][j]
            sel = [
                r for r in rows
                if r["benchmark"] == bench and (r["device"], r["dtype"]) == panel and r.get(y) is not None
            ]
            for calc in calculators:
                for k, value in enumerate(sorted({r[series] for r in sel})):
                    pts = sorted((r[x], r[y]) for r in sel if r["calculator"] == calc and r[series] == value)
                    if pts:
                        xs, ys = zip(*pts, strict=True)
                        marker = _MARKERS[k % len(_MARKERS)]
                        name = f"{calc}, {series_label.format(value)}"
                        ax.plot(xs, ys, marker=marker, color=_COLORS[calc], label=name)
            _style_axes(ax, log2_x=log2_x, ratio=ratio)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel.format(label if not ratio else label.split(" (")[0]))
            ax.set_title(f"{panel[0]}, {panel[1]}")
            if ax.lines and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no measurement", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def _style_axes(ax: Any, *, log2_x: bool, ratio: bool) -> None:
    """Log axes and grid; for ratios a line at 1 and ``2×``-style tick labels."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2 if log2_x else 10)
    ax.set_yscale("log")
    if ratio:
        ax.axhline(1.0, color="grey", lw=0.8)
        low, high = ax.get_ylim()
        times = FuncFormatter(lambda v, _: f"{v:g}×")
        ax.yaxis.set_major_formatter(times)
        # label minor ticks too when the axis spans too little for two decades
        ax.yaxis.set_minor_formatter(times if high / low < 100 else FuncFormatter(lambda v, _: ""))
    ax.grid(True, which="both", alpha=0.3)


def _split_bars(split: list[tuple[str, dict[str, float]]], path: Path) -> None:
    """Stacked bars of the stages of one student call, a tick at the plain call."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 1.2 + 0.45 * len(split)), layout="constrained")
    ax = fig.subplots()
    for y, (_, stages) in enumerate(split):
        left = 0.0
        for k, stage in enumerate(STAGES):
            ms = 1e3 * stages[stage]
            ax.barh(y, ms, left=left, color=f"C{k}", label=stage if y == 0 else None)
            left += ms
        plain = 1e3 * stages["total_uninstrumented"]
        ax.plot([plain], [y], "k|", markersize=14, label="plain call" if y == 0 else None)
    ax.set_yticks(range(len(split)), [name for name, _ in split], fontsize=8)
    ax.set_xlabel("ms per call (medians)")
    ax.set_title("one student call, split")
    ax.legend(fontsize=7, ncols=3)
    fig.savefig(path, dpi=110)


def split_table(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, float]]]:
    """The call-split rows as ``(state name, {stage: median seconds})``, in row order."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["benchmark"] == "call_split":
            name = f"{r['device']} {r['dtype']} {r['batch_size']}×{r['atoms_per_system']} {r['variant']}"
            out.setdefault(name, {})[r["stage"]] = r["median_s"]
    return list(out.items())


# -- summary.md ---------------------------------------------------------------------------


def _table_head(*names: str) -> list[str]:
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def summary_markdown(
    rows: list[dict[str, Any]], notes: list[str], *, wall_time_s: float, settings: Settings | None = None
) -> str:
    """A short report: throughput tables with speedups, the call split, memory, and the method."""
    lines = [f"# Benchmark: student vs teacher vs nequip ({rows[0]['mode'] if rows else ''})", ""]
    lines += _machine_section(rows, wall_time_s)
    lines += _throughput_section(rows, "md", "MD throughput", "atom-steps/s, NVE")
    lines += _throughput_section(
        rows, "relax", "Relaxation throughput", "structures/min, FIRE + Fréchet, a fixed number of steps"
    )
    lines += _split_section(rows)
    lines += _memory_section(rows)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Method", "", _method(settings), ""]
    return "\n".join(lines)


def _machine_section(rows: list[dict[str, Any]], wall_time_s: float) -> list[str]:
    """Machine, versions, threads, the student and teacher, and the total time."""
    if not rows:
        return []
    r0 = rows[0]
    gpus = sorted({r["gpu"] for r in rows if r["gpu"]})
    return [
        (
            f"Machine: {r0['cpu_model']} ({r0['cpu_count']} cores){'; GPU ' + ', '.join(gpus) if gpus else ''}; "
            f"torch {r0['torch_version']}, torch-sim {r0['torch_sim_version']}, nequip {r0['nequip_version']}, "
            f"nvalchemiops {r0['nvalchemiops_version']}, python {r0['python_version']}; "
            f"torch threads {r0['torch_threads']} (OMP_NUM_THREADS={r0['omp_num_threads'] or 'unset'})."
        ),
        f"Student `{r0['model']}`, teacher `{r0['teacher']}`. Total {wall_time_s:.0f} s.",
        "",
    ]


def _throughput_section(rows: list[dict[str, Any]], bench: str, title: str, unit: str) -> list[str]:
    """One table of ``bench`` ("md" or "relax"): every contender per (device, dtype, size, batch)."""
    sel = [r for r in rows if r["benchmark"] == bench]
    if not sel:
        return []
    lines = [f"## {title} ({unit})", ""]
    lines += _table_head(
        "device", "dtype", "atoms/system", "batch", "steps (s/n/t)", "student", "nequip", "teacher",
        "student ÷ teacher", "student ÷ nequip",
    )
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in sel:
        groups.setdefault((r["device"], r["dtype"], r["atoms_per_system"], r["batch_size"]), {})[r["calculator"]] = r
    for (dev, dt, n, b), by in sorted(groups.items()):
        st, nq, te = by.get("student"), by.get("nequip"), by.get("teacher")
        steps = "/".join(str(x["steps"]) if x else "–" for x in (st, nq, te))
        vs_teacher = _fmt(st["speedup_vs_teacher"]) + "×" if st and st.get("speedup_vs_teacher") else "–"
        vs_nequip = _fmt(per_step_rate(st) / per_step_rate(nq)) + "×" if st and nq else "–"
        lines.append(
            f"| {dev} | {dt} | {n} | {b} | {steps} | {_fmt(st and st['throughput'])} | "
            f"{_fmt(nq and nq['throughput'])} | {_fmt(te and te['throughput'])} | {vs_teacher} | {vs_nequip} |"
        )
    lines.append("")
    return lines


def _split_section(rows: list[dict[str, Any]]) -> list[str]:
    """Median milliseconds per stage of one student call, and the neighbor list's share."""
    split = split_table(rows)
    if not split:
        return []
    lines = [
        "## One student call, split (median ms)",
        "",
        "| state | " + " | ".join(STAGES) + " | sum | plain call | neighbor list share |",
        "|---|" + "---|" * (len(STAGES) + 3),
    ]
    for name, st in split:
        total = sum(st[k] for k in STAGES)
        cells = " | ".join(f"{1e3 * st[k]:.3f}" for k in STAGES)
        share = 100 * st["neighbor_list"] / total if total else float("nan")
        lines.append(f"| {name} | {cells} | {1e3 * total:.3f} | {1e3 * st['total_uninstrumented']:.3f} | {share:.0f}% |")
    lines.append("")
    return lines


def _memory_section(rows: list[dict[str, Any]]) -> list[str]:
    """RSS, Python heap and CUDA memory of every contender over repeated calls."""
    mem = [r for r in rows if r["benchmark"] == "memory"]
    if not mem:
        return []
    lines = [
        "## Memory over repeated calls",
        "",
        *_table_head(
            "device", "dtype", "calculator", "state", "calls", "RSS baseline MB", "RSS peak MB", "RSS growth MB",
            "Python heap growth kB", "CUDA peak MB", "CUDA growth MB",
        ),
    ]
    for r in mem:
        lines.append(
            f"| {r['device']} | {r['dtype']} | {r['calculator']} | {r['batch_size']}×{r['atoms_per_system']} | "
            f"{r['calls']} | {r['rss_baseline_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['rss_growth_mb']:+.1f} | "
            f"{r['py_heap_growth_kb']:+.1f} | {_fmt(r.get('cuda_peak_mb'))} | {_fmt(r.get('cuda_growth_mb'))} |"
        )
    lines.append("")
    return lines


def _method(settings: Settings | None) -> str:
    """How the numbers were taken, in one paragraph."""
    reps = settings.reps if settings else "?"
    return (
        "Random fcc Cu–Au alloys (Vegard lattice constant, rattled; relaxations also strained 2 %). "
        f"Contenders run interleaved, {reps} timed runs each after excluded warm-ups; tables show medians. "
        "Steps (s/n/t = student/nequip/teacher) are per timed run: slow contenders run fewer so one run "
        "stays near the time budget, and throughput is per step, so ratios compare per-step rates. "
        f"The student uses a {settings.skin if settings else SKIN:g} Å Verlet skin; nequip's calculator runs the "
        "same .pt2 with the alchemiops neighbor list. The call split times pieces inside real calls "
        "(same state every call, so with a skin the neighbor list is only re-pruned). Memory: RSS of the "
        "whole process (sampled), Python heap by tracemalloc, CUDA by torch's allocator; baselines after "
        "two warm-up calls. Plots: throughput_vs_batch.png, speedup_vs_size.png, call_split.png; every "
        "number is in results.csv."
    )
