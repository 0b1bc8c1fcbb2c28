"""Is the committee's uncertainty worth trusting? Measure it on held-out frames.

The committee (see :mod:`torchsim_distill.runtime.committee`; its scores on frames come from
:func:`~torchsim_distill.runtime.uncertainty.committee_uncertainty`) gives each structure an
uncertainty ``u_s`` (eV/Å, the max over atoms of the members' force spread). It is
useful only if it tracks the main student's true error ``e_s`` (eV/Å, the max over atoms
of ``|F_student − F_reference|``), which is measured here, not assumed::

    unc = committee_uncertainty(calc, test_frames)           # calc has a committee
    err = per_structure_force_error(reference_labels(test_frames)["forces"], unc["forces"], unc["n_atoms"])
    report = calibrate(unc["uncertainty"], err, threshold=0.1)
    report["spearman"], report["recall"], report["flagged_fraction"]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from scipy.stats import rankdata

from torchsim_distill.distill.evaluation import reference_labels
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.runtime.uncertainty import committee_uncertainty

#: Force error (eV/Å) above which a frame counts as badly predicted in :func:`calibrate`.
ERROR_LEVEL = 0.3


def per_structure_force_error(
    reference_forces: np.ndarray, predicted_forces: np.ndarray, n_atoms: np.ndarray | Sequence[int]
) -> np.ndarray:
    """True force error of each structure: ``e_s = max_{i ∈ s} |F_pred,i − F_ref,i|``, eV/Å.

    Args:
        reference_forces, predicted_forces: ``[N, 3]`` eV/Å, structures concatenated in order.
        n_atoms: ``[B]`` atoms per structure (each ≥ 1, summing to ``N``).

    Returns:
        ``[B]`` eV/Å.
    """
    reference_forces, predicted_forces = np.asarray(reference_forces), np.asarray(predicted_forces)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if reference_forces.shape != predicted_forces.shape or reference_forces.shape != (int(n_atoms.sum()), 3):
        raise ValueError(
            f"forces must both be [sum(n_atoms), 3] = [{int(n_atoms.sum())}, 3], got "
            f"{reference_forces.shape} and {predicted_forces.shape}"
        )
    if n_atoms.size == 0 or n_atoms.min() < 1:
        raise ValueError("every structure needs at least one atom")
    per_atom = np.linalg.norm(predicted_forces - reference_forces, axis=1)  # |ΔF_i|
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    return np.maximum.reduceat(per_atom, starts)


def spearman(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks (ties get their average rank).

    ``ρ = cov(r_x, r_y) / (σ_rx σ_ry)``; 1 when ``y`` grows with ``x``, −1 when it shrinks,
    NaN when either has no spread (fewer than two frames, or all equal).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    rx, ry = rankdata(x, method="average"), rankdata(y, method="average")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / norm) if norm > 0 else float("nan")


def calibrate(
    uncertainty: np.ndarray | Sequence[float],
    force_error: np.ndarray | Sequence[float],
    *,
    threshold: float,
    error_level: float = ERROR_LEVEL,
) -> dict[str, float]:
    """How well the per-structure uncertainty ``u_s`` finds the frames with a large force error ``e_s``.

    A frame is *flagged* when ``u_s > threshold`` and *bad* when ``e_s > error_level``.

    Args:
        uncertainty: ``[B]`` eV/Å (from :func:`committee_uncertainty`).
        force_error: ``[B]`` eV/Å (from :func:`per_structure_force_error`).
        threshold: uncertainty above which a frame is flagged, eV/Å.
        error_level: force error above which a frame is bad, eV/Å.

    Returns:
        ``spearman``: rank correlation of ``u`` and ``e`` (see :func:`spearman`);
        ``recall``: flagged bad frames / bad frames (NaN without bad frames);
        ``precision``: bad flagged frames / flagged frames (NaN when none is flagged);
        ``flagged_fraction``: flagged frames / all frames; the counts ``n_frames``,
        ``n_bad``, ``n_flagged``; and ``threshold``, ``error_level``.
    """
    u, e = np.asarray(uncertainty, dtype=np.float64), np.asarray(force_error, dtype=np.float64)
    if u.shape != e.shape or u.ndim != 1 or u.size == 0:
        raise ValueError(f"uncertainty and force_error must be 1-D, equal and non-empty, got {u.shape} and {e.shape}")
    flagged, bad = u > threshold, e > error_level
    n_bad, n_flagged = int(bad.sum()), int(flagged.sum())
    return {
        "spearman": spearman(u, e),
        "recall": float((flagged & bad).sum() / n_bad) if n_bad else float("nan"),
        "precision": float((flagged & bad).sum() / n_flagged) if n_flagged else float("nan"),
        "flagged_fraction": n_flagged / u.size,
        "n_frames": int(u.size),
        "n_bad": n_bad,
        "n_flagged": n_flagged,
        "threshold": float(threshold),
        "error_level": float(error_level),
    }


def calibrate_on(calc: DistilledTorchSimCalc, frames: Sequence[Atoms], *, threshold: float) -> dict[str, float | int]:
    """:func:`calibrate` on labelled ``frames``: the committee's per-structure uncertainty
    against the student's true per-structure force error (teacher labels from the frames)."""
    reference = reference_labels(frames)
    scores = committee_uncertainty(calc, frames)
    error = per_structure_force_error(reference["forces"], scores["forces"], reference["n_atoms"])
    return calibrate(scores["uncertainty"], error, threshold=threshold)
