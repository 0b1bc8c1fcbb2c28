"""What a nequip training run left behind, read back: the trainer's ``metrics.csv`` files
(one per start of a resumed run) and its checkpoints.

The run's card, its advice and its resumption all ask these questions of a training folder;
they live here, apart from the pipeline that asks them (``distill.run``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

#: the whole validation split's loss, which picks the best checkpoint (``val0``)
VAL_LOSS = "val0_epoch/weighted_sum"


def metric_rows(train_dir: str | Path) -> list[dict[str, str]]:
    """The validation rows of every ``logs/version_*/metrics.csv`` in ``train_dir``, the
    trainer's starts in order (a resumed run's restarts one after the other)."""
    rows: list[dict[str, str]] = []
    paths = sorted(Path(train_dir).glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for path in paths:
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get(VAL_LOSS)]
    return rows


def best_row(train_dir: str | Path) -> dict[str, str] | None:
    """The validation row of the best epoch (lowest :data:`VAL_LOSS`), None before any."""
    rows = metric_rows(train_dir)
    return min(rows, key=lambda r: float(r[VAL_LOSS])) if rows else None


def validation_curve(train_dir: str | Path) -> list[float]:
    """The validation loss per epoch (a resumed epoch's last value counts)."""
    by_epoch = {int(r["epoch"]): float(r[VAL_LOSS]) for r in metric_rows(train_dir)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def validation_near_far(train_dir: str | Path) -> dict[str, Any] | None:
    """The validation errors of the best epoch near and far from equilibrium (meV/atom,
    meV/Å, GPa), from val1 and val2 of :func:`~torchsim_distill.distill.run.train_stage`;
    ``None`` when the training did not log them apart."""
    from ase.units import GPa

    best = best_row(train_dir)
    if best is None or not best.get("val2_epoch/forces_mae"):
        return None
    out: dict[str, Any] = {"epoch": int(best["epoch"])}
    for name, key in (("near", "val1"), ("far", "val2")):
        stress = best.get(f"{key}_epoch/stress_mae")
        out[name] = {
            "energy_mae": 1000 * float(best[f"{key}_epoch/per_atom_energy_mae"]),
            "force_mae": 1000 * float(best[f"{key}_epoch/forces_mae"]),
            "stress_mae": float(stress) / GPa if stress else None,
        }
    return out


def resumable_validation(train_dir: Path, val: list[Path]) -> list[Path]:
    """``val``, or only its first (whole) split when ``train_dir`` holds a ``last.ckpt`` of a
    run begun with one validation set (before the near/far split was logged): nequip restores
    its metrics per validation set, so such a run resumes only with the layout it began with."""
    last = train_dir / "last.ckpt"
    if len(val) == 1 or not last.is_file():
        return val
    import torch

    state = torch.load(last, map_location="cpu", weights_only=False).get("state_dict", {})
    return val if any(key.startswith("val_metrics.1.") for key in state) else val[:1]


def checkpoint_epoch(checkpoint: Path) -> int | None:
    """The (0-based) epoch a Lightning checkpoint was saved at, None if it does not say."""
    import torch

    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"])
    except (OSError, KeyError, RuntimeError, ValueError):
        return None
