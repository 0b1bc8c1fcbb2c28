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

import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ase import Atoms
from ase.io import read, write

from torchsim_distill.distill.labeling import label_frames
from torchsim_distill.distill.sampling import SamplingOptions, read_seeds, sample_configurations, split_by_seed
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.distill.training import (
    ModelOptions,
    TrainingOptions,
    fit_energy_shifts,
    student_config,
    train_student,
)
from torchsim_distill.utils.jsonable import jsonable
from torchsim_distill.utils.scripts import run_nequip

if TYPE_CHECKING:
    from torchsim_distill.distill.evaluation import EvaluationReport, Gates

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Entry added to the packaged student with what it was distilled from.
DISTILL_METADATA_ENTRY = "torchsim_distill_distillation.json"


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (saved in ``run.json``).

    Attributes:
        teacher: a name from :data:`~torchsim_distill.distill.teachers.TEACHERS` or a ``.pt2`` path.
        structures: seed structure files (any format ASE reads).
        out: run directory.
        student: ``"nequip"`` or ``"allegro"``.
        size: a :data:`~torchsim_distill.distill.training.SIZE_PRESETS` key.
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
        init_from: start training from this nequip checkpoint or package (fine-tuning).
        train_dir: subdirectory of ``out`` for this training run, so that a fine-tune
            reuses the run's frames and labels next to the run it starts from.
        gates: accuracy thresholds for the held-out frames (None: the defaults of
            :class:`~torchsim_distill.distill.evaluation.Gates`).
        device: where the teacher and the compiled student run.
        sampling: how the sampler perturbs: a :class:`~torchsim_distill.distill.sampling.SamplingOptions`
            or a dict of some of its fields (``{"max_strain": 0.05}``; the rest keep their defaults).
    """

    teacher: str
    structures: list[str]
    out: str
    student: str = "nequip"
    size: str = "small"
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
    init_from: str | None = None
    train_dir: str = "train"
    gates: Gates | None = None
    device: str = "cpu"
    sampling: dict[str, Any] | SamplingOptions = field(default_factory=dict)


@dataclass
class DistillResult:
    """What :func:`distill` produced."""

    run_dir: Path
    package: Path
    compiled: Path
    report: EvaluationReport

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
        logger.info("stage %s done: %s", name, self.data["stages"][name])

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def _write_atomic(frames: list[Atoms], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)


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
    _write_atomic(frames, path)
    return frames


def split_stage(config: DistillConfig, frames: list[Atoms]) -> dict[str, list[Atoms]]:
    """Train/val/test split by seed structure (the test set measures generalisation)."""
    return dict(zip(SPLITS, split_by_seed(frames, fractions=config.fractions, seed=config.seed), strict=True))


def label_stage(
    config: DistillConfig, run_dir: Path, splits: dict[str, list[Atoms]], *, teacher=None, progress: bool = True
) -> dict[str, Path]:
    """Label each split with the teacher into ``labels/{split}.xyz`` (resumable)."""
    teacher = teacher if teacher is not None else load_teacher(config.teacher, device=config.device)
    paths = {}
    for name, frames in splits.items():
        paths[name] = run_dir / "labels" / f"{name}.xyz"
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
    shifts = None if config.init_from else fit_energy_shifts(read(labels["train"], index=":"), type_names)
    model = ModelOptions(student=config.student, size=config.size, r_max=config.r_max, energy_shifts=shifts)
    training = TrainingOptions(
        max_epochs=config.max_epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        atomic_energy_weight=config.atomic_energy_weight, stress_weight=config.stress_weight,
        energy_weight=config.energy_weight, init_from=config.init_from, progress=progress,
    )
    cfg = student_config([labels["train"]], [labels["val"]], type_names=type_names, model=model, training=training)
    return train_student(cfg, run_dir / config.train_dir, progress=progress)


def package_stage(checkpoint: Path, out: Path, metadata: dict[str, Any]) -> Path:
    """Package the checkpoint as a ``.nequip.zip`` holding the distillation ``metadata``.

    The package is complete when it appears at ``out`` (built under a temporary name,
    metadata added, then moved into place) and is not touched afterwards: its hash is
    what a compiled student records as its source (``source_sha256``) and what
    :func:`~torchsim_distill.compile.cached_compile` keys on, so a later rewrite would
    orphan every compiled copy.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name.replace(".nequip.zip", ".partial.nequip.zip"))
    proc = run_nequip("package", ["build", checkpoint, tmp])
    if proc.returncode != 0:
        raise RuntimeError(f"nequip-package failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    _add_distill_metadata(tmp, metadata)
    os.replace(tmp, out)
    return out


def _add_distill_metadata(package: Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` inside a nequip package being built, replacing any earlier copy.

    nequip ignores the extra entry when loading. The archive is rewritten to a
    temporary file and moved into place, so an interruption leaves the old one.
    Only for a package not yet compiled (see :func:`package_stage`).
    """
    package = Path(package)
    tmp = package.with_name(package.name + ".tmp")
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(tmp, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            if not item.filename.endswith(DISTILL_METADATA_ENTRY):
                zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/{DISTILL_METADATA_ENTRY}", json.dumps(jsonable(metadata), indent=1))
    os.replace(tmp, package)


def read_distill_metadata(package: str | Path) -> dict[str, Any]:
    """The distillation metadata of a packaged student (empty if it has none)."""
    with zipfile.ZipFile(package) as zf:
        names = [n for n in zf.namelist() if n.endswith(DISTILL_METADATA_ENTRY)]
        return json.loads(zf.read(names[0])) if names else {}


def data_hash(paths: list[Path]) -> str:
    """SHA-256 over the labelled data files, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def distill(config: DistillConfig, *, progress: bool = True) -> DistillResult:
    """Run every stage; write the model card even when the gates fail.

    The package is written once, with its distillation metadata, then compiled; the
    evaluation's numbers go to ``report/model_card.json``, not into the package.
    """
    from torchsim_distill.compile import cached_compile
    from torchsim_distill.distill.evaluation import Gates, evaluate
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _RunLog(run_dir, config)
    teacher = load_teacher(config.teacher, device=config.device)
    gates = config.gates or Gates()

    t0 = time.perf_counter()
    frames = sample_stage(config, run_dir, teacher=teacher, progress=progress)
    log.stage("sample", n_frames=len(frames), seconds=round(time.perf_counter() - t0, 1), output="frames.xyz")

    splits = split_stage(config, frames)
    seeds_of = {name: sorted({int(a.info["seed_id"]) for a in fr}) for name, fr in splits.items()}
    log.stage("split", n_frames={k: len(v) for k, v in splits.items()}, seed_ids=seeds_of)

    t0 = time.perf_counter()
    labels = label_stage(config, run_dir, splits, teacher=teacher, progress=progress)
    log.stage("label", seconds=round(time.perf_counter() - t0, 1), outputs={k: str(v) for k, v in labels.items()})

    type_names = type_names_of(frames)
    t0 = time.perf_counter()
    ckpt = train_stage(config, run_dir, labels, type_names, progress=progress)
    log.stage("train" if config.train_dir == "train" else f"train:{config.train_dir}", seconds=round(time.perf_counter() - t0, 1), checkpoint=str(ckpt))

    metadata = {
        "teacher": str(config.teacher),
        "student": config.student,
        "size": config.size,
        "species": type_names,
        "r_max": config.r_max,
        "n_frames": {k: len(v) for k, v in splits.items()},
        "data_sha256": data_hash([labels[s] for s in SPLITS]),
        "seed": config.seed,
    }
    package = package_stage(ckpt, run_dir / "student.nequip.zip", {**metadata, "gates": asdict(gates)})
    compiled = cached_compile(package, device=config.device, target="batch", verbose=progress)
    log.stage("compile", package=str(package), compiled=str(compiled))

    student = DistilledTorchSimCalc.from_compiled_model(compiled, device=config.device, chemical_species_to_atom_type_map=True)
    test_frames = read(labels["test"], index=":")
    report = evaluate(student, test_frames, run_dir / "report", teacher=teacher, gates=gates, metadata=metadata)
    card = report.paths["model_card_md"]
    log.stage("evaluate", passed=report.passed, failures=report.failures, model_card=str(card))
    logger.info("distilled %s: gates %s; model card %s", package, "passed" if report.passed else "FAILED", card)
    return DistillResult(run_dir, package, compiled, report)
