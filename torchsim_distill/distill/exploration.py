"""Exploration driven by a first student: the teacher labels, a cheap student drives.

The MD snapshots and relaxation paths of the sample (:data:`~torchsim_distill.distill.sampling.TEACHER_KINDS`)
need a model at every step, though only every ``md_stride``-th MD frame is kept. Driven by
a foundation-model teacher on a CPU (SevenNet-0: ~10 ms per atom and call) they are most of
the sampling's time. Here the static kinds are sampled first and labelled by the teacher, a
quick first student is trained on them (a few epochs, cosine) and, loaded eager (no
compile), drives the MD and relaxations; the teacher then labels those frames only::

    frames, info = student_driven_sample(config, "runs/si", teacher)   # the frames, and what it cost
    label_stage(config, "runs/si", split_stage(config, frames), teacher=teacher)  # labels the driven ones

Each kind gets the frames it would get in a teacher-driven sample (:func:`~torchsim_distill.distill.sampling.kind_quotas`
of all the kinds), from the same random streams; the driven frames carry
``info["driver"] = "first_student"``. Everything lands in ``{run}/explore/``, written once,
so a killed run resumes without labelling the static frames or training the student again,
and :func:`prefill_labels` copies the static labels into the run's label files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch_sim as ts
from ase import Atoms
from ase.io import read

from torchsim_distill.distill.labeling import label_for_run
from torchsim_distill.distill.sampling import (
    TEACHER_KINDS,
    kind_quotas,
    read_seeds,
    resolve_kinds,
    sample_configurations,
)
from torchsim_distill.distill.teacher_cost import time_per_atom
from torchsim_distill.distill.training import (
    SIZE_PRESETS,
    ModelOptions,
    TrainingOptions,
    balanced_weights,
    fit_energy_shifts,
    label_scales,
    student_config,
    train_student,
)
from torchsim_distill.distill.training_logs import best_row
from torchsim_distill.utils.files import write_frames_atomic
from torchsim_distill.utils.options import cli

__all__ = [
    "DRIVERS", "DRIVER_TAG", "EXPLORE_DIR", "ExploreOptions", "choose_driver", "first_student_calc", "kind_split",
    "prefill_labels", "student_driven_sample",
]

logger = logging.getLogger(__name__)

#: What may drive the teacher kinds: ``auto`` picks (see :class:`ExploreOptions`).
DRIVERS = ("auto", "student", "teacher")
#: ``info["driver"]`` of the frames a first student drove.
DRIVER_TAG = "first_student"
#: The run's subdirectory holding the static frames, their labels and the first student.
EXPLORE_DIR = "explore"
#: Teachers cheap enough that ``auto`` never trains a student to stand in for them.
CHEAP_TEACHERS = frozenset({"emt"})
#: A driven frame with two atoms closer than this share of the seeds' shortest distance is
#: dropped: a first student's MD that walked through the repulsive wall, not a configuration
#: the teacher's own dynamics would visit.
MIN_DISTANCE_SHARE = 0.6


@dataclass(frozen=True)
class ExploreOptions:
    """Who drives the sample's MD and relaxations (:func:`student_driven_sample`).

    Attributes:
        driver: ``"student"`` (a first student trained on the static kinds), ``"teacher"``
            (as before), or ``"auto"``: with a budget, what its plan found cheaper; without,
            the student when the teacher costs more than ``min_teacher_us_per_atom`` (timed
            on the seeds before sampling); never for the cheap teachers of
            :data:`CHEAP_TEACHERS` (EMT), whose own dynamics cost less than training a student.
        size: the first student's size preset.
        max_epochs: its epochs (a cosine schedule): it must be stable at the MD
            temperatures, not accurate; the teacher labels what it visits.
        min_teacher_us_per_atom: ``auto``'s threshold, µs per atom and teacher call.
        min_frames: static frames the first student needs at least; with fewer, the
            teacher drives (a student of a handful of frames would not hold an MD together).
        max_frames: static frames it trains on at most (evenly spread over them all): its
            training, not the teacher's labelling, is then what grows with the sample.
    """

    driver: str = field(default="auto", metadata=cli(
        "what drives the sample's MD and relaxations: student (a quick first student trained on the static "
        "frames; the teacher only labels), teacher, or auto (the student when the teacher is expensive, or "
        "when the budget's plan finds it cheaper; never for emt)", flag="--explore-driver", choices=DRIVERS))
    size: str = field(default="small", metadata=cli(
        "size preset of the first student that drives the exploration", flag="--explore-size",
        choices=list(SIZE_PRESETS)))
    max_epochs: int = field(default=20, metadata=cli(
        "epochs of the first student that drives the exploration", flag="--explore-epochs"))
    min_teacher_us_per_atom: float = 1000.0
    min_frames: int = 16
    max_frames: int = 240

    def __post_init__(self) -> None:
        if self.driver not in DRIVERS:
            raise ValueError(f"unknown exploration driver {self.driver!r}; choose one of {list(DRIVERS)}")
        if self.size not in SIZE_PRESETS:
            raise ValueError(f"unknown explore size {self.size!r}; choose one of {sorted(SIZE_PRESETS)}")
        if self.max_epochs < 1:
            raise ValueError(f"the first student needs at least one epoch, got max_epochs={self.max_epochs}")


def kind_split(config: Any, seeds: Sequence[Atoms], teacher: Any) -> tuple[dict[str, int], list[str], list[str]]:
    """The frames per kind of ``config``'s sample (those of a teacher-driven one) and its
    kinds apart: ``(quota, static kinds, teacher kinds)``, each in sampling order."""
    o = config.sampling
    kinds = resolve_kinds(list(seeds), teacher, config.kinds, far=o.far_kinds, defect_min_atoms=o.defect_min_atoms)
    quota = kind_quotas(kinds, config.n_configs, o.far_share, weights=o.weights())
    return quota, [k for k in kinds if k not in TEACHER_KINDS], [k for k in kinds if k in TEACHER_KINDS]


def choose_driver(config: Any, teacher: Any, seeds: Sequence[Atoms] | None = None) -> tuple[str, str, dict[str, Any]]:
    """``(driver, why, measured)``: ``"student"`` or ``"teacher"`` for ``config.explore``,
    a sentence for ``run.json`` and the card, and the teacher's timing when ``auto`` took one.

    ``config`` is a :class:`~torchsim_distill.distill.config.DistillConfig`; ``teacher`` the
    loaded teacher (timed only for ``auto``, on the seeds: a few calls)."""
    options: ExploreOptions = config.explore
    seeds = read_seeds(config.structures) if seeds is None else list(seeds)
    quota, static, driven = kind_split(config, seeds, teacher)
    n_static, n_driven = sum(quota[k] for k in static), sum(quota[k] for k in driven)
    asked = "as the budget's plan chose" if config.budget is not None else f"as asked (--explore-driver {options.driver})"
    if options.driver == "teacher":
        return "teacher", f"the teacher drives, {asked}", {}
    if not n_driven:
        return "teacher", "no MD or relaxation frames to drive", {}
    if n_static < options.min_frames:
        if options.driver == "student":
            raise ValueError(f"a first student needs {options.min_frames}+ static frames to train on; this sample has "
                             f"{n_static} ({', '.join(static) or 'no static kinds'}): raise --n-configs")
        return "teacher", f"only {n_static} static frames (a first student needs {options.min_frames}+)", {}
    if options.driver == "student":
        return "student", f"a first student drives, {asked}", {}
    if str(config.teacher).lower() in CHEAP_TEACHERS:
        return "teacher", f"{config.teacher} is cheaper to run than a first student is to train", {}
    per_system_s, per_atom_s = time_per_atom(teacher, seeds)
    measured = {"teacher_us_per_atom": 1e6 * per_atom_s, "teacher_us_per_system": 1e6 * per_system_s}
    verdict = "above" if 1e6 * per_atom_s > options.min_teacher_us_per_atom else "below"
    why = (f"the teacher costs {1e6 * per_atom_s:.0f} us per atom and call, {verdict} the "
           f"{options.min_teacher_us_per_atom:.0f} us at which a first student drives")
    return ("student" if verdict == "above" else "teacher"), why, measured


def student_driven_sample(config: Any, run_dir: str | Path, teacher: Any, *, progress: bool = True) -> tuple[list[Atoms], dict[str, Any]]:
    """The sample of ``config`` (a :class:`~torchsim_distill.distill.config.DistillConfig`)
    with its MD and relaxations driven by a first student, and what it did and cost.

    Steps, each resumable in ``{run_dir}/explore/``: the static kinds (``static_frames.xyz``),
    their teacher labels (``static_labels.xyz``, append-only), the first student
    (``student/``, nequip's run: it resumes, and a finished one is not trained again), then
    the teacher kinds driven by it, eager (they are not written here: the caller writes the
    whole sample once). Returns the frames in sampling order and ``run.json``'s ``"explore"``
    record: the driver, the frames, the seconds of each step (``sample_s``: making frames,
    ``label_s``: the teacher's static labels, ``train_s``, ``drive_s``) and the costs per
    atom and call of the teacher (from its labelling) and of the student driving.
    """
    run_dir = Path(run_dir)
    options: ExploreOptions = config.explore
    here = run_dir / EXPLORE_DIR
    seeds = read_seeds(config.structures)
    quota, static, driven = kind_split(config, seeds, teacher)
    info: dict[str, Any] = {"driver": DRIVER_TAG, "size": options.size, "epochs": options.max_epochs}

    t0 = time.perf_counter()
    static_path = here / "static_frames.xyz"
    if not static_path.exists():
        write_frames_atomic(_sample_kinds(config, seeds, None, static, quota, progress), static_path)
    static_frames = read(static_path, index=":")
    info["sample_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels = here / "static_labels.xyz"
    report = label_for_run(config, static_frames, teacher, labels, progress=progress)
    info["label_s"] = time.perf_counter() - t0
    if report.n_labelled:  # the teacher's cost as labelling paid it (a resumed run keeps the first)
        info["teacher_us_per_atom"] = 1e6 * info["label_s"] / sum(len(a) for a in static_frames[-report.n_labelled:])
    labelled = read(labels, index=":")
    info["n_static"] = len(labelled)

    t0 = time.perf_counter()
    checkpoint = _train(config, here, labelled, progress)
    info["train_s"] = time.perf_counter() - t0
    info["checkpoint"] = str(checkpoint)
    info["validation"] = _validation(checkpoint.parent)

    t0 = time.perf_counter()
    student = first_student_calc(checkpoint, device=config.device)
    made = _sample_kinds(config, seeds, student, driven, quota, progress)
    kept = _plausible(made, seeds)
    for atoms in kept:
        atoms.info["driver"] = DRIVER_TAG
    info["drive_s"] = time.perf_counter() - t0
    info["n_driven"], info["n_dropped"] = len(kept), len(made) - len(kept)
    info["student_us_per_atom"] = _us_per_atom(student, seeds)
    by_kind = {k: [a for a in [*static_frames, *kept] if a.info["kind"] == k] for k in quota}
    frames = [a for k in quota for a in by_kind[k]]
    for atoms in frames:
        atoms.calc = None
    return frames, info


def _us_per_atom(model: Any, seeds: list[Atoms]) -> float:
    """µs per atom of one call of ``model`` on all the seeds in one state (as an MD step of
    the sample calls it), the least of three after a warm-up: beside the teacher's labelling
    cost per atom, what driving cost."""
    state = ts.io.atoms_to_state(seeds, model.device, model.dtype)
    model(state)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        model(state)
        runs.append(time.perf_counter() - t)
    return 1e6 * min(runs) / len(state.positions)


def _sample_kinds(config: Any, seeds: list[Atoms], model: Any, kinds: list[str], quota: dict[str, int], progress: bool) -> list[Atoms]:
    """The frames of ``kinds``, each with its quota of the whole sample: one call per kind,
    so each draws from the stream a sample of all the kinds gives it (same frames, same ids)."""
    out: list[Atoms] = []
    for kind in kinds:
        if quota[kind]:
            out += sample_configurations(seeds, model, n_configs=quota[kind], seed=config.seed, kinds=[kind],
                                         options=config.sampling, progress=progress)
    return out


def _train(config: Any, here: Path, labelled: list[Atoms], progress: bool) -> Path:
    """The first student on the static labels (at most ``max_frames`` of them, every tenth
    validating), in ``here/student``."""
    type_names = sorted({s for a in labelled for s in a.get_chemical_symbols()})
    paths = {name: here / "student_labels" / f"{name}.xyz" for name in ("train", "val")}
    options: ExploreOptions = config.explore
    labelled = labelled[:: max(1, -(-len(labelled) // options.max_frames))]
    val = labelled[::10]
    train = [a for i, a in enumerate(labelled) if i % 10]
    for name, part in (("train", train), ("val", val)):
        if not paths[name].exists():
            write_frames_atomic(part, paths[name])
    model = ModelOptions(student="nequip", size=options.size, r_max=config.model.r_max, precision=config.model.precision,
                         energy_shifts=fit_energy_shifts(train, type_names))
    training = TrainingOptions(max_epochs=options.max_epochs, batch_size=config.training.batch_size, lr=config.training.lr,
                               seed=config.seed, stress=config.training.stress, lr_schedule="cosine")
    training = balanced_weights(training, label_scales(train, type_names))
    cfg = student_config([paths["train"]], [paths["val"]], type_names=type_names, model=model, training=training)
    return train_student(cfg, here / "student", progress=progress)


def _validation(train_dir: Path) -> dict[str, float] | None:
    """The first student's validation errors at its best epoch (meV/atom, meV/Å), from nequip's log."""
    best = best_row(train_dir)
    if best is None:
        return None
    return {"epoch": int(best["epoch"]), "energy_mae": 1000 * float(best["val0_epoch/per_atom_energy_mae"]),
            "force_mae": 1000 * float(best["val0_epoch/forces_mae"])}


def first_student_calc(checkpoint: str | Path, *, device: str = "cpu") -> Any:
    """The first student as a torch-sim model, eager: nequip's own ``NequIPTorchSimCalc`` on
    the checkpoint (compiling it would cost minutes for a model that drives one sample)."""
    import warnings

    from nequip.integrations.torchsim import NequIPTorchSimCalc

    backend = "alchemiops" if str(device).startswith("cuda") else "matscipy"
    with warnings.catch_warnings():  # nequip's notes on loading an uncompiled model
        warnings.simplefilter("ignore")
        return NequIPTorchSimCalc._from_saved_model(str(checkpoint), device=device, chemical_species_to_atom_type_map=True,
                                                    neighborlist_backend=backend)


def _plausible(frames: list[Atoms], seeds: list[Atoms]) -> list[Atoms]:
    """``frames`` without those whose positions are not finite or whose closest two atoms are
    nearer than :data:`MIN_DISTANCE_SHARE` of the seeds' closest (a first student's run gone astray)."""
    floor = MIN_DISTANCE_SHARE * min((_closest(a) for a in seeds), default=0.0)
    kept = [a for a in frames if np.isfinite(a.positions).all() and np.isfinite(a.cell.array).all() and _closest(a) >= floor]
    if len(kept) < len(frames):
        logger.warning("exploration: dropped %d of %d frames the first student drove (non-finite, or atoms closer "
                       "than %.2f A)", len(frames) - len(kept), len(frames), floor)
    return kept


def _closest(atoms: Atoms) -> float:
    """The shortest interatomic distance (minimum image), Å; infinite for one atom."""
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=any(atoms.pbc))
    return float(d[~np.eye(len(atoms), dtype=bool)].min())


def prefill_labels(run_dir: str | Path, splits: dict[str, list[Atoms]]) -> int:
    """Copy the teacher's labels of the static frames (``explore/static_labels.xyz``) into
    ``labels/{split}.xyz`` of each split that has none yet, so that the label stage skips them
    (it labels by ``frame_id``). Returns the frames copied (0: nothing explored here)."""
    source = Path(run_dir) / EXPLORE_DIR / "static_labels.xyz"
    if not source.is_file():
        return 0
    labelled = {str(a.info["frame_id"]): a for a in read(source, index=":")}
    copied = 0
    for name, frames in splits.items():
        path = Path(run_dir) / "labels" / f"{name}.xyz"
        mine = [labelled[str(a.info["frame_id"])] for a in frames if str(a.info["frame_id"]) in labelled]
        if mine and not path.exists():
            write_frames_atomic(mine, path)
            copied += len(mine)
    return copied

