"""Screening past one machine: :func:`~torchsim_distill.jobs.relax.relax_structures` on Ray actors.

The structures are cut into shards of ``shard_size``; each actor holds one student on
its device (one actor per GPU, or per ``cpus_per_actor`` cores) and relaxes whole shards
with the same batched FIRE as the single-process run. Results stream back to this
process, which stores each finished shard and, at the end, writes ``relaxed.extxyz``
and ``results.csv`` in input order, as the single-process run does::

    summary = relax_structures_on_ray(["alloys.xyz"], "student.nequip.pt2", "relaxed/", ray="local")
    torchsim-distill relax alloys.xyz --model student.nequip.pt2 --out relaxed/ --ray local
    torchsim-distill relax alloys.xyz --model student.nequip.pt2 --out relaxed/ --ray HEAD_IP:6379 --device cuda

Resumable: finished shards are kept in ``.OUT.shards-KEY/`` beside the output folder
(``KEY`` hashes the input, the model and the options), each written whole or not at
all, so a run killed and started again relaxes only the shards it had not finished.
The folder is removed once the outputs are written. Only this process writes files:
on a cluster the workers need no shared file system.

Input is read and checked here first, by the same functions and with the same errors
as the single-process run: nothing starts on the cluster for input that would fail.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from torchsim_distill.jobs.relax import (
    RelaxOptions,
    RelaxSummary,
    StructureResult,
    _result,
    _timed_relax,
    _write_outputs,
    checked_input,
    load_model,
)
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.files import replace_atomic, sha256_file
from torchsim_distill.utils.ray_pool import ActorPool, actor_layout, ray_session, require_ray

logger = logging.getLogger(__name__)

#: Structures per shard by default: enough to fill a CPU's batch (~2,000 atoms of
#: small cells) and to keep a GPU busy between hand-overs, few enough that a lost
#: shard costs little and the shards outnumber the actors of a small cluster.
DEFAULT_SHARD_SIZE = 64


class RelaxWorker:
    """A Ray actor's state: one student, loaded here from its name or path, on ``device``.

    Args:
        model: what :func:`~torchsim_distill.jobs.relax.load_model` takes (not a calculator).
        device: ``"cuda"`` is the actor's own GPU (Ray sets ``CUDA_VISIBLE_DEVICES``).
        cell_filter: as in ``relax_structures`` (decides the neighbor list's skin).
        num_threads: torch threads, the actor's share of the cores.
    """

    def __init__(self, model: str, device: str, cell_filter: str | None, num_threads: int) -> None:
        torch.set_num_threads(num_threads)
        self.calc = load_model(model, device, cell_filter=cell_filter)

    def relax(
        self, ids: list[str], atoms_list: list[Atoms], options: RelaxOptions
    ) -> tuple[list[tuple[StructureResult, Atoms]], float]:
        """Rows and relaxed ``Atoms`` of one shard, in its order, and the seconds it took."""
        (finals, steps, converged), _, seconds = _timed_relax(atoms_list, self.calc, options, progress=False)
        rows = [_result(*row) for row in zip(ids, atoms_list, finals, steps, converged, strict=True)]
        return rows, seconds


@dataclass(frozen=True)
class RayOptions:
    """Where and in what pieces a Ray relaxation runs.

    Attributes:
        address: ``"local"`` (a cluster on this machine), ``"auto"`` (the one ``ray start``
            made here) or a cluster address; an existing ``ray.init`` connection is used as is.
        shard_size: structures per shard (default :data:`DEFAULT_SHARD_SIZE`): the unit of
            work, of retries and of resuming.
        n_actors: actors (default: one per GPU on CUDA, else one per ``cpus_per_actor`` cores).
        cpus_per_actor: cores, and torch threads, per actor.
    """

    address: str = "local"
    shard_size: int | None = None
    n_actors: int | None = None
    cpus_per_actor: int = 1


_RAY_FIELDS = ("shard_size", "n_actors", "cpus_per_actor")


def relax_structures_on_ray(
    structures: str | Path | Atoms | Sequence[str | Path | Atoms],
    model: str | Path,
    out_dir: str | Path,
    *,
    ray: str | RayOptions = "local",
    options: RelaxOptions | dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    summary: bool | None = None,
    **overrides: Any,
) -> RelaxSummary:
    """:func:`~torchsim_distill.jobs.relax.relax_structures` on a Ray cluster: the same
    checks, relaxation and output files, with the work spread over actors and resumable.

    Args:
        structures, out_dir, options, device: as for ``relax_structures`` (``device`` is
            where the actors run the student).
        model: ``"default"`` or a model file (each actor loads its own copy; not a calculator).
        ray: the cluster's address (see :class:`RayOptions`), or a :class:`RayOptions`.
        progress: show a progress bar (shards as they are stored).
        summary: log a summary at the end (the CLI shows it); ``None``: with the progress bar.
        overrides: :class:`~torchsim_distill.jobs.relax.RelaxOptions` fields (``fmax=...``)
            and :class:`RayOptions` ones (``shard_size``, ``n_actors``, ``cpus_per_actor``)
            as keywords.

    Raises:
        ImportError: Ray is not installed (naming the extra to install).
        RelaxInputError, FileNotFoundError, ValueError: as ``relax_structures``, before
            anything starts on the cluster.
    """
    require_ray()
    if isinstance(model, DistilledTorchSimCalc):
        raise ValueError(
            "with ray, give the model as 'default' or a file path (each actor loads its own copy), not a calculator"
        )
    ray_fields = {k: overrides.pop(k) for k in _RAY_FIELDS if k in overrides}
    ray = ray if isinstance(ray, RayOptions) else RayOptions(address=ray)
    ray = replace(ray, **ray_fields) if ray_fields else ray
    options = RelaxOptions.of(options, **overrides)
    # the single-process run's checks, in its order and with its errors
    out_dir = Path(out_dir)
    ids, atoms_list, _ = checked_input(structures, model, out_dir, device=device, options=options)
    result = relax_on_ray(ids, atoms_list, model, out_dir, ray=ray, device=device, options=options, progress=progress)
    if progress if summary is None else summary:
        logger.info(result.report())
    return result


def relax_on_ray(
    ids: list[str],
    atoms_list: list[Atoms],
    model: str | Path,
    out_dir: Path,
    *,
    ray: RayOptions,
    device: str,
    options: RelaxOptions,
    progress: bool = False,
) -> RelaxSummary:
    """Relax checked structures on a Ray cluster and write the outputs in input order.

    Args:
        ids, atoms_list: what :func:`~torchsim_distill.jobs.relax.read_structures` returned,
            already checked (elements, cells) by the caller.
        model: a name or path each actor loads.
        out_dir: output folder, as for the single-process run.
        ray: the cluster (see :func:`~torchsim_distill.utils.ray_pool.ray_session`) and the
            shards and actors.
        device: where the actors run the student.
        options: how to relax.
        progress: a progress bar of the structures stored.

    Returns:
        the summary; ``wall_time`` counts the shards relaxed by this call (from the first
        hand-over to the last result), ``warmup_time`` the cluster and actors' start.
    """
    shard_size = ray.shard_size or DEFAULT_SHARD_SIZE
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    shards = [range(s, min(s + shard_size, len(ids))) for s in range(0, len(ids), shard_size)]
    key = _run_key(ids, atoms_list, model, device, shard_size, options.relaxation())
    store = out_dir.parent / f".{out_dir.name}.shards-{key}"
    done = {k: rows for k in range(len(shards)) if (rows := _read_shard(store, k)) is not None}
    todo = [k for k in range(len(shards)) if k not in done]

    warmup_time = wall_time = 0.0
    if todo:
        t0 = time.perf_counter()
        with ray_session(ray.address) as session:
            n, actor_options = actor_layout(session, device, n_actors=ray.n_actors, cpus_per_actor=ray.cpus_per_actor)
            # a relative path means this process's folder, not the actors'
            path = Path(model)
            name = str(path.resolve()) if path.suffix and path.is_file() else str(model)  # not "default"
            init_args = (name, device, options.cell_filter, ray.cpus_per_actor)
            with ActorPool(RelaxWorker, init_args, n_actors=min(n, len(todo)), actor_options=actor_options, name="relax") as pool:
                pool.wait_ready()
                warmup_time = time.perf_counter() - t0
                t0 = time.perf_counter()
                tasks = [([ids[i] for i in shards[k]], [atoms_list[i] for i in shards[k]], options) for k in todo]
                with tqdm(total=len(ids), initial=len(ids) - sum(len(shards[k]) for k in todo), desc="relax (ray)",
                          unit="structure", disable=not progress) as bar:
                    for j, (rows, _) in pool.map_unordered("relax", tasks):
                        _write_shard(store, todo[j], rows)
                        done[todo[j]] = rows
                        bar.update(len(rows))
                wall_time = time.perf_counter() - t0

    rows = [row for k in range(len(shards)) for row in done[k]]
    results, relaxed = [r for r, _ in rows], [a for _, a in rows]
    _write_outputs(out_dir, results, relaxed)
    shutil.rmtree(store, ignore_errors=True)
    return RelaxSummary(out_dir, results, relaxed, wall_time, warmup_time)


# -- the shard store -------------------------------------------------------------------


def _run_key(ids: list[str], atoms_list: list[Atoms], model: str | Path, device: str, shard_size: int, options: dict) -> str:
    """16 hex digits that change with anything that changes a shard's result: the input
    (ids, species, positions, cells, pbc), the model (its file's bytes), the options."""
    h = hashlib.sha256()
    path = Path(model)
    model_id = sha256_file(path) if path.is_file() else str(model)
    h.update(json.dumps([model_id, device, shard_size, options], sort_keys=True, default=str).encode())
    for id_, atoms in zip(ids, atoms_list, strict=True):
        h.update(id_.encode())
        for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def _shard_path(store: Path, k: int) -> Path:
    return store / f"shard-{k:06d}.pkl"


def _read_shard(store: Path, k: int) -> list[tuple[StructureResult, Atoms]] | None:
    path = _shard_path(store, k)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def _write_shard(store: Path, k: int, rows: list[tuple[StructureResult, Atoms]]) -> None:
    """Pickle (full precision, the relaxed ``Atoms`` with their results) to a temporary
    name, then rename: a shard is on disk whole or not at all."""
    with replace_atomic(_shard_path(store, k), fsync=True) as tmp, open(tmp, "wb") as f:
        pickle.dump(rows, f)
