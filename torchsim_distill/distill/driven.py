"""The sampler's model-driven runs: MD snapshots and relaxation paths, batched in torch-sim.

:mod:`~torchsim_distill.distill.sampling` decides what to sample (which seeds, which
starts, how many frames); this module runs a model over them and reads back the frames.
The model that drives is a parameter (the *driver*): the teacher in a first distillation,
a cheap student in an on-policy round (:mod:`~torchsim_distill.distill.rounds`), with the
teacher labelling only::

    paths = relaxation_paths(starts, driver, fmax=0.05, max_steps=200, cell=False)
    for run, step, atoms in along_paths(paths, 12):  # 12 frames shared among the paths
        ...

Every system's trajectory goes to a temporary HDF5 file (full precision) and is read back.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch_sim as ts
from ase import Atoms
from torch_sim.autobatching import BinningAutoBatcher, InFlightAutoBatcher
from torch_sim.models.interface import ModelInterface
from torch_sim.trajectory import TorchSimTrajectory, TrajectoryReporter

from torchsim_distill.utils.relaxation import fire_relax

__all__ = ["along_paths", "md_snapshots", "relaxation_paths"]

Trajectory = list[tuple[int, Atoms]]


def md_snapshots(
    structures: Sequence[Atoms],
    n: int,
    rng: np.random.Generator,
    driver: ModelInterface,
    *,
    temperatures: Sequence[float],
    timestep_fs: float,
    stride: int,
    max_memory_scaler: float | None,
) -> list[Atoms]:
    """``n`` NVT Langevin snapshots, one trajectory per (seed, temperature), batched per
    temperature, every ``stride`` steps (step 0 is not a snapshot). With fewer frames than
    (seed, temperature) pairs, ``n`` pairs are drawn. Frames carry ``info`` ``seed_id``,
    ``temperature`` (K) and ``md_step``; runs are interleaved, so every run is represented."""
    runs = [(s, float(t)) for t in temperatures for s in range(len(structures))]
    if n < len(runs):
        runs = [runs[j] for j in sorted(rng.choice(len(runs), size=n, replace=False))]
    per_run = math.ceil(n / len(runs))
    collected: dict[tuple[int, float], Trajectory] = {}
    with tempfile.TemporaryDirectory(prefix="tsd-md-") as tmp:
        for temperature in sorted({t for _, t in runs}):
            seed_ids = [s for s, t in runs if t == temperature]
            state = ts.io.atoms_to_state([structures[s] for s in seed_ids], driver.device, driver.dtype)
            state.rng = int(rng.integers(2**31))
            directory = Path(tmp) / f"T{temperature:g}"
            reporter, files = _reporter(directory, len(seed_ids), stride)
            ts.integrate(
                state, driver,
                integrator=ts.Integrator.nvt_langevin,
                n_steps=per_run * stride,
                temperature=temperature,
                timestep=timestep_fs / 1000.0,  # fs → ps (torch-sim metal units)
                trajectory_reporter=reporter,
                autobatcher=_binning(driver, max_memory_scaler),
            )
            for s, path in zip(seed_ids, files, strict=True):
                collected[(s, temperature)] = _read_frames(path)[:per_run]
    out = []
    for k in range(per_run):
        for s, t in runs:
            if k < len(collected[(s, t)]) and len(out) < n:
                step, atoms = collected[(s, t)][k]
                atoms.info = {"seed_id": s, "temperature": t, "md_step": step}
                out.append(atoms)
    return out


def relaxation_paths(
    starts: Sequence[Atoms],
    driver: ModelInterface,
    *,
    fmax: float,
    max_steps: int,
    cell: bool,
    max_memory_scaler: float | None,
) -> list[Trajectory]:
    """FIRE relaxations of ``starts`` (all in one torch-sim state; ``cell``: Fréchet cell
    filter) until forces are below ``fmax`` eV/Å or ``max_steps``; per start, its path as
    ``(step, Atoms)`` for every step after the start, in order."""
    state = ts.io.atoms_to_state(list(starts), driver.device, driver.dtype)
    with tempfile.TemporaryDirectory(prefix="tsd-relax-") as tmp:
        reporter, files = _reporter(Path(tmp), len(starts), 1)
        fire_relax(
            state, driver, fmax=fmax, max_steps=max_steps, cell=cell,
            trajectory_reporter=reporter, autobatcher=_in_flight(driver, max_memory_scaler),
        )
        return [_read_frames(path) for path in files]


def along_paths(paths: Sequence[Trajectory], n: int, *, end_first: bool = False) -> list[tuple[int, int, Atoms]]:
    """``n`` frames shared among ``paths`` one at a time in turn (a path shorter than its
    share gives what it has), evenly spaced along each path from its first step to its last
    (the relaxed structure); as ``(path index, step, Atoms)``, path by path. A path given a
    single frame gives its first step, or with ``end_first`` its relaxed end."""
    quota = [0] * len(paths)
    while sum(quota) < n and any(q < len(p) for q, p in zip(quota, paths, strict=True)):
        for r, path in enumerate(paths):
            if quota[r] < len(path) and sum(quota) < n:
                quota[r] += 1
    out = []
    for r, (path, q) in enumerate(zip(paths, quota, strict=True)):
        for j in [len(path) - 1] if end_first and q == 1 else np.linspace(0, len(path) - 1, q).round().astype(int):
            step, atoms = path[j]
            out.append((r, step, atoms))
    return out


def _reporter(directory: Path, n: int, stride: int) -> tuple[TrajectoryReporter, list[Path]]:
    """One HDF5 trajectory per system, full precision, states only (no properties)."""
    files = [directory / f"{i:05d}.h5" for i in range(n)]
    reporter = TrajectoryReporter(
        files, state_frequency=stride, trajectory_kwargs={"coerce_to_float32": False}
    )
    return reporter, files


def _read_frames(path: Path) -> Trajectory:
    """(step, Atoms) of every recorded state after step 0, one per step."""
    with TorchSimTrajectory(path, mode="r") as traj:
        steps = traj.get_steps("positions")
        frames = {int(s): traj.get_atoms(i) for i, s in enumerate(steps) if s > 0}
    return sorted(frames.items())


def _binning(driver: ModelInterface, max_memory_scaler: float | None) -> BinningAutoBatcher | bool:
    if max_memory_scaler is None:
        return False
    return BinningAutoBatcher(
        driver, memory_scales_with=driver.memory_scales_with, max_memory_scaler=max_memory_scaler
    )


def _in_flight(driver: ModelInterface, max_memory_scaler: float | None) -> InFlightAutoBatcher | bool:
    if max_memory_scaler is None:
        return False
    return InFlightAutoBatcher(
        driver, memory_scales_with=driver.memory_scales_with, max_memory_scaler=max_memory_scaler
    )
