"""Train a NequIP or Allegro student with nequip's own trainer.

The student is trained by ``nequip-train`` on a config this module writes, so that
checkpoints, packaging and ``nequip-compile`` all work exactly as in nequip::

    cfg = student_config(["train.xyz"], ["val.xyz"], type_names=["Au", "Cu"])
    ckpt = train_student(cfg, "runs/student")
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms

from torchsim_distill.utils.scripts import run_nequip

#: Size presets. ``tiny`` is for tests; ``small`` trains on a CPU in minutes to an
#: hour; ``medium`` and ``large`` want a GPU for training (inference stays cheap).
#: ``features`` is NequIP's ``num_features`` and Allegro's ``num_tensor_features``
#: (Allegro's scalar track is 4x wider).
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"l_max": 1, "num_layers": 2, "features": 8, "mlp_width": 8},
    "small": {"l_max": 1, "num_layers": 2, "features": 16, "mlp_width": 32},
    "medium": {"l_max": 1, "num_layers": 3, "features": 32, "mlp_width": 64},
    "large": {"l_max": 2, "num_layers": 4, "features": 64, "mlp_width": 64},
}
STUDENTS = ("nequip", "allegro")


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


def student_config(
    train_files: list[str | Path],
    val_files: list[str | Path],
    *,
    type_names: list[str],
    r_max: float = 4.5,
    size: str = "small",
    max_epochs: int = 50,
    batch_size: int = 4,
    lr: float = 0.01,
    seed: int = 0,
    stress: bool = True,
    student: str = "nequip",
    atomic_energy_weight: float | None = None,
    stress_weight: float = 100.0,
    energy_weight: float = 1.0,
    init_from: str | Path | None = None,
    energy_shifts: dict[str, float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Return a nequip-train config (a plain dict) for a NequIP or Allegro student.

    Labels are read from extxyz files with ``energy``, ``forces`` and ``stress``
    (eV, eV/Å, eV/Å³, ASE sign), and per-atom ``energies`` when
    ``atomic_energy_weight`` asks to match the teacher's per-atom energies. The model
    is float64 so that the compiled student agrees with its eager form to round-off.

    ``stress_weight`` multiplies the stress MSE (eV/Å³)², which is ~1e-3 of the force
    MSE at equal relative error; ``energy_weight`` the per-atom energy MSE (eV²), ~1e-2
    of the force MSE for a good student (a few meV/atom against tens of meV/Å).
    ``init_from`` starts from the weights of a nequip checkpoint (``.ckpt``) or package
    (``.nequip.zip``) instead of a fresh model: nequip keeps the loss of a resumed run,
    so a new loss needs a new run from there.
    ``energy_shifts`` (eV per atom of each type, see :func:`fit_energy_shifts`)
    replace the default shift, the mean energy per atom, which is the same for every type.
    """
    if size not in SIZE_PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZE_PRESETS)}")
    if student not in STUDENTS:
        raise ValueError(f"unknown student {student!r}; choose one of {list(STUDENTS)}")
    preset = SIZE_PRESETS[size]
    # stress carries a large weight: it is small in eV/Å³ but users judge it in GPa
    loss_coeffs = {"total_energy": float(energy_weight), "forces": 1.0, "stress": float(stress_weight) if stress else 0.0}
    metric_coeffs = {"per_atom_energy_mae": 1.0, "forces_mae": 1.0, "stress_mae": 100.0 if stress else None}
    extra_loss = []
    if atomic_energy_weight:
        extra_loss.append({
            "name": "atomic_energy_mse",
            "field": "atomic_energy",
            "coeff": float(atomic_energy_weight),
            "metric": {"_target_": "nequip.train.MeanSquaredError"},
        })
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": batch_size}
    checkpoint = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": "${hydra:runtime.output_dir}"}
    callbacks: list[dict[str, Any]] = [
        {**checkpoint, "monitor": "val0_epoch/weighted_sum", "filename": "best", "save_top_k": 1},
        # Lightning's save_last only writes when the best improves; resuming needs every epoch
        {**checkpoint, "monitor": None, "filename": "last", "save_top_k": 1, "enable_version_counter": False},
    ]
    if progress:
        callbacks.append({"_target_": "lightning.pytorch.callbacks.TQDMProgressBar", "refresh_rate": 1})
    return {
        "run": ["train"],
        "seed": seed,
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule",
            "seed": seed,
            "train_dataset": [_dataset(f, type_names, r_max) for f in train_files],
            "val_dataset": [_dataset(f, type_names, r_max) for f in val_files],
            "train_dataloader": {**loader, "shuffle": True},
            "val_dataloader": loader,
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": type_names,
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "max_epochs": max_epochs,
            "check_val_every_n_epoch": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": progress,
            # per-epoch losses and validation metrics in {run_dir}/logs/version_N/metrics.csv,
            # a new N for each (re)start: the CSV logger empties a folder it reuses
            "logger": {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": "${hydra:runtime.output_dir}",
                "name": "logs",
            },
            "callbacks": callbacks,
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
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
            "optimizer": {"_target_": "torch.optim.Adam", "lr": lr},
            # halve the learning rate when validation stalls: cheap insurance for CPU budgets
            "lr_scheduler": {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "factor": 0.5,
                    "patience": 5,
                    "min_lr": 1e-5,
                },
                "monitor": "val0_epoch/weighted_sum",
                "interval": "epoch",
                "frequency": 1,
            },
            "model": _model_config(student, preset, type_names, r_max, seed, energy_shifts)
            if init_from is None
            else _pretrained(init_from),
        },
    }


def _pretrained(path: str | Path) -> dict[str, Any]:
    """nequip's loader for a checkpoint or package (absolute path: nequip re-reads it later)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist (expected a nequip .ckpt or .nequip.zip)")
    if path.name.endswith(".nequip.zip"):
        return {"_target_": "nequip.model.ModelFromPackage", "package_path": str(path)}
    return {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": str(path)}


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


def _model_config(
    student: str,
    preset: dict[str, Any],
    type_names: list[str],
    r_max: float,
    seed: int,
    energy_shifts: dict[str, float] | None = None,
) -> dict[str, Any]:
    common = {
        "seed": seed,
        "model_dtype": "float64",
        "type_names": type_names,
        "r_max": r_max,
        "l_max": preset["l_max"],
        "parity": True,
        "num_layers": preset["num_layers"],
        "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
        "per_type_energy_shifts": energy_shifts or "${training_data_stats:per_atom_energy_mean}",
        "per_type_energy_scales": "${training_data_stats:forces_rms}",
    }
    if student == "nequip":
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
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    args = ["-cp", str(run_dir), "-cn", "config", f"hydra.run.dir={run_dir}"]
    last = run_dir / "last.ckpt"
    if last.exists():
        args.append(f"++ckpt_path={last}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "train.log", "a") as log:
        proc = run_nequip("train", args, stdout=log, stderr=None if progress else subprocess.STDOUT, env=env, capture_output=False)
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"nequip-train failed (exit {proc.returncode}); log tail:\n{tail}")
    best = run_dir / "best.ckpt"
    if not best.exists():
        raise RuntimeError(f"nequip-train finished without writing {best}")
    return best
