"""The committee's uncertainty on a list of structures, batched through the compiled runtime.

Inference needs it on its own (a relaxation flags the structures its student is unsure
of); the distillation's calibration scores it against the teacher::

    calc = load_student("default", uncertainty=True)
    committee_uncertainty(calc, frames)["uncertainty"]   # [n_frames] eV/Å
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch_sim as ts
from ase import Atoms

from torchsim_distill.utils.batching import pbc_batches, to_numpy

if TYPE_CHECKING:
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc


def committee_uncertainty(
    calc: DistilledTorchSimCalc, frames: Sequence[Atoms], *, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """The committee's uncertainty of each frame, ``batch_size`` frames per call.

    One call of the main student and of each member per batch, through the compiled
    runtime; batches are cut where ``pbc`` changes (a torch-sim state has one). The
    calculator's ``uncertainty`` setting is switched on for these calls and restored.

    Args:
        calc: a calculator built with a ``committee``.
        frames: structures; their calculators, if any, are ignored.
        batch_size: most frames per call.

    Returns:
        float64 arrays: ``uncertainty [n_frames]`` eV/Å (``max_i σ_i``),
        ``energy_uncertainty [n_frames]`` eV/atom (``std_k E_k/n``), and the main
        student's ``energy [n_frames]`` eV and ``forces [n_atoms, 3]`` eV/Å (frames
        concatenated) with ``n_atoms [n_frames]``, for :func:`~torchsim_distill.distill.calibration.per_structure_force_error`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if not frames:
        raise ValueError("no frames given")
    if not calc.committee:
        raise ValueError("committee_uncertainty needs a calculator built with committee=[...]")
    keys = ("uncertainty", "energy_uncertainty", "energy", "forces")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    was_on = calc.uncertainty
    calc.uncertainty = True
    try:
        for chunk in pbc_batches(frames, batch_size):
            out = calc(ts.io.atoms_to_state(list(chunk), calc.device, calc.dtype))
            for key in keys:
                parts[key].append(to_numpy(out[key]))
    finally:
        calc.uncertainty = was_on
    result = {key: np.concatenate(values) for key, values in parts.items()}
    result["n_atoms"] = np.array([len(atoms) for atoms in frames], dtype=np.int64)
    return result
