"""The model card's parts beyond the frame errors: split, committee, distorted frames, rounds, properties, advice.

Each builder turns what a stage measured into a :class:`~torchsim_distill.distill.model_card.CardSection`
(JSON values, Markdown lines, failed gates)::

    section = committee_section(calc, test_frames, description="...", threshold=0.1)
    evaluate_student(calc, test_frames, "report/", sections=[section, rounds_section(records)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ase import Atoms

from torchsim_distill.distill.acceptance import AcceptanceReport
from torchsim_distill.distill.calibration import ERROR_LEVEL, calibrate_on
from torchsim_distill.distill.evaluation import (
    Gates,
    compute_metrics,
    near_and_far,
    predict,
    reference_labels,
)
from torchsim_distill.distill.model_card import CardSection


def split_section(how: str, n_frames: dict[str, int]) -> CardSection:
    """Which split the held-out frames come from, and why."""
    counts = ", ".join(f"{k} {v}" for k, v in n_frames.items())
    return CardSection("split", "Data split", {"how": how, "n_frames": n_frames}, [f"{how} ({counts} frames)."])


def budget_section(plan: dict[str, Any], stages: dict[str, dict[str, Any]]) -> CardSection:
    """The budget's plan (``Plan.to_dict()``): what it chose and why, and per stage the
    estimate beside the seconds it took (``run.json``'s stages; the acceptance suite and the
    evaluation are timed after this card section is made, so their column stays open)."""
    s = plan["settings"]
    lines = [
        f"Budget {plan['budget_s'] / 60:.1f} min: {s['n_configs']} configs, size {s['size']}, {s['max_epochs']} epochs, "
        f"committee {s['committee']}, rounds {s['rounds']}"
        + (", MD and relaxations driven by a first student" if s.get("explore") == "student" else "")
        + (f" (kept as given: {', '.join(plan['kept'])})" if plan["kept"] else "") + ".",
        "",
        *[f"- {r}" for r in [*plan["reasons"], *plan.get("notes", [])]],
        "",
        "| stage | estimated, s | took, s |",
        "|---|---:|---:|",
    ]
    for stage, estimate in plan["estimates"].items():
        took = stages.get(stage, {}).get("seconds")
        lines.append(f"| {stage} | {estimate:.0f} | {'' if took is None else f'{took:.0f}'} |")
    lines.append(f"| total | {plan['total_s']:.0f} | |")
    return CardSection("budget", "Budget and plan", plan, lines)


def exploration_section(sample: dict[str, Any], explore: dict[str, Any] | None) -> CardSection | None:
    """Which model drove the sample's MD and relaxations, and what it cost: ``run.json``'s
    ``"sample"`` record and, when a first student drove, its ``"explore"`` record (see
    :mod:`~torchsim_distill.distill.exploration`). ``None`` when the run did not record a driver."""
    if explore is None:
        if not sample.get("driver"):
            return None
        return CardSection("exploration", "Exploration", {"driver": "teacher", "why": sample.get("why")},
                           [f"The teacher drove the MD and relaxations of the sample: {sample.get('why')}."])
    def us(key: str) -> str:
        return "" if explore.get(key) is None else f"{explore[key]:.0f}"

    val = explore.get("validation") or {}
    lines = [
        f"A first student (nequip, {explore['size']}, {explore['epochs']} epochs on the {explore['n_static']} "
        f"teacher-labelled static frames, eager) drove the MD and relaxations ({explore['n_driven']} frames"
        + (f", {explore['n_dropped']} implausible ones dropped" if explore.get("n_dropped") else "")
        + f"); the teacher labelled them only. Why: {explore.get('why')}.",
        "",
        "| model | us per atom and call | seconds |",
        "|---|---:|---:|",
        f"| teacher (labelling the static frames) | {us('teacher_us_per_atom')} | {explore['label_s']:.0f} |",
        f"| first student (training) | | {explore['train_s']:.0f} |",
        f"| first student (driving MD and relaxations) | {us('student_us_per_atom')} | {explore['drive_s']:.0f} |",
    ]
    if val:
        lines += ["", f"The first student's validation errors (epoch {val['epoch'] + 1}): {val['energy_mae']:.1f} "
                      f"meV/atom, {val['force_mae']:.0f} meV/A."]
    return CardSection("exploration", "Exploration", explore, lines)


def near_far_section(
    calc, frames: Sequence[Atoms], gates: Gates, validation: dict[str, Any] | None = None
) -> CardSection | None:
    """The student's errors near equilibrium and far from it, apart (far: two atoms closer
    than ``gates.distorted_distance`` Å), on the held-out ``frames`` and, when the training
    logged them apart (``validation``, from ``validation_near_far``), on the validation
    frames at the best epoch: a far-frame error must not hide a near-equilibrium plateau,
    nor the reverse. ``None`` when there is nothing to tell apart."""
    near, far = near_and_far(frames, gates.distorted_distance)
    if not (near and far) and validation is None:
        return None
    data: dict[str, Any] = {"distance": gates.distorted_distance, "validation": validation, "held_out": {}}
    lines = [
        f"Far from equilibrium: two atoms closer than {gates.distorted_distance:g} Å.",
        "",
        "| frames | n | energy MAE, meV/atom | force MAE, meV/Å | stress MAE, GPa |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, part in (("near", near), ("far", far)):
        if not part:
            continue
        m = compute_metrics(reference_labels(part), predict(calc, part), part)
        data["held_out"][name] = {"n_frames": len(part), **m.as_dict()}
        lines.append(f"| held-out, {name} | {len(part)} | {_f(m.energy_mae)} | {_f(m.force_mae)} | {_f(m.stress_mae)} |")
    if validation is not None:
        for name in ("near", "far"):
            v = validation[name]
            lines.append(f"| validation at the best epoch ({validation['epoch'] + 1}), {name} | | "
                         f"{_f(v['energy_mae'])} | {_f(v['force_mae'])} | {_f(v['stress_mae'])} |")
    return CardSection("near_far", "Near and far from equilibrium", data, lines)


def committee_section(calc, frames: Sequence[Atoms], *, description: str, threshold: float) -> CardSection:
    """The committee and how well its spread ranks the student's true errors on ``frames``.

    Calibration is measured on held-out frames: the Spearman rank correlation between
    the per-structure uncertainty ``u_s = max_i σ_i`` and the true error
    ``e_s = max_i |F_student − F_teacher|``, and the share of frames with
    ``e_s > 0.3 eV/Å`` that ``u_s > threshold`` flags.
    """
    cal = calibrate_on(calc, frames, threshold=threshold)
    data = {"members": description, "size": len(calc.committee) + 1, "calibration": cal}
    lines = [
        f"Members: {description}. Uncertainty of a structure: the largest over its atoms of the committee's "
        "force spread (eV/Å); structures above the threshold are flagged at run time.",
        "",
        "| on the held-out frames | value |",
        "|---|---|",
        f"| rank correlation (Spearman) of uncertainty and true force error | {_f(cal['spearman'])} |",
        f"| frames with force error > {ERROR_LEVEL} eV/Å | {cal['n_bad']} of {cal['n_frames']} |",
        f"| of those, flagged at {threshold:g} eV/Å (recall) | {_f(cal['recall'])} |",
        f"| flagged frames that are bad (precision) | {_f(cal['precision'])} |",
        f"| frames flagged | {cal['n_flagged']} ({_f(cal['flagged_fraction'])}) |",
    ]
    return CardSection("committee", "Committee and uncertainty", data, lines)


def distorted_section(calc, frames: Sequence[Atoms], gates: Gates, *, threshold: float) -> CardSection:
    """The strongly distorted held-out frames, judged apart: the student's force error on
    them and, with a committee, the share of its badly predicted ones (force error above
    0.3 eV/Å) that the committee flags at ``threshold`` eV/Å."""
    metrics = compute_metrics(reference_labels(frames), predict(calc, frames), frames)
    data: dict[str, Any] = {"n_frames": len(frames), "nearest_below": gates.distorted_distance,
                            "metrics": metrics.as_dict(), "gate_force_mae": gates.distorted_force_mae}
    failures = []
    if gates.distorted_force_mae is not None and not metrics.force_mae <= gates.distorted_force_mae:
        failures.append(f"force MAE on the strongly distorted frames = {metrics.force_mae:.4g} meV/Å exceeds "
                        f"the gate of {gates.distorted_force_mae:.4g} meV/Å")
    lines = [
        f"{len(frames)} held-out frames with two atoms closer than {gates.distorted_distance:g} Å, judged apart "
        "from the others (the gates above apply to those).",
        "",
        "| on the strongly distorted frames | value | gate |",
        "|---|---|---|",
        f"| energy MAE, meV/atom | {_f(metrics.energy_mae)} | |",
        f"| force MAE, meV/Å | {_f(metrics.force_mae)} | ≤ {_f(gates.distorted_force_mae)} |",
    ]
    if calc.committee:
        cal = calibrate_on(calc, frames, threshold=threshold)
        data["calibration"] = cal
        need = gates.distorted_flag_recall
        lines.append(f"| frames with force error > {ERROR_LEVEL} eV/Å flagged at {threshold:g} eV/Å | "
                     f"{round(cal['recall'] * cal['n_bad']) if cal['n_bad'] else 0} of {cal['n_bad']} | "
                     f"{'' if need is None else f'≥ {100 * need:g} %'} |")
        if need is not None and cal["n_bad"] and not cal["recall"] >= need:
            failures.append(f"the committee flags {100 * cal['recall']:.3g} % of the distorted frames with a force "
                            f"error above {ERROR_LEVEL} eV/Å, below the gate of {100 * need:g} %")
    elif gates.distorted_flag_recall is not None:
        failures.append("the gates ask the committee to flag the distorted frames, but this student has no committee")
    return CardSection("distorted", "Strongly distorted frames", data, lines, failures)


def rounds_section(records: Sequence[dict[str, Any]], *, trust: tuple[float, float]) -> CardSection:
    """One row per on-policy round: what was proposed, selected, labelled, and the errors."""
    lines = [
        f"Frames from the student's own MD and relaxations, selected between trust levels {trust[0]:g} and "
        f"{trust[1]:g} eV/Å of committee spread, labelled by the teacher. Errors on a round's new frames are "
        "measured *before* training on them (out of sample); held-out errors after its fine-tune.",
        "",
        "| round | proposed | below / in / above trust | selected | labelled | new frames before: E (meV/atom), "
        "F (meV/Å) | committee rank corr. on new | held-out after: E, F, σ (GPa) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        before, after = rec.get("new_frames_before"), rec.get("held_out_after")
        cal = rec.get("committee_on_new") or {}
        lines.append(
            f"| {rec['round']} | {rec['proposed']} | {rec['below_trust']} / {rec['in_trust']} / {rec['above_trust']} "
            f"| {rec['selected']} | {rec.get('labelled', 0)} | "
            f"{_f(before and before['energy_mae'])}, {_f(before and before['force_mae'])} | {_f(cal.get('spearman'))} | "
            f"{_f(after and after['energy_mae'])}, {_f(after and after['force_mae'])}, {_f(after and after['stress_mae'])} |"
        )
    stops = [f"Round {rec['round']} ended the rounds: {rec['stopped']}." for rec in records if rec.get("stopped")]
    return CardSection("rounds", "On-policy rounds", list(records), [*lines, "", *stops])


def acceptance_section(report: AcceptanceReport) -> CardSection:
    """The properties of teacher and student side by side, each with its gate."""
    failures = [
        f"{row.property} of {row.system}: student {_f(row.student)} vs teacher {_f(row.teacher)} {row.unit} "
        f"(gate {row.gate})" for row in report.failures
    ] + [f"acceptance measurement failed: {what}: {message}" for what, message in report.errors.items()]
    lines = report.to_markdown().splitlines()
    if lines and lines[0].startswith("## "):  # the card gives the section its own heading
        lines = lines[2:]
    return CardSection("acceptance", "Property acceptance: teacher vs student", report.to_dict(), lines, failures)


def intended_use_section(
    frames: Sequence[Atoms], sampling: Any, *, excluded_kinds: Sequence[str] = (), flag_threshold: float | None = None
) -> CardSection:
    """What the student was trained on, hence what it is for: its elements, the composition,
    strain and temperature range of its training frames (``sampling`` is the run's
    :class:`~torchsim_distill.distill.sampling.SamplingOptions`), and what falls outside it
    (the kinds kept out of training, what the committee flags at ``flag_threshold`` eV/Å).
    Measured from the frames, so the card says what the data covered, not what was asked."""
    species = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    fractions = {el: [atoms.get_chemical_symbols().count(el) / len(atoms) for atoms in frames] for el in species}
    kinds = sorted({str(atoms.info.get("kind", "unknown")) for atoms in frames})
    sizes = [len(atoms) for atoms in frames]
    data: dict[str, Any] = {
        "species": species,
        "composition": {el: [min(x), max(x)] for el, x in fractions.items()},
        "atoms_per_frame": [min(sizes), max(sizes)] if sizes else [],
        "kinds": kinds,
        "max_strain": getattr(sampling, "max_strain", None),
        "max_shear": getattr(sampling, "max_shear", None),
        "min_compression": getattr(sampling, "min_compression", None),
        "rattle_amplitudes": list(getattr(sampling, "rattle_amplitudes", ())),
        "temperatures": list(getattr(sampling, "temperatures", ())),
        "excluded_kinds": list(excluded_kinds),
        "flag_threshold": flag_threshold,
    }
    comp = "; ".join(f"{el} {100 * lo:.0f}–{100 * hi:.0f} %" for el, (lo, hi) in data["composition"].items())
    lines = [
        f"- **Elements**: {', '.join(species)} only; any other element is refused at run time.",
        f"- **Compositions trained on** (atom fractions per frame): {comp}; {data['atoms_per_frame'][0]}–"
        f"{data['atoms_per_frame'][1]} atoms per frame." if sizes else "- **Compositions**: no frames.",
        f"- **Distortions**: {'isotropic and axial' if 'axial_strain' in kinds else 'isotropic'} strain up to "
        f"±{100 * data['max_strain']:.3g} %, shear up to "
        f"{100 * data['max_shear']:.3g} %, compression down to {data['min_compression']:g} of the lattice "
        f"constant, rattles of {', '.join(f'{a:g}' for a in data['rattle_amplitudes'])} Å."
        if data["max_strain"] is not None else "- **Distortions**: as sampled (see the run's options).",
        f"- **Temperatures** (MD frames): {', '.join(f'{t:g}' for t in data['temperatures'])} K; beyond the "
        "hottest, the student extrapolates." if data["temperatures"] else "- **Temperatures**: no MD frames.",
        f"- **Kinds of frames**: {', '.join(kinds)}.",
    ]
    defects = _defects_line(frames)
    if defects:
        data["point_defects"] = defects.removeprefix("- **Point defects**: ")
        lines.insert(3, defects)
    if excluded_kinds:
        lines.append(f"- **Kept out of training**: {', '.join(excluded_kinds)} (strongly compressed or distorted "
                     "frames): the student is not meant for them, and its errors there are in the card.")
    if flag_threshold is not None:
        lines.append(f"- **What the committee flags**: structures whose committee force spread exceeds "
                     f"{flag_threshold:g} eV/Å on some atom (`uncertainty=True` returns it per structure): treat "
                     "those results as outside the student's domain and check them with the teacher.")
    lines.append("- **Not for**: other elements, molecules or surfaces unlike the training frames, pressures far "
                 "beyond the sampled strains, melts hotter than the hottest MD above, or long-range (dispersion, "
                 "charge) physics the teacher itself lacks.")
    return CardSection("intended_use", "Intended use and limits", data, lines)


def _defects_line(frames: Sequence[Atoms]) -> str | None:
    """The card's line on point defects: which the training frames hold, in cells of how many atoms."""
    vacancy = [len(a) for a in frames if a.info.get("kind") == "vacancy"]
    paths = {}
    for atoms in frames:
        if atoms.info.get("kind") == "defect_relax":
            paths.setdefault(str(atoms.info.get("defect", "defect")), []).append(len(atoms))
    parts = [f"unrelaxed vacancies ({min(vacancy)}–{max(vacancy)} atoms)"] if vacancy else []
    parts += [f"{defect} relaxation paths to the relaxed {defect}, at fixed cell ({min(n)}–{max(n)} atoms)"
              for defect, n in sorted(paths.items(), key=lambda item: item[0] != "vacancy")]
    return f"- **Point defects**: {'; '.join(parts)}." if parts else None


def advice_section(lines: Sequence[str]) -> CardSection:
    """What to try when a gate failed (from :func:`~torchsim_distill.distill.advice.advise`)."""
    return CardSection("advice", "Advice", list(lines), [f"- {line}" for line in lines])


def _f(x: float | None) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.3g}"
