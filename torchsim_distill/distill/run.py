"""Distillation end to end: sample → label → train → package → compile → evaluate.

Each stage is a function a notebook can call on its own; :func:`distill` runs them in
a run directory that records what happened (``run.json``) and resumes where an
interrupted run stopped (labels are append-only, training resumes from ``last.ckpt``)::

    cfg = DistillConfig(teacher="emt", structures=["seeds.xyz"], out="runs/cuau", n_configs=200)
    result = distill(cfg)
    result.passed, result.report.metrics.force_mae  # gates met?, held-out force MAE in meV/Å

The packaged student records what it was distilled from (teacher, data, gates: see
:func:`read_distill_metadata`) and is written once, before it is compiled, so the
compiled file's recorded source hash stays the package's; the held-out metrics live in
the run's ``report/model_card.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.io import read

from torchsim_distill.compile import cached_compile
from torchsim_distill.distill.acceptance import AcceptanceOptions, acceptance_suite
from torchsim_distill.distill.advice import Diagnosis, advise, distill_argv
from torchsim_distill.distill.committee import CommitteeOptions, compiled_student, train_members
from torchsim_distill.distill.evaluation import (
    EvaluationReport, Gates, compute_metrics, evaluate, predict, reference_labels, split_distorted,
)
from torchsim_distill.distill.labeling import label_frames
from torchsim_distill.distill.packaging import committee_of, package_student, read_distill_metadata
from torchsim_distill.distill.phonons import phonon_section
from torchsim_distill.distill.report import CardSection, add_card_section
from torchsim_distill.distill.rounds import RoundOptions, StudentState, run_rounds
from torchsim_distill.distill.sampling import KINDS, SamplingOptions, read_seeds, sample_configurations
from torchsim_distill.distill.sections import (
    acceptance_section,
    advice_section,
    committee_section,
    distorted_section,
    rounds_section,
    split_section,
)
from torchsim_distill.distill.splitting import split_by_seed, split_frames
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.distill.training import (
    PRECISIONS,
    ModelOptions,
    TrainingOptions,
    fit_energy_shifts,
    student_config,
    train_student,
)
from torchsim_distill.utils.files import sha256_file, write_frames_atomic, write_text_atomic
from torchsim_distill.utils.jsonable import jsonable

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (saved in ``run.json``).

    Attributes:
        teacher: a name from :data:`~torchsim_distill.distill.teachers.TEACHERS` or a ``.pt2`` path.
        structures: seed structure files (any format ASE reads).
        out: run directory.
        student: ``"nequip"`` or ``"allegro"``.
        size: a :data:`~torchsim_distill.distill.training.SIZE_PRESETS` key.
        precision: the student's dtype, ``"float64"`` or ``"float32"`` (nequip's ``model_dtype``;
            see :class:`~torchsim_distill.distill.training.ModelOptions`). The compiled student
            keeps it; :class:`~torchsim_distill.runtime.calculator.DistilledTorchSimCalc` casts
            its inputs to it and returns outputs in the state's dtype.
        n_configs: frames sampled around the seeds.
        seed: seed of sampling, splitting and training.
        r_max: student cutoff, Å.
        max_epochs, batch_size, lr: training settings.
        kinds: sampling kinds (None: all that apply).
        fractions: train/val/test shares of the seed structures.
        label_batch_size: systems per teacher call when labeling.
        atomic_energy_weight: loss weight on the teacher's per-atom energies (None: off).
        stress_weight, energy_weight: loss weights on the stress and per-atom energy MSE
            (see :func:`student_config`; forces have weight 1).
        force_huber_delta: fit forces with a Huber loss of this delta, eV/Å (None: MSE;
            see :class:`~torchsim_distill.distill.training.TrainingOptions`).
        lr_schedule: ``"plateau"`` or ``"cosine"`` (see
            :class:`~torchsim_distill.distill.training.TrainingOptions`).
        init_from: start training from this nequip checkpoint or package (fine-tuning).
        train_exclude_kinds: sampling kinds kept out of training and validation (the
            held-out split keeps them, so the card still scores them): far-from-equilibrium
            kinds (``"compress"``, ``"large_rattle"``) that a small student cannot fit
            without losing accuracy near equilibrium; its committee flags them instead.
        train_dir: subdirectory of ``out`` for this training run, so that a fine-tune
            reuses the run's frames and labels next to the run it starts from.
        gates: accuracy thresholds for the held-out frames (None: the defaults of
            :class:`~torchsim_distill.distill.evaluation.Gates`).
        device: where the teacher and the compiled student run.
        sampling: how the sampler perturbs: a :class:`~torchsim_distill.distill.sampling.SamplingOptions`
            or a dict of some of its fields (``{"max_strain": 0.05}``; the rest keep their defaults).
        committee: the committee (:class:`~torchsim_distill.distill.committee.CommitteeOptions`,
            a dict of its fields, or its size; 1: none).
        rounds: the on-policy rounds (:class:`~torchsim_distill.distill.rounds.RoundOptions`,
            a dict of its fields, or their number; 0: none).
        acceptance: measure the properties of teacher and student (equilibrium, elastic,
            vacancy, formation, stability, RDF) and gate on them; a dict of
            :class:`~torchsim_distill.distill.acceptance.AcceptanceOptions` fields, or False.
        property_structures: the structures the acceptance suite measures (files; None: the
            seeds). Its MD and relaxations run the teacher on every one of them, so a few
            small cells (the phases and alloys whose properties matter) keep it affordable
            when the seeds are many or large.
        ray: label with teacher actors on a Ray cluster (``"local"``, ``"auto"`` or its
            address; see :mod:`~torchsim_distill.distill.distributed`); the other stages
            run in this process. None: everything here.
    """

    teacher: str
    structures: list[str]
    out: str
    student: str = "nequip"
    size: str = "small"
    precision: str = "float64"
    n_configs: int = 500
    seed: int = 0
    r_max: float = 5.0
    max_epochs: int = 100
    batch_size: int = 4
    lr: float = 0.01
    kinds: list[str] | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    label_batch_size: int = 16
    atomic_energy_weight: float | None = None
    stress_weight: float = 100.0
    energy_weight: float = 1.0
    force_huber_delta: float | None = None
    lr_schedule: str = "plateau"
    init_from: str | None = None
    train_exclude_kinds: tuple[str, ...] = ()
    train_dir: str = "train"
    gates: Gates | None = None
    device: str = "cpu"
    sampling: dict[str, Any] | SamplingOptions = field(default_factory=dict)
    committee: int | dict[str, Any] | CommitteeOptions = 1
    rounds: int | dict[str, Any] | RoundOptions = 0
    acceptance: bool | dict[str, Any] = True
    property_structures: list[str] | None = None
    ray: str | None = None

    def committee_options(self) -> CommitteeOptions:
        return _options(CommitteeOptions, self.committee, "size")

    def round_options(self) -> RoundOptions:
        return _options(RoundOptions, self.rounds, "rounds")

    def check(self) -> None:
        """Refuse settings that cannot work before any stage runs (``ValueError`` saying why)."""
        committee, rounds = self.committee_options(), self.round_options()
        if rounds.rounds > 0 and committee.size < 2:
            raise ValueError(
                f"{rounds.rounds} on-policy rounds need a committee (its disagreement selects the frames "
                f"to label), got committee size {committee.size}; pass --committee 2 or more"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)} (nequip's model_dtype), got {self.precision!r}")
        unknown = sorted(set(self.train_exclude_kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"train_exclude_kinds {unknown} are not sampling kinds; the kinds are {list(KINDS)}")
        missing = [f for f in self.property_structures or [] if not Path(f).is_file()]
        if missing:  # read at the end of the run: say so now, not after hours of training
            raise ValueError(f"property structure file(s) {missing} do not exist (files ASE reads, e.g. .xyz)")
        if self.ray is not None:  # Ray installed, and a teacher its actors can load by name
            from torchsim_distill.distill.distributed import check_ray_teacher

            check_ray_teacher(self.teacher)


def _options(cls, value, count_field: str):
    """``value`` as a ``cls``: already one, a dict of its fields (from run.json), or its count."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    return cls(**{count_field: int(value)})


@dataclass
class DistillResult:
    """What :func:`distill` produced."""

    run_dir: Path
    package: Path
    compiled: Path
    report: EvaluationReport
    advice: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.report.passed


class _RunLog:
    """``run.json``: the config, and per stage its status, duration and outputs."""

    def __init__(self, run_dir: Path, config: DistillConfig) -> None:
        self.path = run_dir / "run.json"
        previous = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data: dict[str, Any] = {"config": jsonable(asdict(config)), "stages": previous.get("stages", {})}
        self._save()

    def stage(self, name: str, **info: Any) -> None:
        self.data["stages"][name] = {**self.data["stages"].get(name, {}), **jsonable(info)}
        self._save()
        logger.debug("stage %s done: %s", name, self.data["stages"][name])

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1))


def sample_stage(config: DistillConfig, run_dir: Path, *, teacher=None, progress: bool = True) -> list[Atoms]:
    """Sample configurations around the seeds; reuse ``frames.xyz`` if it exists.

    Sampling is deterministic in ``config.seed``, and its output is written once,
    atomically, so a rerun never samples different frames than it labelled.
    """
    path = run_dir / "frames.xyz"
    if path.exists():
        return read(path, index=":")
    options = config.sampling
    if not isinstance(options, SamplingOptions):  # a dict of some fields, as in run.json
        options = SamplingOptions().updated(**options)
    frames = sample_configurations(
        read_seeds(config.structures),
        teacher,
        n_configs=config.n_configs,
        seed=config.seed,
        kinds=config.kinds,
        options=options,
        progress=progress,
    )
    for atoms in frames:
        atoms.calc = None
    write_frames_atomic(frames, path)
    return frames


def split_stage(config: DistillConfig, frames: list[Atoms]) -> dict[str, list[Atoms]]:
    """Train/val/test split: by seed structure when there are enough seeds (the test set
    then measures transfer to unseen structures), else by trajectory within seeds."""
    return _split(config, frames)[0]


def label_stage(
    config: DistillConfig, run_dir: Path, splits: dict[str, list[Atoms]], *, teacher=None, progress: bool = True
) -> dict[str, Path]:
    """Label each split with the teacher into ``labels/{split}.xyz`` (resumable)."""
    teacher = teacher if teacher is not None else load_teacher(config.teacher, device=config.device)
    paths = {}
    for name, frames in splits.items():
        paths[name] = run_dir / "labels" / f"{name}.xyz"
        if config.ray is not None:  # the actors load the teacher by its name or path
            label_frames(frames, config.teacher, paths[name], batch_size=config.label_batch_size, progress=progress,
                         ray=config.ray, device=config.device)
        else:
            label_frames(frames, teacher, paths[name], batch_size=config.label_batch_size, progress=progress)
    return paths


def type_names_of(frames: list[Atoms]) -> list[str]:
    """The student's atom types: the elements of the data, sorted by symbol."""
    return sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})


def train_stage(
    config: DistillConfig, run_dir: Path, labels: dict[str, Path], type_names: list[str], *, progress: bool = True
) -> Path:
    """Train the student with nequip's trainer (resumes from ``{train_dir}/last.ckpt``)."""
    # a fine-tune keeps the model it starts from, shifts included
    model, training = _training_options(config, type_names, labels)
    training = dataclasses.replace(training, progress=progress)
    cfg = student_config([labels["train"]], [labels["val"]], type_names=type_names, model=model, training=training)
    return train_student(cfg, run_dir / config.train_dir, progress=progress)


def training_labels(config: DistillConfig, run_dir: Path, labels: dict[str, Path]) -> dict[str, Path]:
    """The label files the student (and its committee and rounds) train and validate on:
    ``labels`` without the frames of ``config.train_exclude_kinds``, written once into the
    training folder; the test split stays whole."""
    if not config.train_exclude_kinds:
        return labels
    out = dict(labels)
    for split in ("train", "val"):
        path = run_dir / config.train_dir / "labels" / f"{split}.xyz"
        if not path.exists():
            kept = [a for a in read(labels[split], index=":") if a.info.get("kind") not in config.train_exclude_kinds]
            write_frames_atomic(kept, path)
        out[split] = path
    return out


def package_stage(checkpoint: Path, out: Path, metadata: dict[str, Any], *, committee: Sequence[Path] = ()) -> Path:
    """Package the checkpoint (and its committee) as a ``.nequip.zip`` holding ``metadata``.

    The package is written once, complete, and not touched afterwards: its hash is what
    a compiled student records as its source and what the compile cache keys on. A rerun
    finds it by the checkpoints it was built from and reuses it (same bytes, same cache
    entry) instead of packaging again.
    """
    sources = {str(Path(p).name): sha256_file(p) for p in [checkpoint, *committee]}
    metadata = {**metadata, "sources_sha256": sources}
    if out.is_file() and read_distill_metadata(out) == jsonable(metadata):
        return out
    return package_student(checkpoint, out, metadata, committee=committee)


def data_hash(paths: list[Path]) -> str:
    """SHA-256 over the labelled data files, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def distill(config: DistillConfig, *, progress: bool = True) -> DistillResult:
    """Run every stage; write the model card even when the gates fail.

    The package is written once, with its distillation metadata (and its committee),
    then compiled; the evaluation's numbers go to ``report/model_card.json``, not into
    the package. With ``config.rounds`` the student is improved on-policy before it is
    packaged (see :mod:`~torchsim_distill.distill.rounds`).
    """
    config.check()
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _RunLog(run_dir, config)
    teacher = load_teacher(config.teacher, device=config.device)

    t0 = time.perf_counter()
    frames = sample_stage(config, run_dir, teacher=teacher, progress=progress)
    log.stage("sample", n_frames=len(frames), seconds=round(time.perf_counter() - t0, 1), output="frames.xyz")

    splits, how = _split(config, frames, previous=log.data["stages"].get("split"))
    seeds_of = {name: sorted({int(a.info["seed_id"]) for a in fr}) for name, fr in splits.items()}
    log.stage("split", n_frames={k: len(v) for k, v in splits.items()}, seed_ids=seeds_of, how=how)

    t0 = time.perf_counter()
    labels = label_stage(config, run_dir, splits, teacher=teacher, progress=progress)
    log.stage("label", seconds=round(time.perf_counter() - t0, 1), outputs={k: str(v) for k, v in labels.items()})

    type_names = type_names_of(frames)
    labels = training_labels(config, run_dir, labels)
    t0 = time.perf_counter()
    ckpt = train_stage(config, run_dir, labels, type_names, progress=progress)
    log.stage("train" if config.train_dir == "train" else f"train:{config.train_dir}", seconds=round(time.perf_counter() - t0, 1), checkpoint=str(ckpt))

    student = _committee_and_rounds(config, run_dir, log, teacher, labels, type_names, ckpt)
    return _package_and_evaluate(config, run_dir, log, teacher, splits, how, labels, type_names, student, progress)


def _split(
    config: DistillConfig, frames: list[Atoms], previous: dict[str, Any] | None = None
) -> tuple[dict[str, list[Atoms]], str]:
    """The splits and, for the card, how they were made (by seed, or by trajectory within
    seeds when there are too few seeds: see :func:`~torchsim_distill.distill.splitting.split_frames`).

    A run directory split before the rule existed (its ``run.json`` split stage says no
    ``how``) keeps its seed split, so a resumed run never moves labelled frames between splits.
    """
    if previous is not None and "how" not in previous:
        parts = split_by_seed(frames, fractions=tuple(config.fractions), seed=config.seed)
        how = f"by seed structure: {len({int(a.info['seed_id']) for a in frames})} seeds, whole seeds held out"
    else:
        parts, how = split_frames(frames, fractions=tuple(config.fractions), seed=config.seed)
    return dict(zip(SPLITS, parts, strict=True)), how


def _training_options(config: DistillConfig, type_names: list[str], labels: dict[str, Path]) -> tuple[ModelOptions, TrainingOptions]:
    """The options :func:`train_stage` trained the student with (the rounds and the committee reuse them)."""
    shifts = None if config.init_from else fit_energy_shifts(read(labels["train"], index=":"), type_names)
    model = ModelOptions(
        student=config.student, size=config.size, r_max=config.r_max, energy_shifts=shifts, precision=config.precision
    )
    training = TrainingOptions(
        max_epochs=config.max_epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        atomic_energy_weight=config.atomic_energy_weight, stress_weight=config.stress_weight,
        energy_weight=config.energy_weight, force_huber_delta=config.force_huber_delta, init_from=config.init_from,
        lr_schedule=config.lr_schedule,
    )
    return model, training


def _committee_and_rounds(config, run_dir, log, teacher, labels, type_names, checkpoint) -> StudentState:
    """Train the committee beside the first student, then run the on-policy rounds."""
    committee, rounds = config.committee_options(), config.round_options()
    model, training = _training_options(config, type_names, labels)
    members: list[Path] = []
    if committee.size > 1:
        t0 = time.perf_counter()
        start = [checkpoint if committee.mode == "finetune" else None] * (committee.size - 1)
        members = train_members(
            committee, model, training, [labels["train"]], [labels["val"]], type_names, run_dir / "committee",
            start_from=start, epochs=committee.member_epochs(config.max_epochs),
        )
        log.stage("committee", members=[str(m) for m in members], what=committee.describe(),
                  seconds=round(time.perf_counter() - t0, 1))
    student = StudentState(checkpoint, members, [labels["train"]])
    if rounds.rounds == 0:
        return student
    student, records = run_rounds(
        student, run_dir=run_dir, seeds=read_seeds(config.structures), teacher=teacher, val_files=[labels["val"]],
        test_frames=read(labels["test"], index=":"), type_names=type_names, model=model, training=training,
        committee=committee, options=rounds, gates=config.gates or Gates(), device=config.device,
        label_batch_size=config.label_batch_size, on_round=lambda records: log.stage("rounds", records=records),
    )
    log.stage("rounds", records=records, checkpoint=str(student.checkpoint), members=[str(m) for m in student.members])
    return student


def _package_and_evaluate(config, run_dir, log, teacher, splits, how, labels, type_names, student, progress) -> DistillResult:
    """Package the final student with its committee, compile it, and write its model card."""
    gates = config.gates or Gates()
    committee, rounds = config.committee_options(), config.round_options()
    round_files = [f for f in student.train_files if f != labels["train"]]
    n_frames = {k: len(v) for k, v in splits.items()}
    if round_files:
        n_frames["rounds"] = sum(len(read(f, index=":")) for f in round_files)
    metadata = {
        "teacher": str(config.teacher), "student": config.student, "size": config.size, "species": type_names,
        "r_max": config.r_max, "n_frames": n_frames,
        "data_sha256": data_hash([labels[s] for s in SPLITS] + round_files), "seed": config.seed, "split": how,
        # the periodicities it was trained on: a run-time face warns on structures unlike them
        "training_pbc": sorted({tuple(bool(p) for p in atoms.pbc) for atoms in splits["train"]}),
    }
    if config.train_exclude_kinds:
        metadata["train_exclude_kinds"] = list(config.train_exclude_kinds)
    if committee.size > 1:
        metadata["committee"] = {"size": committee.size, "members": committee.describe(), "threshold": rounds.trust_low}
    package = package_stage(student.checkpoint, run_dir / "student.nequip.zip", {**metadata, "gates": asdict(gates)},
                            committee=student.members)
    # what ships, as it ships: the package and the members inside it, compiled side by side
    calc = compiled_student(package, committee_of(package), device=config.device, verbose=progress)
    compiled = cached_compile(package, device=config.device, target="batch")
    log.stage("compile", package=str(package), compiled=str(compiled))
    test_frames = read(labels["test"], index=":")
    sections = _sections(config, run_dir, calc, teacher, test_frames, how, n_frames, committee, rounds, log)
    near, distorted = split_distorted(test_frames, gates)
    if distorted:
        sections.insert(1, distorted_section(calc, distorted, gates, threshold=rounds.trust_low))
    report = evaluate(calc, near, run_dir / "report", teacher=teacher, gates=gates, metadata=metadata,
                      sections=sections)
    advice = [] if report.passed else _advice(config, calc, report, student, sections)
    if advice:
        add_card_section(run_dir / "report", advice_section(advice))
    card = report.paths["model_card_md"]
    log.stage("evaluate", passed=report.passed, failures=report.failures, model_card=str(card), advice=advice)
    logger.debug("distilled %s: gates %s; model card %s", package, "passed" if report.passed else "FAILED", card)
    return DistillResult(run_dir, package, compiled, report, advice)


def _advice(config, calc, report: EvaluationReport, student: StudentState, sections: list[CardSection]) -> list[str]:
    """What to try next, from the held-out and training errors, the training curve and the committee."""
    train_frames = [a for f in student.train_files for a in read(f, index=":")]
    sample = train_frames[:: max(1, len(train_frames) // 64)]
    train = compute_metrics(reference_labels(sample), predict(calc, sample), sample) if sample else None
    committee = next((s.data for s in sections if s.key == "committee"), None)
    fine_tuned = len(student.train_files) > 1  # the rounds' fine-tunes: their epochs are not --max-epochs
    diagnosis = Diagnosis(
        test=report.metrics, train=train, gates=config.gates or Gates(),
        best_epoch=None if fine_tuned else _epoch(student.checkpoint),
        max_epochs=config.max_epochs, size=config.size, n_configs=config.n_configs,
        rounds=config.round_options().rounds, committee=config.committee_options().size,
        flagged_fraction=committee["calibration"]["flagged_fraction"] if committee else None,
    )
    return advise(diagnosis, distill_argv(config))


def _epoch(checkpoint: Path) -> int | None:
    """The (0-based) epoch a Lightning checkpoint was saved at, None if it does not say."""
    import torch

    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])
    except (OSError, KeyError, RuntimeError, ValueError):
        return None


def _sections(config, run_dir, calc, teacher, test_frames, how, n_frames, committee, rounds, log) -> list[CardSection]:
    """The card's parts beyond frame errors: split, committee calibration, rounds, properties."""
    sections = [split_section(how, n_frames)]
    if calc.committee:
        sections.append(committee_section(calc, test_frames, description=committee.describe(), threshold=rounds.trust_low))
    records = log.data["stages"].get("rounds", {}).get("records")
    if records:
        sections.append(rounds_section(records, trust=(rounds.trust_low, rounds.trust_high)))
    if config.acceptance is not False:
        options = AcceptanceOptions(**config.acceptance) if isinstance(config.acceptance, dict) else AcceptanceOptions()
        t0 = time.perf_counter()
        structures = config.property_structures or config.structures
        report = acceptance_suite(calc, teacher, read_seeds(structures), options=options,
                                  cache_dir=run_dir / "acceptance", teacher_id=str(config.teacher))
        log.stage("acceptance", passed=report.passed, seconds=round(time.perf_counter() - t0, 1))
        sections.append(acceptance_section(report))
        phonons = phonon_section(report.phonons, run_dir / "report")  # band-structure plots beside the card
        if phonons is not None:
            sections.append(phonons)
    return sections
