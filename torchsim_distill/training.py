"""Train a NequIP or Allegro student with nequip's own trainer.

The student is trained by ``nequip-train`` on a config this module writes, so that
checkpoints, packaging and ``nequip-compile`` all work exactly as in nequip::

    cfg = student_config(["train.xyz"], ["val.xyz"], type_names=["Au", "Cu"])
    ckpt = train_student(cfg, "runs/student")
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

#: Size presets: ``small`` trains on a CPU in minutes; larger ones want a GPU.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"l_max": 1, "num_layers": 2, "num_features": 8, "radial_mlp_width": 8},
    "small": {"l_max": 1, "num_layers": 2, "num_features": 16, "radial_mlp_width": 32},
    "medium": {"l_max": 1, "num_layers": 3, "num_features": 32, "radial_mlp_width": 64},
    "large": {"l_max": 2, "num_layers": 4, "num_features": 64, "radial_mlp_width": 64},
}


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
) -> dict[str, Any]:
    """Return a nequip-train config (a plain dict) for a NequIP student.

    Labels are read from extxyz files with ``energy``, ``forces`` and ``stress``
    (eV, eV/Å, eV/Å³, ASE sign). The model is float64 so that the compiled student
    agrees with its eager form to round-off.
    """
    if size not in SIZE_PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZE_PRESETS)}")
    preset = SIZE_PRESETS[size]
    # stress carries a large weight: it is small in eV/Å³ but users judge it in GPa
    loss_coeffs = {"total_energy": 1.0, "forces": 1.0, "stress": 100.0 if stress else 0.0}
    metric_coeffs = {"per_atom_energy_mae": 1.0, "forces_mae": 1.0, "stress_mae": None}
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": batch_size}
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
            "enable_progress_bar": False,
            "logger": False,
            "callbacks": [
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "monitor": "val0_epoch/weighted_sum",
                    "dirpath": "${hydra:runtime.output_dir}",
                    "filename": "best",
                    "save_top_k": 1,
                    "save_last": True,
                }
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "loss": {
                "_target_": "nequip.train.EnergyForceStressLoss",
                "per_atom_energy": True,
                "coeffs": loss_coeffs,
            },
            "val_metrics": {
                "_target_": "nequip.train.EnergyForceStressMetrics",
                "coeffs": metric_coeffs,
            },
            "optimizer": {"_target_": "torch.optim.Adam", "lr": lr},
            "model": {
                "_target_": "nequip.model.NequIPGNNModel",
                "seed": seed,
                "model_dtype": "float64",
                "type_names": type_names,
                "r_max": r_max,
                "l_max": preset["l_max"],
                "parity": True,
                "num_layers": preset["num_layers"],
                "num_features": preset["num_features"],
                "radial_mlp_depth": 1,
                "radial_mlp_width": preset["radial_mlp_width"],
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
                "per_type_energy_scales": "${training_data_stats:forces_rms}",
            },
        },
    }


def train_student(config: dict[str, Any], run_dir: str | Path) -> Path:
    """Run ``nequip-train`` on ``config`` in ``run_dir``; return the best checkpoint.

    Resumes from ``run_dir/last.ckpt`` when an earlier run was interrupted.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        str(Path(sys.executable).with_name("nequip-train")),
        "-cp", str(run_dir), "-cn", "config",
        f"hydra.run.dir={run_dir}",
    ]
    last = run_dir / "last.ckpt"
    if last.exists():
        cmd.append(f"++ckpt_path={last}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"nequip-train failed (exit {proc.returncode}); log tail:\n{tail}")
    best = run_dir / "best.ckpt"
    if not best.exists():
        raise RuntimeError(f"nequip-train finished without writing {best}")
    return best
