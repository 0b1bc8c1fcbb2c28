"""Evaluate a distilled student against its teacher: errors, speed, gates, then the card.

The last distillation stage: the student predicts held-out frames the teacher labelled,
the errors are compared with acceptance gates, and everything lands in a model card
(written by :mod:`torchsim_distill.distill.model_card`)::

    report = evaluate_student(student, test_frames, "eval/", teacher="emt", gates=Gates(min_speedup=2.0))
    report.passed, report.metrics.force_mae, report.speed["speedup"]
    report.paths["model_card_md"]  # eval/model_card.md, written whether or not the gates passed

Every model here is a torch-sim ``ModelInterface`` (see :mod:`torchsim_distill.distill.teachers`):
energy ``[n_systems]`` eV, forces ``[n_atoms, 3]`` eV/Å, stress ``[n_systems, 3, 3]`` eV/Å³
(ASE sign). Errors are reported in the field's usual units: meV/atom, meV/Å and GPa.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms, units
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError
from torch_sim.models.interface import ModelInterface

from torchsim_distill.distill.model_card import CardSection, parity_plots, write_model_card
from torchsim_distill.distill.properties import shortest_bond
from torchsim_distill.distill.teachers import _MIN_VOLUME, load_teacher
from torchsim_distill.utils.batching import pbc_batches, to_numpy
from torchsim_distill.utils.options import cli
from torchsim_distill.utils.timing import interleaved, median, synchronizer

#: 1 eV/Å³ in GPa.
EV_PER_A3_TO_GPA = 1 / units.GPa
#: Atoms whose teacher force is below this norm (eV/Å) have no meaningful direction,
#: so they are left out of the force cosine.
COSINE_MIN_FORCE = 1e-3

#: A label dict: ``energy [n_frames]`` eV, ``forces [n_atoms, 3]`` eV/Å (frames concatenated
#: in order), ``stress [n_frames, 3, 3]`` eV/Å³ (NaN where a frame has no cell volume or no
#: stress), ``n_atoms [n_frames]``.
Labels = dict[str, np.ndarray]


# --- labels -------------------------------------------------------------------------------


def predict(model: ModelInterface | str | Path, frames: Sequence[Atoms], *, batch_size: int = 16) -> Labels:
    """Run ``model`` on ``frames``, ``batch_size`` systems per call, and return its labels.

    torch-sim states hold one ``pbc`` for all their systems, so a batch is cut
    wherever consecutive frames change ``pbc`` (bulk and molecules may be mixed).

    Args:
        model: a torch-sim model, or anything :func:`~torchsim_distill.distill.teachers.load_teacher`
            accepts (a teacher name, an ASE calculator, a compiled ``.nequip.pt2``).
        frames: structures; their calculators, if any, are ignored.
        batch_size: most systems per model call.

    Returns:
        A :data:`Labels` dict of float64 numpy arrays in eV, eV/Å, eV/Å³.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if not frames:
        raise ValueError("no frames to predict")
    model = load_teacher(model)
    energy, forces, stress = [], [], []
    for chunk in pbc_batches(frames, batch_size):
        state = ts.io.atoms_to_state(chunk, model.device, model.dtype)
        out = model(state)
        energy.append(to_numpy(out["energy"]).reshape(-1))
        forces.append(to_numpy(out["forces"]).reshape(-1, 3))
        if "stress" in out:
            stress.append(to_numpy(out["stress"]).reshape(-1, 3, 3))
        else:
            stress.append(np.full((len(chunk), 3, 3), np.nan))
    labels = {
        "energy": np.concatenate(energy),
        "forces": np.concatenate(forces),
        "stress": np.concatenate(stress),
        "n_atoms": _n_atoms(frames),
    }
    # models return zero stress for systems without volume; NaN keeps them out of every metric
    labels["stress"][~_has_volume(frames)] = np.nan
    return labels


def reference_labels(frames: Sequence[Atoms]) -> Labels:
    """The labels stored on ``frames`` (as :func:`~torchsim_distill.distill.labeling.label_frames` writes them).

    Stress is NaN for frames without a cell volume or without a stored stress.

    Raises:
        ValueError: naming the first frame without energy or forces.
    """
    if not frames:
        raise ValueError("no frames given")
    energy, forces, stress = [], [], []
    for i, atoms in enumerate(frames):
        if atoms.calc is None:
            raise ValueError(f"frame {i} ({_name(atoms, i)}) has no labels: it carries no calculator")
        try:
            energy.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
        except PropertyNotImplementedError as err:
            raise ValueError(f"frame {i} ({_name(atoms, i)}) lacks an energy or force label: {err}") from None
        s = np.full((3, 3), np.nan)
        if abs(np.linalg.det(atoms.cell.array)) > _MIN_VOLUME:
            try:
                s = atoms.get_stress(voigt=False)
            except PropertyNotImplementedError:
                pass
        stress.append(s)
    return {
        "energy": np.asarray(energy, dtype=np.float64),
        "forces": np.concatenate(forces).astype(np.float64),
        "stress": np.stack(stress).astype(np.float64),
        "n_atoms": _n_atoms(frames),
    }


def has_labels(frames: Sequence[Atoms]) -> bool:
    """Whether every frame carries an energy and forces (so it can serve as the reference)."""
    for atoms in frames:
        results = getattr(atoms.calc, "results", None) or {}
        if "energy" not in results or "forces" not in results:
            return False
    return True


def dataset_hash(frames: Sequence[Atoms]) -> str:
    """SHA-256 over the frames' species, positions, cells and pbc (labels excluded).

    Identifies the evaluation set in a model card: the same structures give the same
    hash whatever teacher labelled them.
    """
    digest = hashlib.sha256()
    for atoms in frames:
        for array in (atoms.numbers.astype(np.int64), atoms.positions.astype(np.float64),
                      atoms.cell.array.astype(np.float64), np.asarray(atoms.pbc, dtype=np.bool_)):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# --- metrics ------------------------------------------------------------------------------


@dataclass
class Metrics:
    """Student errors against the reference.

    Attributes:
        energy_mae: mean over frames of ``|ΔE| / n_atoms``, meV/atom.
        force_mae: mean over all force components of ``|ΔF|``, meV/Å.
        force_cosine: mean over atoms of ``F_s·F_t / (|F_s| |F_t|)``, for atoms whose
            teacher force exceeds :data:`COSINE_MIN_FORCE`; 1 means every direction is
            right (NaN when no atom qualifies).
        stress_mae: mean over the 9 components of frames with a cell volume of ``|Δσ|``,
            GPa; ``None`` when no frame has a volume (molecules only).
        n_frames, n_atoms: how much data the numbers rest on.
        per_kind: the same numbers for each ``info["kind"]`` (empty without kinds).
    """

    energy_mae: float
    force_mae: float
    force_cosine: float
    stress_mae: float | None
    n_frames: int
    n_atoms: int
    per_kind: dict[str, Metrics] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain numbers (``per_kind`` nested), ready for JSON."""
        return asdict(self)


def compute_metrics(reference: Labels, prediction: Labels, frames: Sequence[Atoms]) -> Metrics:
    """Errors of ``prediction`` against ``reference`` on ``frames``, overall and per kind.

    Args:
        reference, prediction: :data:`Labels` for the same ``frames`` in the same order.
        frames: the structures; their ``info["kind"]`` drives the per-kind breakdown
            (frames without one count as ``"unknown"``).
    """
    n_atoms = _n_atoms(frames)
    for name, labels in (("reference", reference), ("prediction", prediction)):
        if labels["energy"].shape != (len(frames),) or labels["forces"].shape != (int(n_atoms.sum()), 3):
            raise ValueError(
                f"{name} labels do not match the frames: energy {labels['energy'].shape}, forces "
                f"{labels['forces'].shape}; expected ({len(frames)},) and ({int(n_atoms.sum())}, 3)"
            )
    overall = _metrics(reference, prediction, n_atoms, np.ones(len(frames), dtype=bool))
    kinds = [atoms.info.get("kind") for atoms in frames]
    if any(k is not None for k in kinds):
        names = np.array([str(k) if k is not None else "unknown" for k in kinds])
        for kind in dict.fromkeys(names):  # first-seen order
            overall.per_kind[kind] = _metrics(reference, prediction, n_atoms, names == kind)
    return overall


def _metrics(reference: Labels, prediction: Labels, n_atoms: np.ndarray, frame_mask: np.ndarray) -> Metrics:
    """Metrics over the frames selected by ``frame_mask`` ``[n_frames]``."""
    atom_mask = np.repeat(frame_mask, n_atoms)
    de = (prediction["energy"] - reference["energy"])[frame_mask] / n_atoms[frame_mask]
    f_ref, f_pred = reference["forces"][atom_mask], prediction["forces"][atom_mask]
    norm_ref, norm_pred = np.linalg.norm(f_ref, axis=1), np.linalg.norm(f_pred, axis=1)
    moving = norm_ref > COSINE_MIN_FORCE
    # a zero student force has no direction: it scores 0, not NaN
    cosine = np.sum(f_ref[moving] * f_pred[moving], axis=1) / (
        norm_ref[moving] * np.maximum(norm_pred[moving], np.finfo(float).tiny)
    )
    with_stress = frame_mask & np.isfinite(reference["stress"]).all(axis=(1, 2))
    ds = prediction["stress"][with_stress] - reference["stress"][with_stress]
    return Metrics(
        energy_mae=float(np.mean(np.abs(de)) * 1e3),
        force_mae=float(np.mean(np.abs(f_pred - f_ref)) * 1e3),
        force_cosine=float(np.mean(cosine)) if cosine.size else math.nan,
        stress_mae=float(np.mean(np.abs(ds)) * EV_PER_A3_TO_GPA) if ds.size else None,
        n_frames=int(frame_mask.sum()),
        n_atoms=int(n_atoms[frame_mask].sum()),
    )


# --- speed --------------------------------------------------------------------------------


def measure_speed(
    student: ModelInterface | str | Path,
    teacher: ModelInterface | str | Path | BaseCalculator,
    frames: Sequence[Atoms],
    *,
    repeats: int = 3,
) -> dict[str, float | int]:
    """Wall time of one batched call of each model on one state holding all ``frames``.

    Timed with :func:`~torchsim_distill.utils.timing.interleaved`: both models first
    get one untimed warm-up call (kernel compilation, allocator), then ``repeats``
    rounds of one call each, the round's first model alternating, so drifts in
    machine load hit both alike; the median per model is kept. GPU work is waited for
    inside the clock.

    Args:
        student, teacher: models, or anything ``load_teacher`` accepts.
        frames: structures sharing one ``pbc`` (they form a single torch-sim state).
        repeats: timed calls per model.

    Returns:
        ``t_student_s``, ``t_teacher_s`` (median seconds per call), ``speedup``
        (``t_teacher / t_student``), ``n_systems``, ``n_atoms``, ``torch_threads``, ``repeats``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    if not frames:
        raise ValueError("no frames to time")
    pbcs = {tuple(bool(p) for p in atoms.pbc) for atoms in frames}
    if len(pbcs) > 1:
        raise ValueError(
            f"measure_speed needs frames with one pbc (one torch-sim state), got {sorted(pbcs)}; "
            "time bulk and molecules separately"
        )
    student, teacher = load_teacher(student), load_teacher(teacher)
    state = ts.io.atoms_to_state(list(frames), student.device, student.dtype)
    # a model on another device or dtype gets the same state converted once, outside the clock
    teacher_state = state.to(device=teacher.device, dtype=teacher.dtype)
    syncs = [synchronizer(d) for d in dict.fromkeys((student.device, teacher.device))]
    times = interleaved(
        {"student": lambda: student(state), "teacher": lambda: teacher(teacher_state)},
        reps=repeats,
        warmup=1,
        sync=lambda: [sync() for sync in syncs],
    )
    t_student, t_teacher = median(times["student"]), median(times["teacher"])
    return {
        "t_student_s": t_student,
        "t_teacher_s": t_teacher,
        "speedup": t_teacher / t_student,
        "n_systems": len(frames),
        "n_atoms": int(state.n_atoms),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
    }


# --- gates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gates:
    """Acceptance thresholds for a student (frozen, so the shared default is safe).

    Attributes:
        energy_mae: most allowed energy MAE, meV/atom.
        force_mae: most allowed force MAE, meV/Å.
        stress_mae: most allowed stress MAE, GPa (not checked when no frame has a volume).
        min_speedup: least allowed ``t_teacher / t_student``; ``None`` skips the speed gate.
        distorted_force_mae: most allowed force MAE (meV/Å) on strongly distorted held-out
            frames, those with two atoms closer than ``distorted_distance`` Å; they are
            then judged apart (this gate, and the committee's flags on them) and the
            three gates above apply to the other frames. ``None``: one set of frames.
        distorted_distance: Å, the nearest distance that makes a frame strongly distorted.
        distorted_flag_recall: least share of the distorted frames with a force error
            above 0.3 eV/Å that the committee must flag (``None``: not gated).
    """

    energy_mae: float = field(default=5.0, metadata=cli("gate, meV/atom", flag="--max-energy-mae", always=True))
    force_mae: float = field(default=60.0, metadata=cli("gate, meV/A", flag="--max-force-mae", always=True))
    stress_mae: float = field(default=0.1, metadata=cli("gate, GPa", flag="--max-stress-mae", always=True))
    min_speedup: float | None = None
    distorted_force_mae: float | None = None
    distorted_distance: float = 2.0
    distorted_flag_recall: float | None = None


def split_distorted(frames: Sequence[Atoms], gates: Gates) -> tuple[list[Atoms], list[Atoms]]:
    """``frames`` as (near equilibrium, strongly distorted) under ``gates``; all near when
    the gates do not judge distorted frames apart."""
    if gates.distorted_force_mae is None:
        return list(frames), []
    return near_and_far(frames, gates.distorted_distance)


def near_and_far(frames: Sequence[Atoms], distance: float) -> tuple[list[Atoms], list[Atoms]]:
    """``frames`` as (near equilibrium, far from it): far when two atoms are closer than
    ``distance`` Å (:attr:`Gates.distorted_distance`), the rule of :func:`split_distorted`;
    what the validation and the card report apart, so that neither hides the other."""
    far = [shortest_bond(a, cutoff=distance) < distance for a in frames]
    return [a for a, f in zip(frames, far, strict=True) if not f], [a for a, f in zip(frames, far, strict=True) if f]


def check_gates(metrics: Metrics, gates: Gates, speed: Mapping[str, float] | None = None) -> list[str]:
    """Human-readable reasons the student fails ``gates``; an empty list means it passes.

    A NaN error (a model returning NaN) fails its gate; a speed gate without a
    ``speed`` measurement fails too, since it cannot be shown to pass.
    """
    failures = []
    for name, unit in (("energy_mae", "meV/atom"), ("force_mae", "meV/Å"), ("stress_mae", "GPa")):
        value, limit = getattr(metrics, name), getattr(gates, name)
        if value is None:
            continue
        if not value <= limit:  # written so that NaN fails
            failures.append(f"{name} = {value:.4g} {unit} exceeds the gate of {limit:.4g} {unit}")
    if gates.min_speedup is not None:
        if speed is None:
            failures.append(f"speedup not measured (no teacher to time), gate requires ≥ {gates.min_speedup:.3g}×")
        elif not speed["speedup"] >= gates.min_speedup:
            failures.append(f"speedup = {speed['speedup']:.3g}× is below the gate of {gates.min_speedup:.3g}×")
    return failures


# --- the stage ----------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured and wrote.

    Attributes:
        metrics: errors against the reference.
        speed: :func:`measure_speed`'s result, ``None`` without a teacher.
        failures: failed gates (empty when all pass).
        paths: ``model_card_json``, ``model_card_md`` and ``parity_<name>`` files.
        reference, prediction: the :data:`Labels` compared.
    """

    metrics: Metrics
    speed: dict[str, float | int] | None
    failures: list[str]
    paths: dict[str, Path]
    reference: Labels = field(repr=False)
    prediction: Labels = field(repr=False)

    @property
    def passed(self) -> bool:
        """Whether every gate passed."""
        return not self.failures


def evaluate_student(
    student: ModelInterface | str | Path,
    frames: Sequence[Atoms],
    out_dir: str | Path,
    *,
    teacher: ModelInterface | str | Path | BaseCalculator | None = None,
    gates: Gates = Gates(),
    metadata: Mapping[str, object] | None = None,
    batch_size: int = 16,
    sections: Sequence[CardSection] = (),
) -> EvaluationReport:
    """Evaluate ``student`` on ``frames``: metrics, parity plots, speed, gates, model card.

    The reference is the labels stored on ``frames`` when every frame has them,
    otherwise the ``teacher``'s predictions. With a ``teacher`` the speed is timed on
    the first ``batch_size`` frames that share the first frame's ``pbc``. Plots and the
    card are written whether or not the gates pass, so a failing student can be inspected.

    Args:
        student: the model under test, or anything ``load_teacher`` accepts (a ``.nequip.pt2``).
        frames: held-out structures, labelled or not (then ``teacher`` is required).
        out_dir: folder for the plots and the model card.
        teacher: the reference model, for labels if frames lack them and for timing.
        gates: acceptance thresholds.
        metadata: extra card entries; overrides the defaults (``student``, ``teacher``,
            ``species``, ``n_frames``, ``n_atoms``, ``kinds``, ``data_hash``).
        batch_size: systems per model call for predictions and timing.
        sections: extra parts of the card (their failures count as failed gates).

    Raises:
        ValueError: frames without labels and no teacher.
    """
    if not frames:
        raise ValueError("no frames to evaluate")
    student_model = load_teacher(student)
    teacher_model = load_teacher(teacher) if teacher is not None else None
    if has_labels(frames):
        reference = reference_labels(frames)
    elif teacher_model is not None:
        reference = predict(teacher_model, frames, batch_size=batch_size)
    else:
        raise ValueError("the frames carry no energy/forces labels; pass a teacher to label them")
    prediction = predict(student_model, frames, batch_size=batch_size)
    metrics = compute_metrics(reference, prediction, frames)

    speed = None
    if teacher_model is not None:
        pbc = tuple(frames[0].pbc)
        timed = [a for a in frames if tuple(a.pbc) == pbc][:batch_size]
        speed = measure_speed(student_model, teacher_model, timed)
    failures = check_gates(metrics, gates, speed) + [f for s in sections for f in s.failures]

    out_dir = Path(out_dir)
    plot_paths = parity_plots(reference, prediction, out_dir)
    card_metadata = _default_metadata(student, teacher, frames)
    card_metadata.update(metadata or {})
    json_path, md_path = write_model_card(
        out_dir, metrics=metrics, gates=gates, failures=failures, speed=speed, metadata=card_metadata, sections=sections
    )
    paths = {f"parity_{p.stem.removeprefix('parity_')}": p for p in plot_paths}
    paths.update(model_card_json=json_path, model_card_md=md_path)
    return EvaluationReport(metrics, speed, failures, paths, reference=reference, prediction=prediction)


def _default_metadata(student: object, teacher: object, frames: Sequence[Atoms]) -> dict[str, object]:
    kinds: dict[str, int] = {}
    for atoms in frames:
        if "kind" in atoms.info:
            kinds[str(atoms.info["kind"])] = kinds.get(str(atoms.info["kind"]), 0) + 1
    meta: dict[str, object] = {
        "student": _describe(student),
        "teacher": _describe(teacher) if teacher is not None else None,
        "species": sorted({s for atoms in frames for s in atoms.get_chemical_symbols()}),
        "n_frames": len(frames),
        "n_atoms": int(_n_atoms(frames).sum()),
        "data_hash": dataset_hash(frames),
    }
    if kinds:
        meta["kinds"] = kinds
    return meta


def _describe(model: object) -> str:
    """A short name for a model given in any form ``load_teacher`` accepts."""
    if isinstance(model, str | Path):
        return str(model)
    return type(model).__name__


# --- helpers ------------------------------------------------------------------------------


def _n_atoms(frames: Sequence[Atoms]) -> np.ndarray:
    return np.array([len(atoms) for atoms in frames], dtype=np.int64)


def _has_volume(frames: Sequence[Atoms]) -> np.ndarray:
    return np.array([abs(np.linalg.det(atoms.cell.array)) > _MIN_VOLUME for atoms in frames])


def _name(atoms: Atoms, index: int) -> str:
    frame_id = atoms.info.get("frame_id")
    return f"frame_id {frame_id}" if frame_id is not None else atoms.get_chemical_formula()


def __getattr__(name: str):
    """``evaluate``, this module's old name of :func:`evaluate_student` (the runtime's
    ``DistilledTorchSimCalc.evaluate`` and the properties' single points are other things):
    it works for one release, with a DeprecationWarning."""
    if name == "evaluate":
        import warnings

        warnings.warn("torchsim_distill.distill.evaluation.evaluate is now evaluate_student",
                      DeprecationWarning, stacklevel=2)
        return evaluate_student
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
