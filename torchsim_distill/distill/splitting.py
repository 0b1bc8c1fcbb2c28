"""Train/validation/test splits of sampled frames that never split correlated frames.

Frames sampled around one seed structure are variations of it, so the honest held-out set
holds whole seeds out (:func:`split_by_seed`). With only a few seeds that leaves a third
of the labels per split; :func:`split_frames` then splits *within* the seeds, by group
(see :func:`frame_group`), and says which rule it used, in a sentence for the model card::

    (train, val, test), how = split_frames(frames, fractions=(0.8, 0.1, 0.1), seed=0)
    how  # 'by seed structure: 25 seeds, whole seeds held out' or 'by trajectory within seeds: ...'

Frames come from :func:`~torchsim_distill.distill.sampling.sample_configurations`:
each carries ``info["seed_id"]`` and ``info["kind"]``; MD snapshots ``temperature`` and
``md_step``, relaxation frames ``relax_step`` (and ``relax_run``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence

import numpy as np
from ase import Atoms

logger = logging.getLogger(__name__)

Splits = tuple[list[Atoms], list[Atoms], list[Atoms]]


def split_by_seed(
    frames: Sequence[Atoms],
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int,
) -> Splits:
    """Split frames into (train, val, test) by whole seed structures.

    Frames of one seed are near-copies of each other; keeping each seed in a single
    split makes validation and test errors measure transfer to unseen structures.
    Every split with a non-zero fraction gets at least one seed.

    Raises:
        ValueError: with fewer distinct seeds than non-empty splits (3 by default).
    """
    _check_fractions(fractions)
    seed_ids = sorted({int(atoms.info["seed_id"]) for atoms in frames})
    needed = sum(f > 0 for f in fractions)
    if len(seed_ids) < needed:
        raise ValueError(
            f"split_by_seed needs at least {needed} distinct seed structures (one per "
            f"non-empty split of {fractions}), got {len(seed_ids)}; add seed structures "
            "or give a split a zero fraction"
        )
    order = np.random.default_rng(seed).permutation(seed_ids)
    counts = _seed_counts(fractions, len(seed_ids))
    bounds = np.cumsum([0, *counts])
    assignment = {int(s): split for split in range(3) for s in order[bounds[split] : bounds[split + 1]]}
    splits: Splits = ([], [], [])
    for atoms in frames:
        splits[assignment[int(atoms.info["seed_id"])]].append(atoms)
    return splits


def seeds_needed(fractions: tuple[float, float, float]) -> int:
    """The fewest seeds for which every non-empty split holds whole seeds near its share.

    That is ``⌈1 / smallest non-zero share⌉``: with (0.8, 0.1, 0.1), 10 seeds give 8/1/1
    (with 3, a seed split would give 1/1/1, a third of the frames in training).
    """
    _check_fractions(fractions)
    total = sum(fractions)
    smallest = min(f / total for f in fractions if f > 0)
    return max(sum(f > 0 for f in fractions), math.ceil(1.0 / smallest - 1e-9))


def split_frames(
    frames: Sequence[Atoms],
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int,
    min_seeds: int | None = None,
) -> tuple[Splits, str]:
    """Split frames into (train, val, test), by seed when there are enough seeds, else by group.

    **By seed** (exactly :func:`split_by_seed`) when there are at least ``min_seeds``
    distinct seeds: validation and test then measure transfer to unseen structures.

    **By group within seeds** otherwise. A group is what :func:`frame_group` says: one MD
    trajectory (a seed at one temperature), one relaxation path, or, for the static
    perturbations (rattles, strains, compressions, substitutions, swaps, vacancies), the
    single frame, since each is drawn independently from its seed. A group never spans two
    splits, so no split holds a snapshot of a trajectory another split trains on. Groups
    are dealt kind by kind (groups of a kind in random order, largest first), each to the
    split furthest below its share of the frames dealt so far, so that every kind is
    spread over the splits near ``fractions``; a split with a non-zero fraction left
    empty then takes the smallest group of the split most over its share. Validation and
    test then measure new perturbations and trajectories of the seen structures.

    Args:
        frames: sampled frames, each with ``info["seed_id"]``.
        fractions: train/val/test shares (normalised; a zero share leaves its split empty).
        seed: seed of the random order of seeds or groups.
        min_seeds: seeds needed to split by seed; ``None``: :func:`seeds_needed`
            (10 for the default fractions). Never fewer than the non-empty splits.

    Returns:
        ``((train, val, test), how)``: frames in their input order within each split, and
        one sentence saying which rule split them and why, for the model card.

    Raises:
        ValueError: a frame without ``seed_id``, bad ``fractions``, or fewer groups than
            non-empty splits.
    """
    _check_fractions(fractions)
    for i, atoms in enumerate(frames):
        if "seed_id" not in atoms.info:
            raise ValueError(f"frame {i} has no info['seed_id']; split_frames needs the seed of every frame")
    n_seeds = len({int(atoms.info["seed_id"]) for atoms in frames})
    needed = seeds_needed(fractions) if min_seeds is None else max(min_seeds, sum(f > 0 for f in fractions))
    if n_seeds >= needed:
        how = f"by seed structure: {n_seeds} seeds, whole seeds held out"
        logger.info("split %s", how)
        return split_by_seed(frames, fractions=fractions, seed=seed), how
    splits = _split_by_group(frames, fractions, seed)
    how = (
        f"by trajectory within seeds: only {n_seeds} seed structure{'s' if n_seeds != 1 else ''} "
        f"({needed} needed to hold whole seeds out near the fractions {tuple(fractions)}), so each MD "
        "trajectory and relaxation path stays in one split and every other frame is split on its own"
    )
    logger.info("split %s: %s frames", how, "/".join(str(len(s)) for s in splits))
    return splits, how


def frame_group(atoms: Atoms, index: int) -> Hashable:
    """The group of correlated frames ``atoms`` (the ``index``-th frame) belongs to.

    In order of precedence:

    - ``info["group"]``, for kinds that declare their own correlated frames (e.g. the
      snapshots of one on-policy trajectory): that group within its seed;
    - ``info["md_step"]`` present: the MD trajectory, ``(seed_id, kind, temperature)``
      (plus ``info["trajectory"]`` when a kind runs several per seed and temperature);
    - ``info["relax_step"]`` present: the relaxation path ``(seed_id, kind, relax_run)``;
      frames without ``relax_run`` (sampled before it was recorded) put all relaxation
      frames of their seed in one group, which cannot leak;
    - anything else is an independent draw around its seed: a group of its own.
    """
    info = atoms.info
    seed_id = int(info["seed_id"])
    if "group" in info:
        return ("group", seed_id, str(info["group"]))
    if "md_step" in info:
        return ("md", seed_id, info.get("kind"), float(info.get("temperature", math.nan)), info.get("trajectory"))
    if "relax_step" in info:
        run = info.get("relax_run")
        return ("relax", seed_id, info.get("kind"), None if run is None else int(run))
    return ("frame", index)


def _split_by_group(frames: Sequence[Atoms], fractions: tuple[float, float, float], seed: int) -> Splits:
    """Deal :func:`frame_group` groups to the splits (see :func:`split_frames`)."""
    members: dict[Hashable, list[int]] = {}
    kind_of: dict[Hashable, str] = {}
    for i, atoms in enumerate(frames):
        key = frame_group(atoms, i)
        members.setdefault(key, []).append(i)
        kind_of.setdefault(key, str(atoms.info.get("kind", "unknown")))
    needed = sum(f > 0 for f in fractions)
    if len(members) < needed:
        raise ValueError(
            f"{len(members)} groups of correlated frames cannot fill {needed} splits without sharing "
            "a trajectory; sample more frames or more seed structures, or give a split a zero fraction"
        )
    rng = np.random.default_rng(seed)
    groups = list(members)
    order = []
    for kind in dict.fromkeys(kind_of[g] for g in groups):  # kinds in first-seen order
        of_kind = [groups[j] for j in rng.permutation(len(groups)) if kind_of[groups[j]] == kind]
        order += sorted(of_kind, key=lambda g: -len(members[g]))  # stable: random among equals
    split_of = _deal([len(members[g]) for g in order], fractions)
    split_of_frame = {i: split for g, split in zip(order, split_of, strict=True) for i in members[g]}
    splits: Splits = ([], [], [])
    for i, atoms in enumerate(frames):
        splits[split_of_frame[i]].append(atoms)
    return splits


def _deal(sizes: list[int], fractions: tuple[float, float, float]) -> list[int]:
    """Split index of each group of ``sizes``, dealt in order (see :func:`split_frames`)."""
    total = sum(fractions)
    shares = [f / total for f in fractions]
    assigned, dealt, split_of = [0, 0, 0], 0, []
    for size in sizes:
        dealt += size
        room = [shares[i] * dealt - assigned[i] if shares[i] > 0 else -math.inf for i in range(3)]
        best = int(np.argmax(room))
        assigned[best] += size
        split_of.append(best)
    for empty in (i for i in range(3) if shares[i] > 0 and i not in split_of):
        counts = [split_of.count(j) for j in range(3)]
        donor = max((j for j in range(3) if counts[j] > 1), key=lambda j: assigned[j] - shares[j] * dealt)
        k = min((k for k in range(len(sizes)) if split_of[k] == donor), key=lambda k: (sizes[k], -k))
        split_of[k] = empty
        assigned[donor] -= sizes[k]
        assigned[empty] += sizes[k]
    return split_of


def _seed_counts(fractions: tuple[float, float, float], n_seeds: int) -> list[int]:
    """Seeds per split: shares rounded, at least one per non-empty split, the largest absorbing the rest."""
    total = sum(fractions)
    counts = [max(1, round(f / total * n_seeds)) if f > 0 else 0 for f in fractions]
    biggest = int(np.argmax(fractions))
    counts[biggest] = n_seeds - sum(c for i, c in enumerate(counts) if i != biggest)
    while counts[biggest] < 1:
        donor = max((i for i in range(3) if i != biggest), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[biggest] += 1
    return counts


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
