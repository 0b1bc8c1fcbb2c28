"""Label frames with a teacher into an extxyz file, batched and resumable.

Frames go to the teacher as torch-sim states of several systems; each labelled batch
is appended to ``out_file`` and fsynced, so a killed run resumes where it stopped::

    frames = sample_configurations(seeds, teacher, n_configs=500, seed=0)
    report = label_frames(frames, teacher, "train.xyz", batch_size=16)
    report = label_frames(frames, teacher, "train.xyz", batch_size=16)  # after a crash: the rest only

The file holds ``energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE sign, Voigt)
and, when the teacher returns them, per-atom ``energies`` (eV), as nequip's
``ASEDataset`` reads them; each frame keeps its ``info`` (``frame_id``, ``seed_id``, ``kind``).
"""

from __future__ import annotations

import fcntl
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict
from ase.stress import full_3x3_to_voigt_6_stress
from torch_sim.autobatching import BinningAutoBatcher
from torch_sim.models.interface import ModelInterface
from tqdm.auto import tqdm

from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.utils.batching import to_numpy

#: Systems per teacher call on a CPU when neither a batch size nor a memory limit is given.
DEFAULT_CPU_BATCH_SIZE = 16
# frames given to torch-sim's bin packer at once; bounds memory on very large datasets
_WINDOW = 1024
# keys the labels are written under; stale copies in a frame's info/arrays would collide
_LABEL_KEYS = ("energy", "free_energy", "forces", "stress", "energies")


@dataclass(frozen=True)
class LabelingReport:
    """What one :func:`label_frames` call did.

    Attributes:
        path: the extxyz file.
        n_labelled: frames labelled by this call.
        n_skipped: frames already in the file (labelled by an earlier run).
        truncated_bytes: bytes of an incomplete trailing frame removed before resuming.
    """

    path: Path
    n_labelled: int
    n_skipped: int
    truncated_bytes: int


def label_frames(
    frames: Sequence[Atoms],
    teacher: ModelInterface | BaseCalculator | str | Path,
    out_file: str | Path,
    *,
    batch_size: int | None = None,
    max_memory_scaler: float | None = None,
    progress: bool = True,
    ray: str | None = None,
    n_actors: int | None = None,
    device: str = "cpu",
) -> LabelingReport:
    """Label ``frames`` with ``teacher`` and append them to ``out_file``.

    Resumable: frames whose ``info["frame_id"]`` is already in ``out_file`` are
    skipped, and a trailing frame cut short by a killed process is truncated away
    first, so every id ends up in the file exactly once.

    Nine parameters: what is labelled, by whom and into which file; how it is batched
    (``batch_size`` or ``max_memory_scaler``) and shown; and the Ray route's three
    (``ray``, ``n_actors``, ``device``), which a local call leaves unset.

    Args:
        frames: structures, each with a unique ``info["frame_id"]`` (the sampler
            sets it); all frames in one batch must share their ``pbc``.
        teacher: anything :func:`~torchsim_distill.distill.teachers.load_teacher` accepts.
        out_file: extxyz file, created or appended to.
        batch_size: systems per teacher call, in input order.
        max_memory_scaler: instead of ``batch_size``, let torch-sim's
            ``BinningAutoBatcher`` pack systems up to this limit (in the teacher's
            ``memory_scales_with`` units); the file order then follows its bins.
            With neither, CUDA teachers get torch-sim's memory estimate and CPU
            teachers :data:`DEFAULT_CPU_BATCH_SIZE` (the estimate needs CUDA).
        progress: show a tqdm bar.
        ray: label with teacher actors on a Ray cluster (``"local"``, ``"auto"`` or an
            address): the same batches, the same file, resumable alike (see
            :mod:`torchsim_distill.distill.ray_labeling`). ``teacher`` is then a name or a
            ``.pt2`` path, each actor loading its own; ``n_actors`` (default: one per core,
            or per GPU on CUDA) run on ``device``.
        device: where a teacher given by name or path runs.

    Raises:
        ValueError: a frame lacks ``frame_id``, ids repeat, both batching options are
            given, ``out_file`` holds frames without ``frame_id``, or a frame is larger
            than ``max_memory_scaler`` allows (a teacher whose memory scales with atoms).
    """
    if batch_size is not None and max_memory_scaler is not None:
        raise ValueError("give batch_size or max_memory_scaler, not both")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if ray is not None:
        # function-local: Ray is optional and loads only when asked for
        from torchsim_distill.distill.ray_labeling import check_ray_teacher, teacher_outputs

        check_ray_teacher(teacher)
        if max_memory_scaler is not None:
            raise ValueError("with ray, batches are counted in frames: give batch_size, not max_memory_scaler")
        batch_size = batch_size or DEFAULT_CPU_BATCH_SIZE
    else:
        teacher = load_teacher(teacher, device=device)
    if batch_size is None and max_memory_scaler is None and teacher.device.type != "cuda":
        batch_size = DEFAULT_CPU_BATCH_SIZE
    ids = _frame_ids(frames)
    path = Path(out_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        _lock(out, path)
        done, truncated = _resume(out, path)
        todo = [i for i, frame_id in enumerate(ids) if frame_id not in done]
        with tqdm(total=len(frames), initial=len(frames) - len(todo), desc="labeling", disable=not progress) as bar:
            if ray is not None:
                outputs = teacher_outputs(frames, todo, teacher, batch_size, address=ray, device=device, n_actors=n_actors)
            else:
                outputs = ((indices, teacher(state)) for indices, state in _batches(frames, todo, teacher, batch_size, max_memory_scaler))
            for indices, predicted in outputs:
                labelled = _labelled(frames, indices, predicted)
                buffer = io.StringIO()
                write(buffer, labelled, format="extxyz")
                out.write(buffer.getvalue().encode())
                # a batch is on disk before the next one starts: a kill loses at most one batch
                out.flush()
                os.fsync(out.fileno())
                bar.update(len(indices))
    return LabelingReport(path, n_labelled=len(todo), n_skipped=len(frames) - len(todo), truncated_bytes=truncated)



def label_for_run(config, frames: Sequence[Atoms], teacher, out_file: str | Path, *, progress: bool = True) -> LabelingReport:
    """:func:`label_frames` as a distillation run is configured (``config``: a
    :class:`~torchsim_distill.distill.config.DistillConfig`): on Ray actors when
    ``config.ray`` is set (they load the teacher by its name or path, ``config.teacher``),
    else with the loaded ``teacher``; batches of ``config.label_batch_size``. The label stage
    and the first student's static labels go through here, so both label alike."""
    if config.ray is not None:
        return label_frames(frames, config.teacher, out_file, batch_size=config.label_batch_size, progress=progress,
                            ray=config.ray, device=config.device)
    return label_frames(frames, teacher, out_file, batch_size=config.label_batch_size, progress=progress)


def labelled_frame_ids(path: str | Path) -> list[str]:
    """Ids of the complete frames in an extxyz file written by :func:`label_frames`.

    Read-only: an incomplete trailing frame is ignored here (``label_frames`` removes it).
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        return _scan(f, path)[0]


def _canonical_id(frame_id: object) -> str:
    """The id as it reads back from extxyz (``"007"`` is written bare and reads back as 7)."""
    return str(key_val_str_to_dict(key_val_dict_to_str({"frame_id": frame_id}))["frame_id"])


def _frame_ids(frames: Sequence[Atoms]) -> list[str]:
    ids = []
    for i, atoms in enumerate(frames):
        if "frame_id" not in atoms.info:
            raise ValueError(
                f"frame {i} has no info['frame_id']; resuming needs a stable id per frame "
                "(sample_configurations sets one)"
            )
        ids.append(_canonical_id(atoms.info["frame_id"]))
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"frame ids repeat, e.g. {repeated}; each frame needs a unique info['frame_id']")
    return ids


def _lock(out: io.BufferedWriter, path: Path) -> None:
    # two writers appending to one file would interleave and duplicate frames
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"{path} is being written by another label_frames run") from None


def _scan(f: io.BufferedReader, path: Path) -> tuple[list[str], int]:
    """Ids of the complete frames at the start of ``f``, and the byte offset after them.

    A frame is complete when its atom-count line, comment line and all atom lines
    end in a newline; a write cut short by a kill fails this, as does anything
    after it.
    """
    ids: list[str] = []
    end = 0
    while True:
        header = f.readline()
        if not header.endswith(b"\n"):
            break
        try:
            n_atoms = int(header)
        except ValueError:
            break
        comment = f.readline()
        if not comment.endswith(b"\n") or not all(f.readline().endswith(b"\n") for _ in range(n_atoms)):
            break
        info = key_val_str_to_dict(comment.decode())
        if "frame_id" not in info:
            raise ValueError(
                f"{path} holds a frame without frame_id (frame {len(ids)}); it was not written by label_frames"
            )
        ids.append(str(info["frame_id"]))
        end = f.tell()
    return ids, end


def _resume(out: io.BufferedWriter, path: Path) -> tuple[set[str], int]:
    """Ids already labelled; truncates an incomplete tail first and returns its size."""
    with open(path, "rb") as f:
        ids, end = _scan(f, path)
    size = path.stat().st_size
    if end < size:
        warnings.warn(
            f"{path}: removing {size - end} bytes after the last complete frame "
            f"({len(ids)} complete frames), left by an interrupted run",
            stacklevel=3,
        )
        out.truncate(end)
        out.flush()
        os.fsync(out.fileno())
    return set(ids), size - end


def _batches(
    frames: Sequence[Atoms],
    todo: list[int],
    teacher: ModelInterface,
    batch_size: int | None,
    max_memory_scaler: float | None,
) -> Iterator[tuple[list[int], ts.SimState]]:
    """(frame indices, their torch-sim state) per teacher call."""
    if batch_size is not None:
        for start in range(0, len(todo), batch_size):
            indices = todo[start : start + batch_size]
            yield indices, ts.io.atoms_to_state([frames[i] for i in indices], teacher.device, teacher.dtype)
        return
    if max_memory_scaler is not None and teacher.memory_scales_with == "n_atoms":
        # torch-sim would refuse mid-run, by a system index of one window and its own option name
        too_big = [i for i in todo if len(frames[i]) > max_memory_scaler]
        if too_big:
            frame = frames[too_big[0]]
            raise ValueError(
                f"frame {frame.info['frame_id']} has {len(frame)} atoms, more than max_memory_scaler="
                f"{max_memory_scaler:g} ({len(too_big)} frame(s) do): give max_memory_scaler ≥ "
                f"{max(len(frames[i]) for i in too_big)}, or batch_size instead"
            )
    cutoff = float(getattr(teacher, "r_max", None) or getattr(teacher, "cutoff", None) or 6.0)
    for start in range(0, len(todo), _WINDOW):
        window = todo[start : start + _WINDOW]
        batcher = BinningAutoBatcher(
            teacher,
            memory_scales_with=teacher.memory_scales_with,
            max_memory_scaler=max_memory_scaler,
            cutoff=cutoff,
        )
        batcher.load_states(ts.io.atoms_to_state([frames[i] for i in window], teacher.device, teacher.dtype))
        # the first window's estimate (CUDA) holds for the rest
        max_memory_scaler = batcher.max_memory_scaler
        for state, bin_indices in batcher:
            yield [window[i] for i in bin_indices], state


def _labelled(frames: Sequence[Atoms], indices: list[int], out: dict[str, torch.Tensor]) -> list[Atoms]:
    """Copies of the frames ``indices`` with the teacher's outputs on them (one state of
    those frames, in that order) as single-point results."""

    energy = to_numpy(out["energy"])
    counts = [len(frames[i]) for i in indices]
    forces = np.split(to_numpy(out["forces"]), np.cumsum(counts)[:-1])
    energies = np.split(to_numpy(out["energies"]), np.cumsum(counts)[:-1]) if "energies" in out else None
    stress = to_numpy(out["stress"]) if "stress" in out else None
    labelled = []
    for k, i in enumerate(indices):
        atoms = frames[i].copy()
        for key in _LABEL_KEYS:
            atoms.info.pop(key, None)
            atoms.arrays.pop(key, None)
        results: dict[str, object] = {"energy": float(energy[k]), "forces": forces[k]}
        if stress is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(stress[k])
        if energies is not None:
            results["energies"] = energies[k]
        atoms.calc = SinglePointCalculator(atoms, **results)
        labelled.append(atoms)
    return labelled
