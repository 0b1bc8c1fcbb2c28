"""The written side of an evaluation: parity plots and the model card.

:func:`~torchsim_distill.distill.evaluation.evaluate` measures; this module renders what
it measured, for people (PNG plots, ``model_card.md``) and for programs
(``model_card.json``)::

    parity_plots(reference, prediction, "eval/")  # eval/parity_{energy,forces,stress}.png
    write_model_card("eval/", metrics=metrics, gates=gates, failures=[], speed=speed, metadata={...})

It renders numbers and imports nothing from the evaluation: ``metrics`` and ``gates``
are the evaluation's :class:`~torchsim_distill.distill.evaluation.Metrics` and
:class:`~torchsim_distill.distill.evaluation.Gates` dataclasses (read through their
fields), and labels are the evaluation's ``Labels`` dicts of numpy arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import units

from torchsim_distill.utils.jsonable import jsonable

#: File names inside an evaluation's ``out_dir``: the parity plots, by panel.
PLOTS = {"energy": "parity_energy.png", "forces": "parity_forces.png", "stress": "parity_stress.png"}
CARD_JSON, CARD_MD = "model_card.json", "model_card.md"
#: Units of the card's metrics.
METRIC_UNITS = {"energy_mae": "meV/atom", "force_mae": "meV/Å", "force_cosine": "1", "stress_mae": "GPa"}


@dataclasses.dataclass(frozen=True)
class CardSection:
    """An extra part of the model card, added by a stage beyond the frame errors (the
    committee's calibration, the on-policy rounds, the property acceptance table, advice).

    Attributes:
        key: its entry in ``model_card.json``.
        title: its heading in ``model_card.md``.
        data: JSON-able values for the JSON card.
        markdown: its Markdown lines (tables, notes) under the heading.
        failures: gates it failed (they make the card FAILED).
    """

    key: str
    title: str
    data: Any
    markdown: Sequence[str] = ()
    failures: Sequence[str] = ()


# --- parity plots -------------------------------------------------------------------------


def parity_plots(reference: Mapping[str, np.ndarray], prediction: Mapping[str, np.ndarray], out_dir: str | Path) -> list[Path]:
    """Student-vs-reference parity PNGs in ``out_dir``; returns their paths.

    Energy per atom (eV/atom), force components (eV/Å) and, when any frame has a
    stress, stress components (GPa); each title carries the MAE, each plot ``y = x``.
    ``reference`` and ``prediction`` are label dicts (``energy``, ``forces``,
    ``stress`` in eV, eV/Å, eV/Å³, and ``n_atoms``) for the same frames.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = reference["n_atoms"]
    panels = [
        ("energy", reference["energy"] / n, prediction["energy"] / n, "energy", "eV/atom", 1e3, "meV/atom"),
        ("forces", reference["forces"].ravel(), prediction["forces"].ravel(), "force components", "eV/Å", 1e3, "meV/Å"),
    ]
    with_stress = np.isfinite(reference["stress"]).all(axis=(1, 2))
    if with_stress.any():
        panels.append((
            "stress",
            reference["stress"][with_stress].ravel() / units.GPa,
            prediction["stress"][with_stress].ravel() / units.GPa,
            "stress components", "GPa", 1.0, "GPa",
        ))
    return [_parity_plot(out_dir / PLOTS[key], *panel) for key, *panel in panels]


def _parity_plot(
    path: Path, x: np.ndarray, y: np.ndarray, what: str, unit: str, mae_scale: float, mae_unit: str
) -> Path:
    """One parity plot of ``y`` (student) against ``x`` (reference), saved to ``path``."""
    # the object-oriented API renders with Agg without switching pyplot's global
    # backend, so a notebook's inline plotting is left alone
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    ax.scatter(x, y, s=6, alpha=0.5, linewidths=0, rasterized=True)
    lo, hi = (float(min(x.min(), y.min())), float(max(x.max(), y.max()))) if x.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    mae = float(np.mean(np.abs(y - x))) * mae_scale if x.size else math.nan
    ax.set_title(f"{what}: MAE {mae:.3g} {mae_unit}")
    ax.set_xlabel(f"reference / {unit}")
    ax.set_ylabel(f"student / {unit}")
    fig.savefig(path, dpi=120)
    return path


# --- model card ---------------------------------------------------------------------------


def write_model_card(
    out_dir: str | Path,
    *,
    metrics: Any,
    gates: Any,
    failures: Sequence[str],
    speed: Mapping[str, float] | None = None,
    metadata: Mapping[str, object],
    sections: Sequence[CardSection] = (),
) -> tuple[Path, Path]:
    """Write ``model_card.json`` (every number) and ``model_card.md`` (for people) to ``out_dir``.

    ``metrics`` is a :class:`~torchsim_distill.distill.evaluation.Metrics`, ``gates`` a
    :class:`~torchsim_distill.distill.evaluation.Gates`, ``failures`` the failed gates
    and ``speed`` what :func:`~torchsim_distill.distill.evaluation.measure_speed`
    returned. ``metadata`` describes the student and its data (``student``,
    ``teacher``, ``teacher_source`` (its name, package version and file hash:
    :func:`~torchsim_distill.distill.teachers.teacher_provenance`), ``species``,
    ``n_frames``, ``data_hash``, …: any JSON-able values);
    parity plots already in ``out_dir`` are linked from the Markdown card; ``sections``
    follow the errors (their failures are expected among ``failures``).

    Returns:
        ``(json_path, md_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [name for name in PLOTS.values() if (out_dir / name).is_file()]
    metric_values, gate_values = dataclasses.asdict(metrics), dataclasses.asdict(gates)
    card = {
        "passed": not failures,
        "failures": list(failures),
        "metrics": metric_values,
        "units": dict(METRIC_UNITS),
        "gates": gate_values,
        "speed": dict(speed) if speed is not None else None,
        "metadata": dict(metadata),
        "plots": plots,
        **{section.key: section.data for section in sections},
    }
    json_path, md_path = out_dir / CARD_JSON, out_dir / CARD_MD
    # strict JSON (NaN → null) so any reader, not just Python's, can load the card
    json_path.write_text(portable(json.dumps(jsonable(card), indent=2, ensure_ascii=False, allow_nan=False)) + "\n")
    text = markdown_card(metric_values, gate_values, failures, speed, dict(metadata), plots)
    extra = [line for s in sections for line in (f"## {s.title}", "", *s.markdown, "")]
    md_path.write_text(portable(_insert_before_plots(text, extra)))
    return json_path, md_path


def portable(text: str) -> str:
    """``text`` without the paths of the machine it was written on: a card travels with its
    student (into the package, a repository, a paper's supplement), so paths under the
    working directory become relative to it and those under the home directory start at
    ``~``. Other absolute paths (a user's data elsewhere) are left as they are."""
    for root, short in ((Path.cwd(), ""), (Path.home(), "~/")):
        prefix = str(root).rstrip("/") + "/"
        if prefix != "/":
            text = text.replace(prefix, short)
    return text


def name_card(out_dir: str | Path, name: str) -> None:
    """Give the card in ``out_dir`` the student's name (``metadata["name"]``, and the title of
    ``model_card.md``), for a student that ships under a name (``cu-au-sevennet0``)."""
    json_path, md_path = Path(out_dir) / CARD_JSON, Path(out_dir) / CARD_MD
    card = json.loads(json_path.read_text())
    card["metadata"] = {"name": name, **{k: v for k, v in card.get("metadata", {}).items() if k != "name"}}
    json_path.write_text(json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    lines = md_path.read_text().split("\n")
    lines[0] = f"# Model card: {name}"
    md_path.write_text("\n".join(lines))


def add_card_section(out_dir: str | Path, section: CardSection) -> None:
    """Add ``section`` to a card already written in ``out_dir`` (JSON entry, Markdown before
    the plots), for a part that needs the evaluation's numbers, such as the advice."""
    json_path, md_path = Path(out_dir) / CARD_JSON, Path(out_dir) / CARD_MD
    card = json.loads(json_path.read_text())
    card[section.key] = section.data
    json_path.write_text(portable(json.dumps(jsonable(card), indent=2, ensure_ascii=False, allow_nan=False)) + "\n")
    md_path.write_text(portable(_insert_before_plots(md_path.read_text(),
                                                     [f"## {section.title}", "", *section.markdown, ""])))


def markdown_card(
    metrics: Mapping[str, Any],
    gates: Mapping[str, Any],
    failures: Sequence[str],
    speed: Mapping[str, float] | None,
    metadata: Mapping[str, object],
    plots: Sequence[str],
) -> str:
    """The Markdown model card, from the card's plain values (``metrics`` and ``gates`` as dicts)."""
    student = metadata.get("student", "distilled student")
    # the student's own name when it has one; the architecture is in "What this is"
    lines = [f"# Model card: {metadata.get('name') or student}", ""]
    lines.append(f"**Gates: {'PASSED' if not failures else 'FAILED'}**")
    lines += [f"- ✗ {f}" for f in failures]
    lines += _md_what(metadata)
    lines += _md_errors(metrics, gates)
    lines += _md_per_kind(metrics.get("per_kind") or {})
    lines += _md_speed(speed, gates.get("min_speedup"))
    if plots:
        lines += ["## Parity plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _insert_before_plots(text: str, lines: Sequence[str]) -> str:
    """``text`` with ``lines`` placed before its parity plots (at the end without plots)."""
    if not lines:
        return text
    marker = "## Parity plots"
    head, sep, tail = text.partition(marker)
    return head + "\n".join(lines) + "\n" + sep + tail if sep else text.rstrip("\n") + "\n\n" + "\n".join(lines)


def _md_what(metadata: Mapping[str, object]) -> list[str]:
    lines = ["", "## What this is", ""]
    teacher, source = metadata.get("teacher"), metadata.get("teacher_source") or {}
    which = ", ".join(filter(None, (
        f"{source['package']} {source['version']}" if source.get("package") and source.get("version") else None,
        f"modal {source['modal']}" if source.get("modal") else None,
        f"file sha256 {source['sha256'][:12]}…" if source.get("sha256") else None,
    )))
    lines.append(
        f"A student potential distilled from the teacher `{teacher}`{f' ({which})' if which else ''}, evaluated on "
        "frames the teacher labelled."
        if teacher is not None else "A student potential evaluated against reference labels."
    )
    dispersion = metadata.get("teacher_dispersion")
    if dispersion not in (None, "none"):  # said once more in words: adding it again counts D3 twice
        lines.append(f"The teacher ran with a dispersion correction, {dispersion}: the student has it built in, "
                     "so do not add `dispersion=` on top of it.")
    elif dispersion == "none":
        lines.append("The teacher ran without a dispersion correction (none in the labels): add D3 at run time "
                     "(`dispersion=\"d3bj\"`) if the teacher is normally used with it.")
    lines.append("")
    for key, value in metadata.items():
        lines.append(f"- **{key}**: {_fmt_meta(value)}")
    return lines


def _md_errors(metrics: Mapping[str, Any], gates: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Errors against the reference", "", "| metric | value | gate | pass |", "|---|---|---|---|"]
    for label, key in (("energy MAE", "energy_mae"), ("force MAE", "force_mae"), ("stress MAE", "stress_mae")):
        value, unit, limit = metrics[key], METRIC_UNITS[key], gates[key]
        if value is None:
            lines.append(f"| {label} | n/a (no cell volume) | ≤ {limit:.4g} {unit} | – |")
        else:
            mark = "✓" if value <= limit else "✗"
            lines.append(f"| {label} | {value:.4g} {unit} | ≤ {limit:.4g} {unit} | {mark} |")
    lines.append(f"| force cosine | {metrics['force_cosine']:.4f} | – | – |")
    lines += ["", f"{metrics['n_frames']} frames, {metrics['n_atoms']} atoms.", ""]
    return lines


def _md_per_kind(per_kind: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not per_kind:
        return []
    lines = ["## Errors by kind of frame", "",
             "| kind | frames | atoms | energy MAE (meV/atom) | force MAE (meV/Å) | force cosine | stress MAE (GPa) |",
             "|---|---|---|---|---|---|---|"]
    for kind, m in per_kind.items():
        stress = "n/a" if m["stress_mae"] is None else f"{m['stress_mae']:.4g}"
        lines.append(f"| {kind} | {m['n_frames']} | {m['n_atoms']} | {m['energy_mae']:.4g} | {m['force_mae']:.4g} | "
                     f"{m['force_cosine']:.4f} | {stress} |")
    lines.append("")
    return lines


def _md_speed(speed: Mapping[str, float] | None, min_speedup: float | None) -> list[str]:
    lines = ["## Speed", ""]
    if speed is None:
        return lines + ["Not measured (no teacher given).", ""]
    lines += ["One batched call on the same state, median of interleaved repeats.", "",
              "| | value |", "|---|---|",
              f"| student | {speed['t_student_s'] * 1e3:.3g} ms |",
              f"| teacher | {speed['t_teacher_s'] * 1e3:.3g} ms |"]
    mark = ""
    if min_speedup is not None:
        mark = f" ({'✓' if speed['speedup'] >= min_speedup else '✗'} gate ≥ {min_speedup:.3g}×)"
    lines += [f"| speedup | {speed['speedup']:.3g}×{mark} |",
              f"| systems / atoms | {speed['n_systems']} / {speed['n_atoms']} |",
              f"| torch threads | {speed['torch_threads']} |", ""]
    return lines


def _fmt_meta(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return f"`{value}`"
