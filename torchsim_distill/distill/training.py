"""Train a NequIP or Allegro student with nequip's own trainer.

The student is trained by ``nequip-train`` on a config this module writes, so that
checkpoints, packaging and ``nequip-compile`` all work exactly as in nequip::

    cfg = student_config(["train.xyz"], ["val.xyz"], type_names=["Au", "Cu"],
                         model=ModelOptions(size="tiny"), training=TrainingOptions(max_epochs=10))
    ckpt = train_student(cfg, "runs/student")
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from torchsim_distill.utils.options import cli
from torchsim_distill.utils.scripts import run_nequip

logger = logging.getLogger(__name__)

#: Size presets. Training cost on one CPU core, measured on Cu–Au frames (32–108 atoms,
#: r_max 5 Å, batches of 8; ``benchmarks/training_cost.py`` measures it on a machine):
#: ``tiny`` is for tests; ``small`` ~0.1 s per batch, ~15 s per epoch of 1000 frames;
#: ``medium`` 0.5 s (float32) / 0.9 s (float64) per batch, ~55 s / ~110 s per epoch of
#: 1000 frames (a 100-epoch run is a few hours of one core, resumable); ``large`` (l_max 2)
#: costs tens of times more per step and wants a GPU. Inference stays cheap for all.
#: ``features`` is NequIP's ``num_features`` and Allegro's ``num_tensor_features``
#: (Allegro's scalar track is 4x wider).
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"l_max": 1, "num_layers": 2, "features": 8, "mlp_width": 8},
    "small": {"l_max": 1, "num_layers": 2, "features": 16, "mlp_width": 32},
    "medium": {"l_max": 1, "num_layers": 3, "features": 32, "mlp_width": 64},
    "large": {"l_max": 2, "num_layers": 4, "features": 64, "mlp_width": 64},
}
STUDENTS = ("nequip", "allegro")
#: nequip's ``model_dtype`` choices. float32 keeps the per-type energy shifts and scales,
#: and so the summed energies, in float64 (nequip does that for any model dtype).
PRECISIONS = ("float64", "float32")
#: Learning-rate schedules (:class:`TrainingOptions`).
LR_SCHEDULES = ("plateau", "cosine")


@dataclass(frozen=True)
class ModelOptions:
    """The student network (see :func:`student_config`).

    Attributes:
        student: ``"nequip"`` or ``"allegro"`` (:data:`STUDENTS`).
        size: a :data:`SIZE_PRESETS` key.
        r_max: cutoff, Å.
        energy_shifts: eV per atom of each type (see :func:`fit_energy_shifts`); ``None``
            uses nequip's default, the mean energy per atom, the same for every type.
        precision: the network's dtype, nequip's ``model_dtype`` (:data:`PRECISIONS`):
            ``"float64"`` agrees with its compiled form to round-off; ``"float32"`` is
            nequip's own default and runs faster, at ~1e-7 relative round-off.
    """

    student: str = field(default="nequip", metadata=cli("the student's architecture", always=True, choices=STUDENTS))
    size: str = field(default="small", metadata=cli("the student's size preset", always=True, choices=list(SIZE_PRESETS)))
    r_max: float = field(default=4.5, metadata=cli("the student's cutoff, A", always=True))
    energy_shifts: dict[str, float] | None = None
    precision: str = field(default="float64", metadata=cli(
        "the student's dtype (nequip's model_dtype); float32 is faster, compile keeps it", choices=PRECISIONS))

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {list(PRECISIONS)}")
        if self.size not in SIZE_PRESETS:
            raise ValueError(f"unknown size {self.size!r}; choose one of {sorted(SIZE_PRESETS)}")
        if self.student not in STUDENTS:
            raise ValueError(f"unknown student {self.student!r}; choose one of {list(STUDENTS)}")


@dataclass(frozen=True)
class TrainingOptions:
    """How the student is trained (see :func:`student_config`).

    Attributes:
        max_epochs, batch_size, lr: the trainer's epochs, frames per batch and Adam's
            initial learning rate (halved when validation stalls).
        seed: seed of data shuffling and weight initialisation.
        stress: fit stress (weight ``stress_weight``) and report its MAE.
        atomic_energy_weight: loss weight on the teacher's per-atom energies
            (``energies`` in the extxyz files); ``None`` or 0 leaves them out.
        stress_weight: multiplies the stress MSE (eV/Å³)²; ``None`` (the default): balanced
            by the training labels' own scales, ``(force scale / stress scale)²`` (see
            :func:`label_scales`), so that equal relative errors weigh alike. A fixed
            weight of 100 (the old default) left stress to ~1e-1 of the force term.
        energy_weight: multiplies the per-atom energy MSE (eV²); forces weigh 1. ``None``
            (the default): ``(force scale / energy-per-atom scale)²`` of the training labels.
            A weight of 1 (the old default) left the energy term about a tenth of the force
            term, and a silicon student's validation energy stalled at 30–40 meV/atom.
        force_huber_delta: fit forces with a Huber loss of this delta (eV/Å) instead of
            their MSE: errors beyond it weigh linearly, so a few strongly distorted frames
            (forces of tens of eV/Å, errors of eV/Å) do not drown the near-equilibrium
            ones in the gradient. ``None``: MSE.
        lr_schedule: how the learning rate falls: ``"cosine"`` (the default) takes it down a
            cosine to 1 % of ``lr`` over ``max_epochs`` (:data:`LR_SCHEDULES`), so that a run of
            a planned length ends converged instead of waiting on plateaus that a noisy
            validation loss seldom shows; ``"plateau"`` halves it when validation stalls for 5
            epochs (nequip's usual choice, for open-ended runs; the default before).
        init_from: start from the weights of a nequip checkpoint (``.ckpt``) or package
            (``.nequip.zip``) instead of a fresh model: nequip keeps the loss of a
            resumed run, so a new loss needs a new run from there. A source of another
            dtype than ``precision`` is rebuilt in ``precision`` with its weights cast
            (:func:`model_cast_from`; the architecture options must then be the source's).
        max_time: seconds of training at most (Lightning's ``max_time``; a resumed run
            counts the time before its interruption): a budgeted run's cap, so that an
            estimate that was too low costs epochs, not the budget. ``None``: no cap.
        progress: the trainer shows a progress bar.
    """

    max_epochs: int = field(default=50, metadata=cli("training epochs at most", always=True))
    batch_size: int = 4
    lr: float = 0.01
    seed: int = 0
    stress: bool = True
    atomic_energy_weight: float | None = None
    stress_weight: float | None = None
    energy_weight: float | None = None
    force_huber_delta: float | None = None
    lr_schedule: str = "cosine"
    init_from: str | Path | None = None
    max_time: float | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
        if self.force_huber_delta is not None and not self.force_huber_delta > 0:
            raise ValueError(f"force_huber_delta is a force in eV/Å and must be > 0 (or None for MSE), got {self.force_huber_delta}")


def student_config(
    train_files: Sequence[str | Path],
    val_files: Sequence[str | Path],
    *,
    type_names: list[str],
    model: ModelOptions | None = None,
    training: TrainingOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Return a nequip-train config (a plain dict) for a NequIP or Allegro student.

    Labels are read from extxyz files with ``energy``, ``forces`` and ``stress``
    (eV, eV/Å, eV/Å³, ASE sign), and per-atom ``energies`` when
    ``atomic_energy_weight`` asks to match the teacher's per-atom energies. The model
    is float64 unless ``precision="float32"`` (see :class:`ModelOptions`).

    Args:
        train_files, val_files: labelled extxyz files.
        type_names: the student's atom types (chemical symbols, in type order).
        model: the network (default :class:`ModelOptions`).
        training: the training run (default :class:`TrainingOptions`).
        overrides: single fields of either dataclass (``r_max=5.0, max_epochs=10``),
            applied on top of ``model`` and ``training``.
    """
    model, training = _options(model or ModelOptions(), training or TrainingOptions(), overrides)
    if training.energy_weight is None or training.stress_weight is None:
        training = _resolve_weights(training, train_files, type_names)
    return {
        "run": ["train"],
        "seed": training.seed,
        "data": _data_config(train_files, val_files, type_names, model.r_max, training),
        "trainer": _trainer_config(training),
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            **_loss_and_metrics(training),
            "optimizer": {"_target_": "torch.optim.Adam", "lr": training.lr},
            "lr_scheduler": _lr_scheduler(training),
            "model": _model_config(model, type_names, training.seed)
            if training.init_from is None
            else _pretrained(training.init_from, model, type_names, training.seed),
        },
    }


def _lr_scheduler(training: TrainingOptions) -> dict[str, Any]:
    """Lightning's scheduler entry for ``training.lr_schedule`` (stepped once per epoch)."""
    if training.lr_schedule == "cosine":
        scheduler = {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "T_max": training.max_epochs,
            "eta_min": training.lr / 100,
        }
    else:  # halve the learning rate when validation stalls: cheap insurance for CPU budgets
        scheduler = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "factor": 0.5, "patience": 5, "min_lr": 1e-5}
    return {"scheduler": scheduler, "monitor": _MONITOR, "interval": "epoch", "frequency": 1}


def _options(
    model: ModelOptions, training: TrainingOptions, overrides: dict[str, Any]
) -> tuple[ModelOptions, TrainingOptions]:
    """``model`` and ``training`` with each override applied to the dataclass that has the field."""
    fields = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (ModelOptions, TrainingOptions)}
    unknown = sorted(set(overrides) - fields[ModelOptions] - fields[TrainingOptions])
    if unknown:
        raise TypeError(f"student_config: unknown options {unknown}; known: {sorted(fields[ModelOptions] | fields[TrainingOptions])}")
    model_overrides = {k: v for k, v in overrides.items() if k in fields[ModelOptions]}
    training_overrides = {k: v for k, v in overrides.items() if k in fields[TrainingOptions]}
    return dataclasses.replace(model, **model_overrides), dataclasses.replace(training, **training_overrides)


#: The validation metric that picks the best checkpoint and drives the learning-rate schedule.
_MONITOR = "val0_epoch/weighted_sum"


def _dataset(path: str | Path, type_names: list[str], r_max: float) -> dict[str, Any]:
    return {
        "_target_": "nequip.data.dataset.ASEDataset",
        "file_path": str(Path(path).resolve()),
        "ase_args": {"format": "extxyz"},
        "transforms": [
            {
                "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                "model_type_names": type_names,
                "chemical_species_to_atom_type_map": {t: t for t in type_names},
            },
            {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": r_max},
        ],
    }


def _data_config(
    train_files: Sequence[str | Path],
    val_files: Sequence[str | Path],
    type_names: list[str],
    r_max: float,
    training: TrainingOptions,
) -> dict[str, Any]:
    """nequip's data module: the datasets, their loaders and the statistics manager."""
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": training.batch_size}
    return {
        "_target_": "nequip.data.datamodule.NequIPDataModule",
        "seed": training.seed,
        "train_dataset": [_dataset(f, type_names, r_max) for f in train_files],
        "val_dataset": [_dataset(f, type_names, r_max) for f in val_files],
        "train_dataloader": {**loader, "shuffle": True},
        "val_dataloader": loader,
        "stats_manager": {
            "_target_": "nequip.data.CommonDataStatisticsManager",
            "type_names": type_names,
        },
    }


def _trainer_config(training: TrainingOptions) -> dict[str, Any]:
    """Lightning's trainer: epochs, logging, and checkpoints of the best and of every epoch."""
    checkpoint = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": "${hydra:runtime.output_dir}"}
    callbacks: list[dict[str, Any]] = [
        {**checkpoint, "monitor": _MONITOR, "filename": "best", "save_top_k": 1},
        # Lightning's save_last only writes when the best improves; resuming needs every epoch
        {**checkpoint, "monitor": None, "filename": "last", "save_top_k": 1, "enable_version_counter": False},
    ]
    if training.progress:
        callbacks.append({"_target_": "lightning.pytorch.callbacks.TQDMProgressBar", "refresh_rate": 1})
    return {
        "_target_": "lightning.Trainer",
        "max_epochs": training.max_epochs,
        **({"max_time": _duration(training.max_time)} if training.max_time else {}),
        "check_val_every_n_epoch": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": training.progress,
        # per-epoch losses and validation metrics in {run_dir}/logs/version_N/metrics.csv,
        # a new N for each (re)start: the CSV logger empties a folder it reuses
        "logger": {
            "_target_": "lightning.pytorch.loggers.CSVLogger",
            "save_dir": "${hydra:runtime.output_dir}",
            "name": "logs",
        },
        "callbacks": callbacks,
    }


def _duration(seconds: float) -> str:
    """Lightning's ``"DD:HH:MM:SS"`` of ``seconds`` (at least one): a dict would reach it as
    hydra's DictConfig, which it does not take."""
    s = max(1, round(seconds))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _loss_and_metrics(training: TrainingOptions) -> dict[str, Any]:
    """The training module's ``loss`` and ``val_metrics``, keyed by nequip's field names."""
    # imported here: nequip's package import takes seconds, and importing the distill
    # package (the CLI, the notebooks) should not pay for it before a training starts
    from nequip.data import AtomicDataDict as Keys

    energy, forces, stress = Keys.TOTAL_ENERGY_KEY, Keys.FORCE_KEY, Keys.STRESS_KEY
    # stress carries a large weight: it is small in eV/Å³ but users judge it in GPa
    huber = training.force_huber_delta is not None
    loss_coeffs = {
        energy: float(training.energy_weight),
        forces: 0.0 if huber else 1.0,
        stress: float(training.stress_weight) if training.stress else 0.0,
    }
    # nequip names its per-atom energy metric "per_atom_energy_mae" (no field constant for it)
    metric_coeffs = {
        "per_atom_energy_mae": 1.0,
        f"{forces}_mae": 1.0,
        f"{stress}_mae": 100.0 if training.stress else None,
    }
    extra_loss = []
    if huber:  # in place of the forces MSE; twice the Huber loss is the MSE below delta
        extra_loss.append({
            "name": f"{forces}_huber",
            "field": forces,
            "coeff": 2.0,
            "metric": {"_target_": "nequip.train.HuberLoss", "delta": float(training.force_huber_delta)},
        })
    if training.atomic_energy_weight:
        extra_loss.append({
            "name": f"{Keys.PER_ATOM_ENERGY_KEY}_mse",
            "field": Keys.PER_ATOM_ENERGY_KEY,
            "coeff": float(training.atomic_energy_weight),
            "metric": {"_target_": "nequip.train.MeanSquaredError"},
        })
    return {
        "loss": {
            "_target_": "nequip.train.EnergyForceStressLoss",
            "per_atom_energy": True,
            "coeffs": loss_coeffs,
            "extra_metrics": extra_loss or None,
        },
        "val_metrics": {
            "_target_": "nequip.train.EnergyForceStressMetrics",
            "coeffs": metric_coeffs,
        },
    }


def _pretrained(path: str | Path, model: ModelOptions, type_names: list[str], seed: int) -> dict[str, Any]:
    """nequip's loader for a checkpoint or package (absolute path: nequip re-reads it later),
    or :func:`model_cast_from` when its dtype is not ``model.precision``."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist (expected a nequip .ckpt or .nequip.zip)")
    if _saved_model_dtype(path) != model.precision:
        return {
            "_target_": f"{__name__}.model_cast_from",
            "source": str(path),
            "architecture": _model_config(model, type_names, seed),
        }
    if path.name.endswith(".nequip.zip"):
        return {"_target_": "nequip.model.ModelFromPackage", "package_path": str(path)}
    return {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": str(path)}


@dataclass(frozen=True)
class LabelScales:
    """The spread of the training labels the student must learn, in their loss units.

    Attributes:
        force: eV/Å, root mean square of the force components.
        energy_per_atom: eV/atom, root mean square of the per-atom energies left after the
            per-type shifts (:func:`fit_energy_shifts`): what the network itself must explain.
        stress: eV/Å³, root mean square of the stress components (None: no frame has one).
    """

    force: float
    energy_per_atom: float
    stress: float | None

    def weights(self) -> tuple[float, float]:
        """``(energy_weight, stress_weight)`` making each term weigh like the force term
        at equal relative error: ``(force / scale)²``, kept within [0.1, 1e5] (a degenerate
        set of labels, one frame or no strain, must not blow one term up)."""
        def ratio(scale: float | None) -> float:
            if not scale or not self.force:
                return 1.0
            return float(np.clip((self.force / scale) ** 2, 0.1, 1e5))

        return ratio(self.energy_per_atom), ratio(self.stress)

    def as_dict(self) -> dict[str, Any]:
        energy_weight, stress_weight = self.weights()
        return {**dataclasses.asdict(self), "energy_weight": energy_weight, "stress_weight": stress_weight}


def label_scales(frames: Sequence[Atoms], type_names: list[str]) -> LabelScales:
    """The :class:`LabelScales` of labelled ``frames`` (``energy``, ``forces``, ``stress``)."""
    forces = np.concatenate([a.get_forces().ravel() for a in frames]) if frames else np.zeros(1)
    shifts = fit_energy_shifts(list(frames), type_names) if frames else {}
    residual = np.array([
        (a.get_potential_energy() - sum(shifts[s] for s in a.get_chemical_symbols())) / len(a) for a in frames
    ]) if frames else np.zeros(1)
    stresses = []
    for a in frames:
        try:
            stresses.append(a.get_stress(voigt=False).ravel())
        except PropertyNotImplementedError:  # no stress label (a molecule)
            continue
    stress = float(np.sqrt(np.mean(np.concatenate(stresses) ** 2))) if stresses else None
    return LabelScales(float(np.sqrt(np.mean(forces**2))), float(np.sqrt(np.mean(residual**2))), stress)


#: ``(energy_weight, stress_weight)`` of a config written before its training files exist
#: (nothing to balance by yet; nequip-train would not start without them): the old defaults.
WEIGHTS_WITHOUT_LABELS = (1.0, 100.0)


def _resolve_weights(training: TrainingOptions, train_files: Sequence[str | Path], type_names: list[str]) -> TrainingOptions:
    """``training`` with unset loss weights balanced by the labels of ``train_files``
    (:data:`WEIGHTS_WITHOUT_LABELS` while a file does not exist yet)."""
    if train_files and all(Path(f).is_file() for f in train_files):
        from ase.io import read

        frames = [a for f in train_files for a in read(f, index=":")]
        return balanced_weights(training, label_scales(frames, type_names))
    logger.debug("student_config: %s not written yet; loss weights %s", list(train_files), WEIGHTS_WITHOUT_LABELS)
    energy_weight, stress_weight = WEIGHTS_WITHOUT_LABELS
    return dataclasses.replace(
        training,
        energy_weight=energy_weight if training.energy_weight is None else training.energy_weight,
        stress_weight=stress_weight if training.stress_weight is None else training.stress_weight,
    )


def balanced_weights(training: TrainingOptions, scales: LabelScales) -> TrainingOptions:
    """``training`` with its unset (``None``) energy and stress weights taken from ``scales``."""
    energy_weight, stress_weight = scales.weights()
    return dataclasses.replace(
        training,
        energy_weight=energy_weight if training.energy_weight is None else training.energy_weight,
        stress_weight=stress_weight if training.stress_weight is None else training.stress_weight,
    )


def fit_energy_shifts(frames: list[Atoms], type_names: list[str]) -> dict[str, float]:
    """Per-type energies (eV/atom) that best explain the frames' total energies.

    Least squares on ``E ≈ Σ_t n_t e_t``: without it every type starts from the same
    mean energy per atom, and the network must learn the difference between elements,
    which the force and stress losses say nothing about.
    """
    counts = np.array([[a.get_chemical_symbols().count(t) for t in type_names] for a in frames], dtype=float)
    energies = np.array([a.get_potential_energy() for a in frames])
    shifts, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {t: float(e) for t, e in zip(type_names, shifts, strict=True)}


def _saved_model_dtype(path: Path) -> str:
    """The ``model_dtype`` a nequip checkpoint or package was built with."""
    # loaded here: nequip's import takes seconds, and a run that does not fine-tune should not pay it
    from nequip.nn.graph_model import MODEL_DTYPE_KEY

    from torchsim_distill.compile import load_eager_model

    return str(load_eager_model(path).metadata.get(MODEL_DTYPE_KEY, "float64"))


def model_cast_from(source: str, architecture: dict[str, Any]) -> Any:
    """The network of ``architecture`` (a :func:`_model_config` dict) holding the weights of
    the nequip checkpoint or package ``source``, cast to the network's dtypes.

    nequip calls this from a training config (``_target_``) to warm-start a student in
    another precision than its source: a float32 student fine-tuned from float64 weights.
    Every tensor is cast to the dtype the new network gives it (nequip keeps its energy
    shifts and scales in float64 in a float32 model), including the buffers that a state
    dict leaves out (the neighbour-count normalisation, computed from training data
    statistics), so before training the two models differ by round-off only.
    """
    import torch
    from hydra.utils import get_method
    from nequip.model.saved_models.load_utils import load_saved_model

    config = dict(architecture)
    model = get_method(config.pop("_target_"))(**config)
    donor = load_saved_model(source, compile_mode="eager")
    weights, target = donor.state_dict(), model.state_dict()
    differ = sorted(set(weights) ^ set(target)) or [k for k in target if weights[k].shape != target[k].shape]
    if differ:
        raise ValueError(
            f"init_from {source}: its network is not the one asked for (student, size, r_max and type "
            f"names must be the source's to cast it to {config['model_dtype']}); tensors that differ: {differ[:5]}"
        )
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in weights.items()})
    donor_buffers = dict(donor.named_buffers())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name not in target:  # non-persistent: not in a state dict
                buffer.copy_(donor_buffers[name].to(buffer.dtype))
    return model


def _model_config(model: ModelOptions, type_names: list[str], seed: int) -> dict[str, Any]:
    """A fresh NequIP or Allegro network of the preset's size, in ``model.precision``."""
    preset = SIZE_PRESETS[model.size]
    common = {
        "seed": seed,
        "model_dtype": model.precision,
        "type_names": type_names,
        "r_max": model.r_max,
        "l_max": preset["l_max"],
        "parity": True,
        "num_layers": preset["num_layers"],
        "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
        "per_type_energy_shifts": model.energy_shifts or "${training_data_stats:per_atom_energy_mean}",
        "per_type_energy_scales": "${training_data_stats:forces_rms}",
    }
    if model.student == "nequip":
        return {
            "_target_": "nequip.model.NequIPGNNModel",
            **common,
            "num_features": preset["features"],
            "radial_mlp_depth": 1,
            "radial_mlp_width": preset["mlp_width"],
        }
    return {
        "_target_": "allegro.model.AllegroModel",
        **common,
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        "num_scalar_features": 4 * preset["features"],
        "num_tensor_features": preset["features"],
        "allegro_mlp_hidden_layers_depth": 1,
        "allegro_mlp_hidden_layers_width": 4 * preset["features"],
    }


def train_student(config: dict[str, Any], run_dir: str | Path, *, progress: bool = False) -> Path:
    """Run ``nequip-train`` on ``config`` in ``run_dir``; return the best checkpoint.

    Resumes from ``run_dir/last.ckpt`` when an earlier run was interrupted (nequip
    restores the optimizer, epoch and data state from it). With ``progress``, the
    trainer's progress bar (stderr) goes to the terminal; the log goes to ``train.log``.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False)
    best, done = run_dir / "best.ckpt", run_dir / "done.yaml"
    if best.exists() and done.exists() and done.read_text() == text:
        # finished with this very config: a rerun of the pipeline does not start nequip again
        logger.debug("nequip-train in %s: already finished", run_dir)
        return best
    (run_dir / "config.yaml").write_text(text)
    args = ["-cp", str(run_dir), "-cn", "config", f"hydra.run.dir={run_dir}"]
    last = run_dir / "last.ckpt"
    if last.exists():
        _extend_cosine(last, config)
        args.append(f"++ckpt_path={last}")
    logger.debug("nequip-train in %s (%s; log in train.log)", run_dir, f"resuming from {last.name}" if last.exists() else "new run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "train.log", "a") as log:
        proc = run_nequip("train", args, stdout=log, stderr=None if progress else subprocess.STDOUT, env=env, capture_output=False)
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"nequip-train failed (exit {proc.returncode}); log tail:\n{tail}")
    if not best.exists():
        raise RuntimeError(f"nequip-train finished without writing {best}")
    done.write_text(text)
    return best


def _extend_cosine(last: Path, config: dict[str, Any]) -> None:
    """Before resuming from ``last`` with more epochs than it was begun with, move its cosine
    schedule onto the longer run: Lightning restores the scheduler's state, ``T_max``
    included, and a cosine continued past its ``T_max`` climbs back to the initial rate (a
    run resumed from 71 to 142 epochs would end at its highest learning rate). The rate is
    set to where the longer schedule stands at the checkpoint's epoch, and ``T_max`` to the
    new length; what "train longer" (the advice) asks for. Other schedules are left alone."""
    import torch

    scheduler = (config.get("training_module", {}).get("lr_scheduler") or {}).get("scheduler", {})
    epochs = config.get("trainer", {}).get("max_epochs")
    if not str(scheduler.get("_target_", "")).endswith("CosineAnnealingLR") or not epochs:
        return
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    states = ckpt.get("lr_schedulers") or []
    if not states or "T_max" not in states[0] or states[0]["T_max"] == epochs:
        return
    state, t = states[0], int(states[0].get("last_epoch", ckpt.get("epoch", 0)))
    eta_min = float(state.get("eta_min", 0.0))
    lrs = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * min(t, epochs) / epochs)) / 2
           for base in state.get("base_lrs", [])]
    state["T_max"] = int(epochs)
    state["_last_lr"] = lrs
    for opt in ckpt.get("optimizer_states", []):
        for group, lr in zip(opt.get("param_groups", []), lrs, strict=False):
            group["lr"] = lr
    tmp = last.with_suffix(".extending")
    torch.save(ckpt, tmp)
    tmp.replace(last)
    logger.info("resuming %s on a cosine of %d epochs (learning rate %s at epoch %d)", last, epochs, lrs, t)
