"""Ray, optional: a cluster session and a pool of actors that each hold one loaded model.

Screening and labelling outgrow one machine; Ray spreads them over the cores, GPUs and
nodes of a cluster. Ray is an optional extra (``pip install 'torchsim_distill[distributed]'``),
so this module imports it inside functions only and the core never imports this module
at load time::

    with ray_session("local") as ray, ActorPool(Worker, ("student.nequip.pt2",), n_actors=2, name="relax") as pool:
        for k, result in pool.map_unordered("relax", [(shard,) for shard in shards]):
            ...  # results as they finish, ``k`` the task's position

Fault tolerance comes in two layers. Ray restarts a dead actor (``max_restarts``) and
replays the task it was running (``max_task_retries``). An actor gone for good (killed
without restart, or out of restarts) has its task handed to a fresh actor, at most
``max_retries`` times per task; an exception raised by the task itself is a bug in the
input or code, not bad luck, and is raised at once.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: what to install when Ray is missing
INSTALL_HINT = "pip install 'torchsim_distill[distributed]'"


def require_ray() -> ModuleType:
    """The ``ray`` module, or an ``ImportError`` saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"--ray / ray=... needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


@contextmanager
def ray_session(address: str) -> Iterator[ModuleType]:
    """Connect to a Ray cluster for the duration of the block and yield ``ray``.

    Args:
        address: ``"local"`` starts a cluster on this machine (all its cores and GPUs),
            ``"auto"`` joins the one started here by ``ray start``, and anything else is
            a cluster address (``"HEAD_IP:6379"``, ``"ray://HEAD_IP:10001"``). When this
            process is already connected (``ray.init`` called by the caller), that
            connection is used as it is, and kept open afterwards.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address == "local":
        # the dashboard is a web server nobody here reads; workers' output stays in Ray's logs
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


class ActorPool:
    """``n_actors`` Ray actors of ``worker_cls``, each built once with ``init_args``
    (loading its model), fed tasks one at a time as they free up.

    Args:
        worker_cls: a plain class (importable by the workers: it is sent by reference).
        init_args: its constructor's arguments (paths and names, not loaded models).
        n_actors: actors to start.
        actor_options: Ray's actor options, e.g. ``{"num_cpus": 1}`` or ``{"num_gpus": 1}``.
        name: a word in the actors' names (``torchsim_distill.NAME.RUN.I``), for finding
            them with ``ray.util.list_named_actors()``.
        max_retries: Ray's restarts per actor and replays per task, and the fresh actors
            a task may be handed to when its actor is gone for good.
    """

    def __init__(
        self,
        worker_cls: type,
        init_args: Sequence[Any],
        *,
        n_actors: int,
        actor_options: dict[str, Any],
        name: str,
        max_retries: int = 3,
    ) -> None:
        if n_actors < 1:
            raise ValueError(f"n_actors must be >= 1, got {n_actors}")
        self.ray = require_ray()
        self._remote = self.ray.remote(worker_cls)
        self._options = dict(max_restarts=max_retries, max_task_retries=max_retries, **actor_options)
        self._init_args = tuple(init_args)
        self._prefix = f"torchsim_distill.{name}.{uuid.uuid4().hex[:8]}"
        self._started = 0
        self.max_retries = max_retries
        self.actors = [self._start() for _ in range(n_actors)]

    def _start(self) -> Any:
        actor = self._remote.options(name=f"{self._prefix}.{self._started}", **self._options).remote(*self._init_args)
        self._started += 1
        return actor

    def wait_ready(self) -> None:
        """Block until every actor has been built (its model loaded); raises its error if one fails."""
        self.ray.get([actor.__ray_ready__.remote() for actor in self.actors])

    def map_unordered(self, method: str, tasks: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """``(k, actor.method(*tasks[k]))`` for every task, in the order they finish."""
        ray = self.ray
        pending = deque(range(len(tasks)))
        failures = [0] * len(tasks)
        running: dict[Any, tuple[int, Any]] = {}
        idle = list(self.actors)
        while pending or running:
            while pending and idle:
                actor, k = idle.pop(0), pending.popleft()
                running[getattr(actor, method).remote(*tasks[k])] = (k, actor)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            k, actor = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                # the actor is gone for good (Ray already restarted it and replayed the task
                # as often as it may): a fresh actor takes the task over
                failures[k] += 1
                if failures[k] > self.max_retries:
                    raise RuntimeError(f"task {k} lost its actor {failures[k]} times; giving up: {err}") from err
                pending.appendleft(k)
                self.actors = [a for a in self.actors if a is not actor]
                replacement = self._start()
                self.actors.append(replacement)
                idle.append(replacement)
                continue
            idle.append(actor)
            yield k, result

    def close(self) -> None:
        """Stop the actors (their CPUs and GPUs go back to the cluster)."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def actor_layout(ray: ModuleType, device: str, *, n_actors: int | None, cpus_per_actor: int) -> tuple[int, dict[str, Any]]:
    """How many actors, and each one's Ray options: one per GPU on CUDA, else one per
    ``cpus_per_actor`` cores of the cluster (each then runs that many torch threads, so
    the actors together use the cores without oversubscribing them).

    Raises:
        ValueError: CUDA asked for on a cluster without GPUs, or ``cpus_per_actor`` < 1.
    """
    if cpus_per_actor < 1:
        raise ValueError(f"cpus_per_actor must be >= 1, got {cpus_per_actor}")
    resources = ray.cluster_resources()
    if device.startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus == 0 and n_actors is None:
            raise ValueError("device 'cuda' was asked for, but the Ray cluster has no GPUs; use device 'cpu' or a GPU cluster")
        return n_actors or gpus, {"num_gpus": 1, "num_cpus": cpus_per_actor}
    cpus = int(resources.get("CPU", os.cpu_count() or 1))
    return n_actors or max(1, cpus // cpus_per_actor), {"num_cpus": cpus_per_actor}
