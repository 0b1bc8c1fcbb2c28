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
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.io import read

from torchsim_distill.compile import cached_compile
from torchsim_distill.distill.acceptance import acceptance_suite
from torchsim_distill.distill.advice import Diagnosis, RunCosts, advise, distill_argv
from torchsim_distill.distill.committee_training import train_members
from torchsim_distill.distill.config import FLAT_OPTIONS, DistillConfig
from torchsim_distill.distill.evaluation import (
    EvaluationReport,
    compute_metrics,
    evaluate_student,
    near_and_far,
    predict,
    reference_labels,
    split_distorted,
)
from torchsim_distill.distill.exploration import (
    DRIVER_TAG,
    choose_driver,
    prefill_labels,
    student_driven_sample,
)
from torchsim_distill.distill.labeling import label_for_run
from torchsim_distill.distill.model_card import CardSection, add_card_section
from torchsim_distill.distill.packaging import package_student
from torchsim_distill.distill.phonons import phonon_section
from torchsim_distill.distill.rounds import RoundsSetup, StudentState, run_rounds
from torchsim_distill.distill.sampling import read_seeds, sample_configurations
from torchsim_distill.distill.sections import (
    acceptance_section,
    advice_section,
    budget_section,
    committee_section,
    distorted_section,
    exploration_section,
    intended_use_section,
    near_far_section,
    rounds_section,
    split_section,
)
from torchsim_distill.distill.splitting import split_by_seed, split_frames
from torchsim_distill.distill.teachers import teacher_provenance
from torchsim_distill.distill.training import (
    ModelOptions,
    TrainingOptions,
    balanced_weights,
    fit_energy_shifts,
    label_scales,
    student_config,
    train_student,
)
from torchsim_distill.distill.training_logs import (
    checkpoint_epoch,
    resumable_validation,
    validation_curve,
    validation_near_far,
)
from torchsim_distill.models.package import committee_of, read_distill_metadata
from torchsim_distill.models.student import compiled_student
from torchsim_distill.utils.files import sha256_file, write_frames_atomic, write_text_atomic
from torchsim_distill.utils.jsonable import jsonable
from torchsim_distill.utils.run_paths import RELATIVE_TO, relative_to_run

__all__ = [
    "FLAT_OPTIONS", "DistillConfig", "DistillResult", "RunContext", "data_hash", "distill", "label_stage",
    "package_stage", "read_distill_metadata", "sample_stage", "split_stage", "train_stage", "training_labels",
    "training_options", "type_names_of",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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
        # paths inside the run relative to it: the records stay true when the run is moved
        data = {"paths_relative_to": RELATIVE_TO, **relative_to_run(self.data, self.path.parent)}
        write_text_atomic(self.path, json.dumps(data, indent=1))


def sample_stage(config: DistillConfig, run_dir: Path, *, teacher=None, progress: bool = True) -> list[Atoms]:
    """Sample configurations around the seeds; reuse ``frames.xyz`` if it exists.

    Sampling is deterministic in ``config.seed``, and its output is written once,
    atomically, so a rerun never samples different frames than it labelled.
    """
    path = run_dir / "frames.xyz"
    if path.exists():
        return read(path, index=":")
    frames = sample_configurations(
        read_seeds(config.structures),
        teacher,
        n_configs=config.n_configs,
        seed=config.seed,
        kinds=config.kinds,
        options=config.sampling,
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
    """Label each split with the teacher into ``labels/{split}.xyz`` (resumable); frames whose
    labels a first student's exploration already paid for (:func:`prefill_labels`) are copied."""
    prefill_labels(run_dir, splits)
    teacher = teacher if teacher is not None else config.load_teacher()
    paths = {}
    for name, frames in splits.items():
        paths[name] = run_dir / "labels" / f"{name}.xyz"
        label_for_run(config, frames, teacher, paths[name], progress=progress)
    return paths


def type_names_of(frames: list[Atoms]) -> list[str]:
    """The student's atom types: the elements of the data, sorted by symbol."""
    return sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})


def train_stage(
    config: DistillConfig,
    run_dir: Path,
    labels: dict[str, Path],
    type_names: list[str],
    *,
    progress: bool = True,
    options: tuple[ModelOptions, TrainingOptions] | None = None,
) -> Path:
    """Train the student with nequip's trainer (resumes from ``{train_dir}/last.ckpt``).

    ``options``: the model and training options, when :func:`training_options` already made them."""
    model, training = options if options is not None else training_options(config, type_names, labels)
    training = dataclasses.replace(training, progress=progress)
    # val0 (the whole split) picks the best checkpoint; val1 and val2, near and far from
    # equilibrium, are logged apart in metrics.csv (see :func:`validation_near_far`)
    val = [labels["val"], *(labels[k] for k in ("val_near", "val_far") if k in labels)]
    val = resumable_validation(run_dir / config.train_dir, val)
    cfg = student_config([labels["train"]], val, type_names=type_names, model=model, training=training)
    return train_student(cfg, run_dir / config.train_dir, progress=progress)


def training_labels(config: DistillConfig, run_dir: Path, labels: dict[str, Path]) -> dict[str, Path]:
    """The label files the student (and its committee and rounds) train and validate on:
    ``labels`` without the frames of ``config.train_exclude_kinds``, written once into the
    training folder; the test split stays whole. When the validation frames hold both,
    ``"val_near"`` and ``"val_far"`` are its frames near and far from equilibrium
    (:func:`~torchsim_distill.distill.evaluation.near_and_far`), which the training logs apart."""
    out = dict(labels)
    for split in ("train", "val") if config.train_exclude_kinds else ():
        path = run_dir / config.train_dir / "labels" / f"{split}.xyz"
        if not path.exists():
            kept = [a for a in read(labels[split], index=":") if a.info.get("kind") not in config.train_exclude_kinds]
            write_frames_atomic(kept, path)
        out[split] = path
    if config.extra_train:
        out["train"] = with_extra_frames(out["train"], config.extra_train, config.train_exclude_kinds,
                                         run_dir / config.train_dir / "labels" / "train_and_extra.xyz")
    near_path, far_path = (run_dir / config.train_dir / "labels" / f"val_{k}.xyz" for k in ("near", "far"))
    if not near_path.exists():
        near, far = near_and_far(read(out["val"], index=":"), config.gates.distorted_distance)
        if not (near and far):
            return out
        write_frames_atomic(far, far_path)
        write_frames_atomic(near, near_path)  # written last: its presence says both are complete
    if far_path.exists():
        out["val_near"], out["val_far"] = near_path, far_path
    return out


def with_extra_frames(train: Path, extra: Sequence[str | Path], exclude_kinds: Sequence[str], path: Path) -> Path:
    """``path``, written once: the frames of ``train`` and of the ``extra`` files (without
    the ``exclude_kinds``). An extra frame must carry every label the run's frames carry, and
    keeps only those (nequip batches frames with the same fields: a teacher that now returns
    per-atom energies labelled the extra frames, not the run's)."""
    if path.exists():
        return path
    frames = read(train, index=":")
    keys = set.intersection(*(set(a.calc.results) if a.calc else set() for a in frames)) if frames else set()
    added = []
    for source in extra:
        for i, atoms in enumerate(read(source, index=":")):
            if atoms.info.get("kind") in exclude_kinds:
                continue
            have = set(atoms.calc.results) if atoms.calc is not None else set()
            if not keys <= have:
                raise ValueError(f"extra_train {source}, frame {i}: lacks the label(s) {sorted(keys - have)} "
                                 f"that the run's training frames carry (it has {sorted(have)})")
            for key in have - keys:
                atoms.calc.results.pop(key)
            added.append(atoms)
    write_frames_atomic([*frames, *added], path)
    return path


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


@dataclass
class RunContext:
    """What the stages of one :func:`distill` run share, made once: the config, the run
    directory and its log, the teacher, the splits and their labels, the type names, and
    the options the student was trained with (the committee and the rounds reuse them)."""

    config: DistillConfig
    run_dir: Path
    log: _RunLog
    teacher: Any
    progress: bool = True
    splits: dict[str, list[Atoms]] = field(default_factory=dict)
    split_how: str = ""
    labels: dict[str, Path] = field(default_factory=dict)
    type_names: list[str] = field(default_factory=list)
    model: ModelOptions | None = None
    training: TrainingOptions | None = None

    @property
    def n_frames(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def distill(config: DistillConfig, *, progress: bool = True, keep: set[str] | None = None) -> DistillResult:
    """Run every stage; write the model card even when the gates fail.

    The package is written once, with its distillation metadata (and its committee),
    then compiled; the evaluation's numbers go to ``report/model_card.json``, not into
    the package. With ``config.rounds`` the student is improved on-policy before it is
    packaged (see :mod:`~torchsim_distill.distill.rounds`). With ``config.budget`` the
    run is planned first (:mod:`~torchsim_distill.distill.budget`), keeping the knobs in
    ``keep`` (default: those that differ from the command's defaults); a rerun reuses the
    plan in ``run.json``.
    """
    config.check()
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ctx = RunContext(config, run_dir, _RunLog(run_dir, config), config.load_teacher(), progress=progress)
    log = ctx.log
    if config.budget is not None:
        config = ctx.config = _planned(ctx, keep)

    frames, static_label_s = _sample(ctx)

    ctx.splits, ctx.split_how = _split(config, frames, previous=log.data["stages"].get("split"))
    seeds_of = {name: sorted({int(a.info["seed_id"]) for a in fr}) for name, fr in ctx.splits.items()}
    log.stage("split", n_frames=ctx.n_frames, seed_ids=seeds_of, how=ctx.split_how)

    t0 = time.perf_counter()
    labels = label_stage(config, run_dir, ctx.splits, teacher=ctx.teacher, progress=progress)
    log.stage("label", seconds=round(time.perf_counter() - t0 + static_label_s, 1),
              outputs={k: str(v) for k, v in labels.items()})

    ctx.type_names = type_names_of(frames)
    ctx.labels = training_labels(config, run_dir, labels)
    ctx.model, ctx.training = training_options(config, ctx.type_names, ctx.labels)
    t0 = time.perf_counter()
    ckpt = train_stage(config, run_dir, ctx.labels, ctx.type_names, progress=progress, options=(ctx.model, ctx.training))
    stage = "train" if config.train_dir == "train" else f"train:{config.train_dir}"
    log.stage(stage, seconds=round(time.perf_counter() - t0, 1), checkpoint=str(ckpt),
              loss_weights={"energy": ctx.training.energy_weight, "forces": 1.0, "stress": ctx.training.stress_weight},
              lr_schedule=ctx.training.lr_schedule)

    student = _committee_and_rounds(ctx, ckpt)
    result = _package_and_evaluate(ctx, student)
    log.stage("evaluate", elapsed=round(time.perf_counter() - started, 1))
    return result


def _sample(ctx: RunContext) -> tuple[list[Atoms], float]:
    """The sample, driven by the teacher or by a first student (``config.explore``, see
    :mod:`~torchsim_distill.distill.exploration`), and the seconds the teacher spent labelling
    its static frames then (the label stage's too). ``frames.xyz``, once written, is the sample."""
    config, log, t0 = ctx.config, ctx.log, time.perf_counter()
    if (ctx.run_dir / "frames.xyz").exists():
        driver, why, measured = "", "", {}
    else:
        driver, why, measured = choose_driver(config, ctx.teacher)
    if driver != "student":
        frames = sample_stage(config, ctx.run_dir, teacher=ctx.teacher, progress=ctx.progress)
        took = {"driver": driver, "why": why, **measured} if driver else {}
        log.stage("sample", n_frames=len(frames), seconds=round(time.perf_counter() - t0, 1), output="frames.xyz", **took)
        return frames, 0.0
    frames, info = student_driven_sample(config, ctx.run_dir, ctx.teacher, progress=ctx.progress)
    write_frames_atomic(frames, ctx.run_dir / "frames.xyz")
    log.stage("explore", seconds=round(info["train_s"], 1), why=why, **measured, **info)
    sample_s = time.perf_counter() - t0 - info["train_s"] - info["label_s"]
    log.stage("sample", n_frames=len(frames), seconds=round(sample_s, 1), output="frames.xyz", driver=DRIVER_TAG)
    return frames, info["label_s"]


def _planned(ctx: RunContext, keep: set[str] | None) -> DistillConfig:
    """``ctx.config`` with its budget's plan applied: the plan in ``run.json`` when a run
    made one already (a resumed run keeps its frames and epochs), else a new one, printed."""
    from torchsim_distill.distill.budget import Plan, explicit_knobs, plan_run

    previous = ctx.log.data["stages"].get("plan")
    if previous is not None and previous.get("budget") == ctx.config.budget:
        plan = Plan.from_dict(previous["plan"])
        logger.info("budget: the plan made when the run started (run.json)\n%s", plan.describe())
    else:
        plan = plan_run(ctx.config, ctx.teacher, keep=explicit_knobs(ctx.config) if keep is None else keep)
        logger.info("%s", plan.describe())
        ctx.log.stage("measure", seconds=round(plan.costs["seconds"], 1))
        ctx.log.stage("plan", budget=ctx.config.budget, plan=plan.to_dict())
    config = plan.apply(ctx.config)
    ctx.log.data["config"] = jsonable(asdict(config))
    ctx.log.stage("plan", budget=config.budget)
    return config


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


def training_options(
    config: DistillConfig, type_names: list[str], labels: dict[str, Path]
) -> tuple[ModelOptions, TrainingOptions]:
    """The model and training options the student trains with: ``config.model`` with its
    per-type energy shifts fitted to the training labels (unless given, or a fine-tune,
    ``init_from``, which keeps those of the model it starts from), and ``config.training``
    with its unset loss weights balanced by the training labels' scales (:func:`label_scales`)."""
    model, training = config.model, config.training
    frames = read(labels["train"], index=":")
    if model.energy_shifts is None and not training.init_from:
        model = dataclasses.replace(model, energy_shifts=fit_energy_shifts(frames, type_names))
    if training.energy_weight is None or training.stress_weight is None:
        training = balanced_weights(training, label_scales(frames, type_names))
    return model, training


def _committee_and_rounds(ctx: RunContext, checkpoint: Path) -> StudentState:
    """Train the committee beside the first student, then run the on-policy rounds."""
    config, labels, committee, rounds = ctx.config, ctx.labels, ctx.config.committee, ctx.config.rounds
    members: list[Path] = []
    if committee.size > 1:
        t0 = time.perf_counter()
        start = [checkpoint if committee.mode == "finetune" else None] * (committee.size - 1)
        members = train_members(
            committee, ctx.model, ctx.training, [labels["train"]], [labels["val"]], ctx.type_names,
            ctx.run_dir / "committee", start_from=start, epochs=committee.member_epochs(config.training.max_epochs),
        )
        ctx.log.stage("committee", members=[str(m) for m in members], what=committee.describe(),
                      seconds=round(time.perf_counter() - t0, 1))
    student = StudentState(checkpoint, members, [labels["train"]])
    if rounds.rounds == 0:
        return student
    setup = RoundsSetup(ctx.run_dir, ctx.teacher, [labels["val"]], ctx.type_names, ctx.model, ctx.training,
                        committee, rounds, config.gates, config.device, config.label_batch_size)
    student, records = run_rounds(
        student, setup, seeds=read_seeds(config.structures), test_frames=read(labels["test"], index=":"),
        on_round=lambda records: ctx.log.stage("rounds", records=records),
    )
    ctx.log.stage("rounds", records=records, checkpoint=str(student.checkpoint), members=[str(m) for m in student.members])
    return student


def _package_and_evaluate(ctx: RunContext, student: StudentState) -> DistillResult:
    """Package the final student with its committee, compile it, and write its model card."""
    config, labels = ctx.config, ctx.labels
    gates, committee, rounds = config.gates, config.committee, config.rounds
    round_files = [f for f in student.train_files if f != labels["train"]]
    n_frames = ctx.n_frames
    if round_files:
        n_frames["rounds"] = sum(len(read(f, index=":")) for f in round_files)
    if config.extra_train:  # what the training split gained from outside the run
        n_frames["extra_train"] = sum(a.info.get("kind") not in config.train_exclude_kinds
                                      for f in config.extra_train for a in read(f, index=":"))
    metadata = {
        "teacher": str(config.teacher), "teacher_source": teacher_provenance(config.teacher), **teacher_metadata(config),
        "student": config.model.student,
        "size": config.model.size,
        "species": ctx.type_names, "r_max": config.model.r_max, "n_frames": n_frames,
        "data_sha256": data_hash([labels[s] for s in SPLITS] + round_files), "seed": config.seed, "split": ctx.split_how,
        # the periodicities it was trained on: a run-time face warns on structures unlike them
        "training_pbc": sorted({tuple(bool(p) for p in atoms.pbc) for atoms in ctx.splits["train"]}),
    }
    if config.train_exclude_kinds:
        metadata["train_exclude_kinds"] = list(config.train_exclude_kinds)
    if committee.size > 1:
        metadata["committee"] = {"size": committee.size, "members": committee.describe(), "threshold": rounds.trust_low}
    t0 = time.perf_counter()
    package = package_stage(student.checkpoint, ctx.run_dir / "student.nequip.zip", {**metadata, "gates": asdict(gates)},
                            committee=student.members)
    # the card says either way whether the teacher was D3-corrected (the package, only when it
    # was: a plain run's package keeps its bytes, so its compiled student stays cached)
    metadata = {"teacher": metadata["teacher"], TEACHER_DISPERSION: config.teacher_options.describe(), **metadata}
    # what ships, as it ships: the package and the members inside it, compiled side by side
    calc = compiled_student(package, committee_of(package), device=config.device, verbose=ctx.progress)
    compiled = cached_compile(package, device=config.device, target="batch")
    ctx.log.stage("compile", package=str(package), compiled=str(compiled), seconds=round(time.perf_counter() - t0, 1))
    if config.budget is not None:  # this machine's compile time: the next plan's estimate
        from torchsim_distill.distill.budget import record_compile

        record_compile(config.model.size, (time.perf_counter() - t0) / max(1, len(student.members) + 1))
    test_frames = read(labels["test"], index=":")
    sections = _sections(ctx, calc, test_frames, n_frames)
    near, distorted = split_distorted(test_frames, gates)
    if distorted:
        sections.insert(1, distorted_section(calc, distorted, gates, threshold=rounds.trust_low))
    report = evaluate_student(calc, near, ctx.run_dir / "report", teacher=ctx.teacher, gates=gates, metadata=metadata,
                              sections=sections)
    advice = [] if report.passed else _advice(config, calc, report, student, sections, ctx.log.data)
    if advice:
        add_card_section(ctx.run_dir / "report", advice_section(advice))
    card = report.paths["model_card_md"]
    ctx.log.stage("evaluate", passed=report.passed, failures=report.failures, model_card=str(card), advice=advice)
    logger.debug("distilled %s: gates %s; model card %s", package, "passed" if report.passed else "FAILED", card)
    return DistillResult(ctx.run_dir, package, compiled, report, advice)


#: The metadata key (package and card) saying how the teacher's labels were corrected.
TEACHER_DISPERSION = "teacher_dispersion"


def teacher_metadata(config: DistillConfig) -> dict[str, Any]:
    """What the packaged student records of its teacher beyond its name: the dispersion
    correction in its labels, when there is one (``{"teacher_dispersion": "d3bj (pbe), in
    the labels"}``; a student loaded with ``dispersion=`` on top of it warns of counting D3 twice)."""
    options = config.teacher_options
    return {TEACHER_DISPERSION: options.describe()} if options.dispersion is not None else {}


def _advice(
    config: DistillConfig, calc: Any, report: EvaluationReport, student: StudentState, sections: list[CardSection],
    run: dict[str, Any] | None = None,
) -> list[str]:
    """What to try next, from the held-out and training errors, the training curve, the
    committee, the failed property gates and this run's stage times (``run``: ``run.json``)."""
    per_file = [read(f, index=":") for f in student.train_files]  # the run's training frames, then the rounds'
    train_frames = [a for frames in per_file for a in frames]
    sample = train_frames[:: max(1, len(train_frames) // 64)]
    train = compute_metrics(reference_labels(sample), predict(calc, sample), sample) if sample else None
    committee = next((s.data for s in sections if s.key == "committee"), None)
    acceptance = next((s.data for s in sections if s.key == "acceptance"), None) or {}
    failed = tuple(f"{row['property']} of {row['system']}" for row in acceptance.get("rows", []) if not row["passed"])
    first = per_file[0] if per_file else []
    curve = validation_curve(Path(config.out) / config.train_dir)
    diagnosis = Diagnosis(
        test=report.metrics, train=train, gates=config.gates,
        best_epoch=checkpoint_epoch(Path(config.out) / config.train_dir / "best.ckpt"),
        max_epochs=config.training.max_epochs, size=config.model.size, n_configs=config.n_configs,
        rounds=config.rounds.rounds, committee=config.committee.size,
        flagged_fraction=committee["calibration"]["flagged_fraction"] if committee else None,
        failed_properties=failed, validation=tuple(curve),
        train_kinds=dict(Counter(str(a.info.get("kind")) for a in first if a.info.get("kind"))),
        costs=RunCosts.from_run(run, epochs=len(curve) or None) if run is not None else None,
        budget=config.budget, kind_weights=tuple(config.sampling.kind_weights),
    )
    return advise(diagnosis, distill_argv(config))


def _sections(ctx: RunContext, calc: Any, test_frames: list[Atoms], n_frames: dict[str, int]) -> list[CardSection]:
    """The card's parts beyond frame errors: split, committee calibration, rounds, properties."""
    config, rounds, stages = ctx.config, ctx.config.rounds, ctx.log.data["stages"]
    explored = exploration_section(stages.get("sample", {}), stages.get("explore"))
    sections = [split_section(ctx.split_how, n_frames), *([explored] if explored else []),
                intended_use_section(ctx.splits["train"], config.sampling, excluded_kinds=config.train_exclude_kinds,
                                     flag_threshold=rounds.trust_low if calc.committee else None)]
    if config.gates.distorted_force_mae is None:  # else the distorted frames' own section says it
        near_far = near_far_section(calc, test_frames, config.gates, validation_near_far(ctx.run_dir / config.train_dir))
        if near_far is not None:
            sections.append(near_far)
    if calc.committee:
        sections.append(committee_section(calc, test_frames, description=config.committee.describe(),
                                          threshold=rounds.trust_low))
    records = ctx.log.data["stages"].get("rounds", {}).get("records")
    if records:
        sections.append(rounds_section(records, trust=(rounds.trust_low, rounds.trust_high)))
    if config.acceptance is not None:
        t0 = time.perf_counter()
        structures = config.property_structures or config.structures
        report = acceptance_suite(calc, ctx.teacher, read_seeds(structures), options=config.acceptance,
                                  cache_dir=ctx.run_dir / "acceptance", teacher_id=config.teacher_id)
        ctx.log.stage("acceptance", passed=report.passed, seconds=round(time.perf_counter() - t0, 1))
        sections.append(acceptance_section(report))
        phonons = phonon_section(report.phonons, ctx.run_dir / "report")  # band-structure plots beside the card
        if phonons is not None:
            sections.append(phonons)
    plan = ctx.log.data["stages"].get("plan", {}).get("plan")
    if plan is not None:  # last: the acceptance suite's seconds are known
        sections.append(budget_section(plan, ctx.log.data["stages"]))
    return sections
