"""Screening past one machine: :func:`~torchsim_distill.jobs.relax.relax_structures` on Ray actors.

The structures are cut into shards of ``shard_size``; each actor holds one student on
its device (one actor per GPU, or per ``cpus_per_actor`` cores) and relaxes whole shards
with the same batched FIRE as the single-process run. Results stream back to this
process, which stores each finished shard and, at the end, writes ``relaxed.extxyz``,
``results.csv`` and ``errors.csv`` in input order, as the single-process run does::

    summary = relax_structures_on_ray(["alloys.xyz"], "student.nequip.pt2", "relaxed/", ray="local")
    torchsim-distill relax alloys.xyz --model student.nequip.pt2 --out relaxed/ --ray local
    torchsim-distill relax alloys.xyz --model student.nequip.pt2 --out relaxed/ --ray HEAD_IP:6379 --device cuda

Resumable and streamed as the single-process run is (the same chunk store,
``.OUT.parts-KEY/`` beside the output folder): the input is read lazily, a window of
shards ahead of the actors, and a run killed and started again relaxes only the shards
it had not finished. Only this process writes files: on a cluster the workers need no
shared file system.

Input is checked here, by the same functions and with the same errors as the
single-process run: with ``on_error="stop"`` nothing starts on the cluster for input
that would fail; with ``"skip"`` bad structures go to ``errors.csv`` and never leave
this process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from itertools import batched
from pathlib import Path
from typing import Any

import torch
from ase import Atoms

from torchsim_distill.jobs.chunk_store import Chunk, ChunkStore, run_key
from torchsim_distill.jobs.relax import (
    RelaxInputError,
    RelaxOptions,
    RelaxSummary,
    _check_output,
    load_model,
    relax_chunk,
)
from torchsim_distill.jobs.relax_outputs import write_outputs
from torchsim_distill.jobs.structure_stream import Item, check_paths, count_structures, iter_structures
from torchsim_distill.runtime.calculator import DistilledTorchSimCalc
from torchsim_distill.utils.progress import Progress
from torchsim_distill.utils.ray_pool import ActorPool, actor_layout, ray_session, require_ray

logger = logging.getLogger(__name__)

#: Structures per shard by default: enough to fill a CPU's batch (~2,000 atoms of
#: small cells) and to keep a GPU busy between hand-overs, few enough that a lost
#: shard costs little and the shards outnumber the actors of a small cluster.
DEFAULT_SHARD_SIZE = 64
#: Shards handed out at a time, per actor: the input is read this far ahead of the actors,
#: which keeps them busy while memory holds a bounded number of shards.
SHARDS_AHEAD_PER_ACTOR = 4


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

    def relax(self, items: list[Item], options: dict, on_error: str) -> Chunk:
        """One shard, as the single-process run relaxes one chunk."""
        return relax_chunk(items, self.calc, options, on_error=on_error)


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
    checks, relaxation, error policy and output files, with the shards spread over actors,
    the input streamed and the run resumable.

    Args:
        structures, out_dir, options, device: as for ``relax_structures`` (``device`` is
            where the actors run the student; shards, not ``options.chunk_size``, are the unit).
        model: ``"default"`` or a model file (each actor loads its own copy; not a calculator).
        ray: the cluster's address (see :class:`RayOptions`), or a :class:`RayOptions`.
        progress: progress as a bar (terminal) or periodic lines (logs), per stored shard.
        summary: log a summary at the end (the CLI shows it); ``None``: with ``progress``.
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
    if options.dispersion is not None:
        raise ValueError("--dispersion is not supported with --ray yet; relax on this machine")
    shard_size = ray.shard_size or DEFAULT_SHARD_SIZE
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    _check_output(out_dir)
    items = check_paths(structures)
    # the model is loaded here too: its elements check the input before any actor starts
    calc = load_model(model, device, cell_filter=options.cell_filter)
    checks = dict(known_elements=set(calc.species.species_to_type), need_cell=options.cell_filter is not None)
    if options.on_error == "stop":
        first = next((item for item in iter_structures(items, **checks) if item.error), None)
        if first is not None:
            raise RelaxInputError(first.error)
    relaxation = options.relaxation()
    settings = dict(relaxation, chunk_size=shard_size, on_error=options.on_error, device=device)
    store = ChunkStore.beside(out_dir, run_key(items, model, settings))
    shards = batched(iter_structures(items, **checks), shard_size)
    bar = Progress(count_structures(items), verb="relaxed", unit="structures", enabled=progress,
                   every=options.progress_every)
    result = _relax_shards(shards, store, model, out_dir, ray=ray, device=device, relaxation=relaxation,
                           on_error=options.on_error, progress=bar)
    store.remove()
    if progress if summary is None else summary:
        logger.info(result.report())
    return result


def _relax_shards(shards, store: ChunkStore, model, out_dir: Path, *, ray: RayOptions, device: str, relaxation: dict,
                  on_error: str, progress: Progress) -> RelaxSummary:
    """Hand the shards not yet stored to actors, a window at a time, store each as it comes
    back, then write the outputs from the store. The cluster starts only if there is work.
    (Nine parameters: the run's pieces, each made once by :func:`relax_structures_on_ray`.)"""
    warmup_time = wall_time = 0.0
    n_here = atom_steps = n_resumed = n_shards = 0
    with ExitStack() as stack, progress:
        pool, window = None, 1
        pending: list[tuple[int, tuple]] = []

        def run_window() -> None:
            nonlocal n_here, atom_steps
            for j, chunk in pool.map_unordered("relax", [task for _, task in pending]):
                store.write(pending[j][0], chunk)
                n_here += len(chunk.rows) + len(chunk.errors)
                atom_steps += sum(r.n_atoms * r.steps for r in chunk.rows)
                progress.update(len(chunk.rows) + len(chunk.errors))
            pending.clear()

        for k, shard in enumerate(shards):
            n_shards = k + 1
            if store.has(k):
                n_resumed += len(shard)
                progress.skip(len(shard))
                continue
            if pool is None:
                t0 = time.perf_counter()
                session = stack.enter_context(ray_session(ray.address))
                n, actor_options = actor_layout(session, device, n_actors=ray.n_actors,
                                                cpus_per_actor=ray.cpus_per_actor)
                # a relative path means this process's folder, not the actors'
                path = Path(model)
                name = str(path.resolve()) if path.suffix and path.is_file() else str(model)  # not "default"
                init_args = (name, device, relaxation["cell_filter"], ray.cpus_per_actor)
                pool = stack.enter_context(ActorPool(RelaxWorker, init_args, n_actors=n, actor_options=actor_options,
                                                     name="relax"))
                pool.wait_ready()
                warmup_time = time.perf_counter() - t0
                window = SHARDS_AHEAD_PER_ACTOR * n
                t_start = time.perf_counter()
            pending.append((k, (list(shard), relaxation, on_error)))
            if len(pending) >= window:
                run_window()
        if pending:
            run_window()
        if pool is not None:
            wall_time = time.perf_counter() - t_start
    return write_outputs(out_dir, store, n_shards, wall_time, warmup_time, n_resumed=n_resumed, n_here=n_here,
                         atom_steps=atom_steps)
