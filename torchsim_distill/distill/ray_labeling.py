"""Labelling past one machine: teacher actors on Ray, feeding :func:`~torchsim_distill.distill.labeling.label_frames`.

Labelling is the slowest stage of a distillation (SevenNet-0 costs ~30 ms per atom
and call on a CPU core). With ``ray=...`` each Ray actor loads the teacher once (by
name or path) and labels whole batches; the batches come back here and are appended
in input order to the same resumable extxyz store, by the one process that holds its
lock, so the file is the one a single process would have written::

    label_frames(frames, "sevennet-0", "labels/train.xyz", batch_size=16, ray="local")
    torchsim-distill distill --teacher sevennet-0 --structures seeds.xyz --out run/ --ray HEAD_IP:6379

A batch whose actor dies is labelled again by another; a run killed outright resumes
from the last batch written, as without Ray.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch_sim as ts
from ase import Atoms

from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.teacher_registry import resolve_teacher
from torchsim_distill.utils.ray_pool import ActorPool, actor_layout, ray_session, require_ray


class TeacherWorker:
    """A Ray actor's state: one teacher, loaded here, labelling batches of frames.

    Args:
        teacher: a name or path :func:`~torchsim_distill.distill.teachers.load_teacher` takes.
        device: ``"cuda"`` is the actor's own GPU (Ray sets ``CUDA_VISIBLE_DEVICES``).
        num_threads: torch threads, the actor's share of the cores.
    """

    def __init__(self, teacher: str, device: str, num_threads: int) -> None:
        torch.set_num_threads(num_threads)
        self.teacher = load_teacher(teacher, device=device)

    def label(self, frames: list[Atoms]) -> dict[str, torch.Tensor]:
        """The teacher's outputs on ``frames`` (one batched call), on the CPU."""
        state = ts.io.atoms_to_state(frames, self.teacher.device, self.teacher.dtype)
        return {key: value.detach().cpu() for key, value in self.teacher(state).items()}


def check_ray_teacher(teacher: object) -> None:
    """Refuse, before any file is touched, a missing Ray and a teacher the actors cannot
    load by themselves (an object: give its name or path), with ``load_teacher``'s own
    error for an unknown name or a missing file."""
    require_ray()
    if not isinstance(teacher, str | Path):
        raise ValueError(
            "with ray, give the teacher by name or path ('torchsim-distill teachers' lists the names): "
            f"each actor loads its own; got a {type(teacher).__name__}"
        )
    spec = resolve_teacher(teacher)  # raises the error the single-process run gives
    if (missing := spec.missing()) is not None:
        raise FileNotFoundError(f"teacher {spec.name!r}: {missing}")


def teacher_outputs(
    frames: Sequence[Atoms],
    todo: list[int],
    teacher: str | Path,
    batch_size: int,
    *,
    address: str,
    device: str = "cpu",
    n_actors: int | None = None,
    cpus_per_actor: int = 1,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """``(indices, teacher outputs)`` for the frames ``todo`` (indices into ``frames``), in
    batches of ``batch_size``, yielded in input order (a batch that finishes early waits
    for those before it). The outputs are what the teacher returns for one state of
    those frames: ``energy [n]`` eV, ``forces [n_atoms, 3]`` eV/Å, ``stress [n, 3, 3]`` eV/Å³.

    Args:
        address: ``"local"``, ``"auto"`` or a cluster address (see
            :func:`~torchsim_distill.utils.ray_pool.ray_session`).
        n_actors: actors to start (default: one per GPU, or per ``cpus_per_actor`` cores).
    """
    batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    if not batches:
        return
    with ray_session(address) as ray:
        n, options = actor_layout(ray, device, n_actors=n_actors, cpus_per_actor=cpus_per_actor)
        # a relative path means this process's folder, not the actors'
        path = Path(teacher)
        init_args = (str(path.resolve()) if path.suffix == ".pt2" else str(teacher), device, cpus_per_actor)
        with ActorPool(TeacherWorker, init_args, n_actors=min(n, len(batches)), actor_options=options, name="label") as pool:
            finished: dict[int, dict[str, torch.Tensor]] = {}
            following = 0
            for k, out in pool.map_unordered("label", [([frames[i] for i in b],) for b in batches]):
                finished[k] = out
                while following in finished:
                    yield batches[following], finished.pop(following)
                    following += 1
