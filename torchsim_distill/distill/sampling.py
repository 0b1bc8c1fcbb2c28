"""Sample training configurations around seed structures, batched in torch-sim.

Cheap perturbations (rattles, isotropic, axial and shear strains, substitutions, swaps,
vacancies, and the far from equilibrium large rattles and compressed cells) need no model;
MD snapshots, relaxation paths and relaxations of point defects (vacancies, interstitials)
are driven by the teacher, all systems of a kind in one torch-sim state
(:mod:`~torchsim_distill.distill.driven`)::

    frames = sample_configurations(seeds, "emt", n_configs=200, seed=0)
    (train, val, test), how = split_frames(frames, seed=0)  # see distill.splitting
    label_frames(train, "emt", "train.xyz", batch_size=16)

Every frame records ``info["seed_id"]`` (index of its seed structure), ``info["kind"]``
(how it was made) and a ``info["frame_id"]`` that is stable for a given call. How far
each kind perturbs is a :class:`SamplingOptions`::

    frames = sample_configurations(seeds, "emt", n_configs=200, seed=0,
                                   options=SamplingOptions(temperatures=(300.0, 600.0)))
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.io import read
from torch_sim.models.interface import ModelInterface
from tqdm.auto import tqdm

from torchsim_distill.distill.defects import (
    DEFECT_MIN_ATOMS,
    DEFECT_TYPES,
    defect_cell,
    defect_paths,
    defect_seeds,
)
from torchsim_distill.distill.driven import along_paths, md_snapshots, relaxation_paths
from torchsim_distill.distill.properties import is_bulk
from torchsim_distill.distill.splitting import split_by_seed, split_frames
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.utils.cells import apply_strain
from torchsim_distill.utils.options import cli

__all__ = [
    "FAR_KINDS", "KINDS", "NEAR_EQUILIBRIUM_KINDS", "TEACHER_KINDS", "SamplingOptions", "defect_seeds", "kind_quotas",
    "read_seeds", "resolve_kinds",
    "sample_configurations", "split_by_seed", "split_frames",
]

#: All kinds, in the order their frames appear in the output.
KINDS: tuple[str, ...] = (
    "rattle", "large_rattle", "iso_strain", "axial_strain", "compress", "shear_strain", "substitution", "swap",
    "vacancy", "md", "relax", "defect_relax",
)
#: Kinds that run the teacher.
TEACHER_KINDS = frozenset({"md", "relax", "defect_relax"})
#: Kinds far from equilibrium (rattles to 0.3 Å, cells compressed to 0.85 in length), so
#: that the student learns the short-range repulsion. ``kinds=None`` includes them unless
#: :attr:`SamplingOptions.far_kinds` is off.
FAR_KINDS = frozenset({"large_rattle", "compress"})
#: The kinds that are not :data:`FAR_KINDS`: ``SamplingOptions(far_kinds=False)`` makes
#: ``kinds=None`` resolve among these. (An older run's sample is reproduced by its own
#: ``frames.xyz``, which a resumed run reuses, or by its card's list of kinds given as
#: ``kinds``: ``axial_strain`` and ``defect_relax`` came later.)
NEAR_EQUILIBRIUM_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k not in FAR_KINDS)

# a small rattle on top of strains/substitutions/vacancies, so those frames carry forces
_JITTER = 0.02  # Å


def read_seeds(seeds: Sequence[Atoms | str | Path]) -> list[Atoms]:
    """Seed structures as a flat list of copies; files contribute all their frames."""
    out: list[Atoms] = []
    for item in seeds:
        if isinstance(item, Atoms):
            out.append(item.copy())
        else:
            frames = read(item, index=":")
            out.extend(frames if isinstance(frames, list) else [frames])
    if not out:
        raise ValueError("no seed structures given")
    for atoms in out:
        atoms.calc = None
    return out


@dataclass(frozen=True)
class SamplingOptions:
    """How each kind of :func:`sample_configurations` perturbs its seeds (frozen; sequences
    are stored as tuples, so options read back from JSON lists compare equal).

    Attributes:
        rattle_amplitudes: Gaussian displacement widths in Å, cycled through.
        large_rattle_amplitudes: the same for ``"large_rattle"``, Å: far from equilibrium,
            a 0.3 Å width brings some neighbours ~1 Å closer (the repulsive wall).
        max_strain: isotropic strains are drawn from ``[-max_strain, max_strain]``, and so is
            every diagonal component of the ``"axial_strain"`` kind.
        min_compression: ``"compress"`` scales seeds isotropically by length factors
            from ``min_compression`` up to ``1 - max_strain`` (where ``iso_strain``'s
            compressions stop), so nearest-neighbour distances shrink down to
            ``min_compression`` times the seed's (0.85: 61 % of the volume).
        compress_rattle: Gaussian width in Å of the rattle added to compressed cells
            (so their frames carry forces).
        max_shear: off-diagonal symmetric strain components are drawn from
            ``[-max_shear, max_shear]``.
        max_substitution_fraction: at most this fraction of atoms change element.
        max_vacancies: at most this many atoms removed per frame.
        temperatures: NVT Langevin temperatures in K; one trajectory per
            (seed, temperature), batched per temperature.
        md_timestep: MD time step in fs.
        md_stride: MD steps between recorded snapshots (step 0 is not recorded).
        relax_frames: frames taken from each FIRE relaxation path.
        relax_fmax: force tolerance in eV/Å ending a relaxation.
        relax_max_steps: FIRE step limit per relaxation.
        relax_cell: relax the cell too (Fréchet cell filter).
        defect_types: the point defects of ``"defect_relax"``, cycled through per seed:
            ``"vacancy"`` (an atom removed) and ``"interstitial"`` (an atom of the seed's
            elements added in its largest void, see :mod:`~torchsim_distill.distill.defects`).
        defect_min_atoms: bulk seeds (no vacuum layer) with at least this many
            atoms get defects (in a smaller cell, a defect is a phase of its own).
        defect_frames: frames taken from each defect relaxation path (the relaxed defect
            last); the relaxations share ``relax_fmax`` and ``relax_max_steps`` and keep the
            cell fixed, as the acceptance suite's vacancy does, in the seed as the driver
            relaxes it first (cell included).
        defect_rattle: Gaussian width in Å of the rattle of a defect relaxation's start
            (it breaks the symmetry a relaxation could otherwise keep, and spreads the paths).
        max_memory_scaler: torch-sim autobatching limit for the teacher runs
            (``memory_scales_with`` units of the teacher); ``None`` runs each
            kind's systems in one batch.
        far_kinds: whether ``kinds=None`` includes :data:`FAR_KINDS` (off reproduces
            the default sample of runs made before they existed).
        far_share: the share of ``n_configs`` that the :data:`FAR_KINDS` take together when
            the kinds mix far and near ones (the near kinds share the rest evenly). ``None``:
            every kind an even share, as before, which gave a single-element seed set a
            quarter of compressed cells and large rattles (2 of 8 kinds), more than a small
            student can fit without losing accuracy near equilibrium.
        kind_weights: ``"kind=weight"`` entries (``("vacancy=3", "shear_strain=2")``; the
            flag ``--kind-weights vacancy=3 shear_strain=2``): within its group (near or far,
            see ``far_share``) a kind takes a share of the frames in proportion to its weight,
            1 unless given. What the advice of a failed property gate prints: more frames of
            the kinds that cover the property (a vacancy energy, elastic constants) without
            dropping the others. Kept as strings so that ``run.json`` and the command line
            hold them as given; :meth:`weights` reads them.
    """

    rattle_amplitudes: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    large_rattle_amplitudes: tuple[float, ...] = (0.25, 0.3)
    max_strain: float = 0.04
    min_compression: float = 0.85
    compress_rattle: float = 0.05
    max_shear: float = 0.03
    max_substitution_fraction: float = 0.3
    max_vacancies: int = 2
    temperatures: tuple[float, ...] = (300.0, 800.0, 1500.0)
    md_timestep: float = 2.0
    md_stride: int = 10
    relax_frames: int = 4
    relax_fmax: float = 0.05
    relax_max_steps: int = 200
    relax_cell: bool = True
    defect_types: tuple[str, ...] = DEFECT_TYPES
    defect_min_atoms: int = DEFECT_MIN_ATOMS
    defect_frames: int = 6
    defect_rattle: float = 0.1
    max_memory_scaler: float | None = None
    far_kinds: bool = True
    far_share: float | None = 0.1
    kind_weights: tuple[str, ...] = field(default=(), metadata=cli(
        "more frames of some kinds: KIND=WEIGHT ... (default weight 1 each; e.g. vacancy=3 shear_strain=2), "
        "shares within the near (and the far) kinds", nargs="+", metavar="KIND=W"))

    def __post_init__(self) -> None:
        for name in ("rattle_amplitudes", "large_rattle_amplitudes", "temperatures", "defect_types", "kind_weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.weights()  # malformed entries fail here, not after the teacher has run
        if not self.defect_types or set(self.defect_types) - set(DEFECT_TYPES):
            raise ValueError(f"defect_types must be some of {list(DEFECT_TYPES)}, got {list(self.defect_types)}")
        if self.defect_frames < 1 or self.defect_min_atoms < 2 or self.defect_rattle < 0:
            raise ValueError("defect_frames must be ≥ 1, defect_min_atoms ≥ 2 and defect_rattle ≥ 0 Å; got "
                             f"{self.defect_frames}, {self.defect_min_atoms}, {self.defect_rattle}")
        if not 0.0 < self.min_compression < 1.0:
            raise ValueError(f"min_compression is a length factor in (0, 1), got {self.min_compression}")
        if self.far_share is not None and not 0.0 <= self.far_share <= 1.0:
            raise ValueError(f"far_share is a share of the frames in [0, 1] (or None: even), got {self.far_share}")
        if not self.large_rattle_amplitudes or min(self.large_rattle_amplitudes) <= 0:
            raise ValueError(f"large_rattle_amplitudes must be positive widths in Å, got {self.large_rattle_amplitudes}")

    def weights(self) -> dict[str, float]:
        """:attr:`kind_weights` as ``{kind: weight}``; ``ValueError`` for an entry that is not
        ``kind=weight`` with a known kind and a finite weight ≥ 0."""
        out: dict[str, float] = {}
        for entry in self.kind_weights:
            kind, sep, value = str(entry).partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = math.nan
            if not sep or kind not in KINDS or not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"kind_weights entry {entry!r} is not KIND=WEIGHT with a kind of {list(KINDS)} "
                                 "and a weight >= 0 (e.g. vacancy=3)")
            out[kind] = weight
        return out

    def updated(self, **overrides: Any) -> SamplingOptions:
        """A copy with ``overrides`` applied; an unknown name is a ``TypeError`` that lists the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown sampling options {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides) if overrides else self


def sample_configurations(
    seeds: Sequence[Atoms | str | Path],
    teacher: ModelInterface | BaseCalculator | str | Path | None = None,
    *,
    n_configs: int,
    seed: int,
    kinds: Sequence[str] | None = None,
    options: SamplingOptions | None = None,
    progress: bool = True,
    **overrides: Any,
) -> list[Atoms]:
    """Generate ``n_configs`` configurations around ``seeds``, deterministic in ``seed``.

    ``n_configs`` is shared between ``kinds`` by :func:`kind_quotas` (the far kinds take
    ``options.far_share`` of it, the others share the rest evenly); within a kind, seeds
    are visited in turn so each is represented.

    Args:
        seeds: ASE ``Atoms`` or files ASE reads (every frame of a file is a seed).
        teacher: what drives ``"md"``, ``"relax"`` and ``"defect_relax"`` (the teacher,
            or a cheap student exploring for it): anything
            :func:`~torchsim_distill.distill.teachers.load_teacher` accepts, or ``None``
            when none of these kinds is asked for.
        n_configs: total number of frames returned.
        seed: seed of every random choice (numpy and torch-sim's Langevin noise).
        kinds: subset of :data:`KINDS`. ``None`` means every kind that applies:
            the teacher kinds only with a teacher, ``substitution`` only with ≥ 2
            elements among the seeds, ``swap`` only with a seed holding ≥ 2 elements,
            ``vacancy`` only with a seed of ≥ 4 atoms, ``defect_relax`` only with a
            teacher and a bulk seed of ≥ ``options.defect_min_atoms`` atoms,
            :data:`FAR_KINDS` unless ``options.far_kinds`` is off.
        options: how far each kind perturbs (default :class:`SamplingOptions`).
        progress: show a tqdm bar.
        overrides: single :class:`SamplingOptions` fields (``max_strain=0.05``), applied
            on top of ``options``; what a ``DistillConfig.sampling`` dict holds.

    Returns:
        ``n_configs`` Atoms, grouped by kind in :data:`KINDS` order (``"relax"`` and
        ``"defect_relax"`` may return fewer when the relaxations converge in fewer steps
        than needed).
    """
    options = (options or SamplingOptions()).updated(**overrides)
    structures = read_seeds(seeds)
    teacher = load_teacher(teacher) if teacher is not None else None
    kinds = resolve_kinds(structures, teacher, kinds, far=options.far_kinds, defect_min_atoms=options.defect_min_atoms)
    if n_configs < 0:
        raise ValueError(f"n_configs must be ≥ 0, got {n_configs}")
    quota = kind_quotas(kinds, n_configs, options.far_share, weights=options.weights())
    generators = _generators(structures, teacher, options)
    frames: list[Atoms] = []
    with tqdm(total=n_configs, desc="sampling", disable=not progress) as bar:
        for kind in kinds:
            if quota[kind] == 0:
                continue
            bar.set_postfix_str(kind)
            # one stream per kind, so adding or removing a kind leaves the others unchanged
            rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
            made = generators[kind](quota[kind], rng)
            for k, atoms in enumerate(made):
                atoms.info["kind"] = kind
                atoms.info["frame_id"] = f"{seed}-{kind}-{k:06d}"
            frames.extend(made)
            bar.update(len(made))
    return frames


def kind_quotas(
    kinds: Sequence[str], n_configs: int, far_share: float | None, *, weights: dict[str, float] | None = None
) -> dict[str, int]:
    """Frames per kind: the :data:`FAR_KINDS` among ``kinds`` share ``round(far_share ·
    n_configs)``, the others the rest, evenly within each group (the first kinds of a group
    take its remainder), at least one frame each when there are as many frames as kinds
    (and ``far_share`` > 0); all kinds evenly when ``far_share`` is None or ``kinds`` are
    all far or all near. ``weights`` (:meth:`SamplingOptions.weights`; 1 for a kind not
    named) make a group's shares proportional to them instead of even (largest remainders
    first)."""
    weights = {k: w for k, w in (weights or {}).items() if k in kinds}

    def even(group: list[str], n: int) -> dict[str, int]:
        w = [weights.get(k, 1.0) for k in group]
        if not weights or sum(w) <= 0:
            return {k: n // len(group) + (i < n % len(group)) for i, k in enumerate(group)}
        exact = [n * x / sum(w) for x in w]
        out = [math.floor(e) for e in exact]
        for i in sorted(range(len(group)), key=lambda i: (out[i] - exact[i], i))[: n - sum(out)]:
            out[i] += 1
        return dict(zip(group, out, strict=True))

    far = [k for k in kinds if k in FAR_KINDS]
    near = [k for k in kinds if k not in FAR_KINDS]
    if far_share is None or not far or not near:
        return even(list(kinds), n_configs)
    n_far = round(far_share * n_configs)
    if far_share > 0 and n_configs >= len(kinds):
        n_far = max(n_far, len(far))
    quota = {**even(near, n_configs - n_far), **even(far, n_far)}
    return {k: quota[k] for k in kinds}


def _generators(
    structures: list[Atoms], teacher: ModelInterface | None, options: SamplingOptions
) -> dict[str, Callable[[int, np.random.Generator], list[Atoms]]]:
    """Per kind, ``make(n, rng)`` returning ``n`` frames (``"relax"`` possibly fewer)."""
    o = options
    elements = sorted({s for atoms in structures for s in atoms.get_chemical_symbols()})
    return {
        "rattle": lambda n, rng: _rattles(structures, n, rng, o.rattle_amplitudes),
        "large_rattle": lambda n, rng: _rattles(structures, n, rng, o.large_rattle_amplitudes),
        "iso_strain": lambda n, rng: _iso_strains(structures, n, rng, o.max_strain),
        "axial_strain": lambda n, rng: _axial_strains(structures, n, rng, o.max_strain),
        "compress": lambda n, rng: _compressions(
            structures, n, rng, o.min_compression, max(o.min_compression, 1.0 - o.max_strain), o.compress_rattle
        ),
        "shear_strain": lambda n, rng: _shear_strains(structures, n, rng, o.max_shear),
        "substitution": lambda n, rng: _substitutions(structures, n, rng, elements, o.max_substitution_fraction),
        "swap": lambda n, rng: _swaps(structures, n, rng),
        "vacancy": lambda n, rng: _vacancy_frames(structures, n, rng, o.max_vacancies),
        "md": lambda n, rng: _md_snapshots(structures, n, rng, teacher, o),
        "relax": lambda n, rng: _relax_snapshots(structures, n, rng, teacher, o),
        "defect_relax": lambda n, rng: _defect_paths(structures, n, rng, teacher, o),
    }


# --- kinds -------------------------------------------------------------------------------


def resolve_kinds(
    structures: list[Atoms], teacher: ModelInterface | None, kinds: Sequence[str] | None, *, far: bool = True,
    defect_min_atoms: int = DEFECT_MIN_ATOMS,
) -> list[str]:
    """The kinds :func:`sample_configurations` samples for ``kinds`` (``None``: every one
    that applies to ``structures`` and ``teacher``; see there); ``ValueError`` for a kind
    that does not apply."""
    n_elements = len({s for atoms in structures for s in atoms.get_chemical_symbols()})
    problems = {
        "substitution": None if n_elements >= 2 else "needs at least two elements among the seeds",
        "swap": None if _eligible(structures, _is_mixed) else "needs a seed holding at least two elements",
        "vacancy": None if _eligible(structures, _has_room) else "needs a seed with at least 4 atoms",
        "md": None if teacher is not None else "needs a teacher",
        "relax": None if teacher is not None else "needs a teacher",
        "defect_relax": "needs a teacher" if teacher is None else None if defect_seeds(structures, defect_min_atoms)
        else f"needs a bulk seed (periodic in three directions, no vacuum) with at least {defect_min_atoms} atoms",
    }
    if kinds is None:
        return [k for k in (KINDS if far else NEAR_EQUILIBRIUM_KINDS) if problems.get(k) is None]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; choose from {list(KINDS)}")
    for k in kinds:
        if problems.get(k):
            raise ValueError(f"kind {k!r} {problems[k]}")
    if not kinds:
        raise ValueError("kinds is empty")
    return [k for k in KINDS if k in kinds]


def _is_mixed(atoms: Atoms) -> bool:
    return len(set(atoms.numbers)) >= 2


def _has_room(atoms: Atoms) -> bool:
    return len(atoms) >= 4


def _eligible(structures: list[Atoms], test: Callable[[Atoms], bool]) -> list[int]:
    return [i for i, atoms in enumerate(structures) if test(atoms)]


def _derived(structures: list[Atoms], seed_id: int) -> Atoms:
    atoms = structures[seed_id].copy()
    atoms.info = {"seed_id": seed_id}
    return atoms


def _rattle(atoms: Atoms, rng: np.random.Generator, amplitude: float) -> None:
    """Add Gaussian displacements of width ``amplitude`` Å to every coordinate."""
    atoms.positions += rng.normal(0.0, amplitude, size=atoms.positions.shape)


def _rattles(structures, n, rng, amplitudes) -> list[Atoms]:
    out = []
    for i in range(n):
        atoms = _derived(structures, i % len(structures))
        amplitude = float(amplitudes[(i // len(structures)) % len(amplitudes)])
        _rattle(atoms, rng, amplitude)
        atoms.info["rattle"] = amplitude
        out.append(atoms)
    return out


def _iso_strains(structures, n, rng, max_strain) -> list[Atoms]:
    out = []
    for i in range(n):
        atoms = _derived(structures, i % len(structures))
        eps = float(rng.uniform(-max_strain, max_strain))
        apply_strain(atoms, eps * np.eye(3))
        _rattle(atoms, rng, _JITTER)
        atoms.info["strain"] = eps
        out.append(atoms)
    return out


#: the ``"axial_strain"`` patterns, cycled through per seed: ε along one axis, the same ε
#: along two, the tetragonal (ε, ε, −2ε) that keeps the volume to first order (the C11 − C12
#: mode of a cubic crystal, which an isotropic strain never excites), and three independent
_AXIAL_PATTERNS = ("uniaxial", "biaxial", "tetragonal", "orthorhombic")


def _axial_strain(pattern: str, rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """The diagonal ``[3]`` of an axial strain of ``pattern``, each component in ±``max_strain``,
    its axes in random order."""
    e = float(rng.uniform(-max_strain, max_strain))
    diagonal = {
        "uniaxial": [e, 0.0, 0.0],
        "biaxial": [e, e, 0.0],
        "tetragonal": [e / 2, e / 2, -e],
        "orthorhombic": [e, *rng.uniform(-max_strain, max_strain, size=2)],
    }[pattern]
    return rng.permutation(np.asarray(diagonal, dtype=float))


def _axial_strains(structures, n, rng, max_strain) -> list[Atoms]:
    """Diagonal strains with independent components (:data:`_AXIAL_PATTERNS`), plus the jitter.

    An isotropic strain excites only the bulk modulus, B = (C11 + 2 C12)/3; the stress of
    a strain along the cell's axes gives C11 and C12 apart (σ_xx = C11 ε_xx + C12 (ε_yy + ε_zz)
    in a cubic crystal). The strain is diagonal, not general symmetric: with stress labels
    each frame measures all six stress components' response to three normal strains, and
    ``"shear_strain"`` gives the response to the three shears, so the two kinds together
    span the whole linear stiffness (the cross terms of a low-symmetry crystal, C14 say,
    appear as σ_yz of an axial frame), while each kind's error in the card stays readable
    as normal-strain (C11, C12) or shear (C44) response.
    """
    out = []
    for i in range(n):
        atoms = _derived(structures, i % len(structures))
        pattern = _AXIAL_PATTERNS[(i // len(structures)) % len(_AXIAL_PATTERNS)]
        diagonal = _axial_strain(pattern, rng, max_strain)
        apply_strain(atoms, np.diag(diagonal))
        _rattle(atoms, rng, _JITTER)
        atoms.info["strain_pattern"] = pattern
        atoms.info.update({f"strain_{axis}": float(x) for axis, x in zip(("xx", "yy", "zz"), diagonal, strict=True)})
        out.append(atoms)
    return out


def _compressions(structures, n, rng, smallest: float, largest: float, rattle: float) -> list[Atoms]:
    """Seeds shrunk isotropically by length factors in ``[smallest, largest]``, then rattled.

    The ``n`` factors are stratified, one in each of ``n`` equal slices of the range (in
    random order), so even a few frames reach close to ``smallest``. Positions and cell
    scale together about the origin, which also works for a molecule without a cell.
    """
    slices = (rng.permutation(n) + rng.uniform(size=n)) / max(n, 1)
    out = []
    for i in range(n):
        atoms = _derived(structures, i % len(structures))
        factor = float(smallest + (largest - smallest) * slices[i])
        atoms.set_cell(atoms.cell.array * factor, scale_atoms=False)
        atoms.positions *= factor
        _rattle(atoms, rng, rattle)
        atoms.info["compression"] = factor
        out.append(atoms)
    return out


def _shear_strains(structures, n, rng, max_shear) -> list[Atoms]:
    out = []
    for i in range(n):
        atoms = _derived(structures, i % len(structures))
        yz, xz, xy = rng.uniform(-max_shear, max_shear, size=3)
        apply_strain(atoms, np.array([[0.0, xy, xz], [xy, 0.0, yz], [xz, yz, 0.0]]))
        _rattle(atoms, rng, _JITTER)
        atoms.info["shear"] = float(max(abs(yz), abs(xz), abs(xy)))
        out.append(atoms)
    return out


def _substitutions(structures, n, rng, elements, max_fraction) -> list[Atoms]:
    out = []
    for i in range(n):
        atoms = _derived(structures, i % len(structures))
        symbols = atoms.get_chemical_symbols()
        count = max(1, round(rng.uniform(0.0, max_fraction) * len(atoms)))
        for j in rng.choice(len(atoms), size=count, replace=False):
            symbols[j] = str(rng.choice([e for e in elements if e != symbols[j]]))
        atoms.set_chemical_symbols(symbols)
        _rattle(atoms, rng, _JITTER)
        atoms.info["n_substituted"] = int(count)
        out.append(atoms)
    return out


def _swaps(structures, n, rng) -> list[Atoms]:
    eligible = _eligible(structures, _is_mixed)
    out = []
    for i in range(n):
        atoms = _derived(structures, eligible[i % len(eligible)])
        numbers = atoms.numbers.copy()
        count = int(rng.integers(1, max(1, len(atoms) // 4) + 1))
        for _ in range(count):
            a = int(rng.integers(len(atoms)))
            b = int(rng.choice(np.flatnonzero(numbers != numbers[a])))
            numbers[a], numbers[b] = numbers[b], numbers[a]
        atoms.numbers = numbers
        _rattle(atoms, rng, _JITTER)
        atoms.info["n_swaps"] = count
        out.append(atoms)
    return out


def _vacancy_frames(structures, n, rng, max_vacancies) -> list[Atoms]:
    """Unrelaxed vacancies; a bulk seed's in the acceptance suite's vacancy cell
    (:func:`~torchsim_distill.distill.defects.defect_cell`): cut from an 8-atom Si seed, a
    vacancy is one site in eight, a phase of its own that no property measures (a Si run's
    held-out frames of them were at 58 meV/atom, its 64-atom defect paths at 3)."""
    eligible = _eligible(structures, _has_room)
    out = []
    for i in range(n):
        atoms = _derived(structures, eligible[i % len(eligible)])
        if is_bulk(atoms):
            atoms = defect_cell(atoms)
        count = int(rng.integers(1, min(max_vacancies, len(atoms) - 2) + 1))
        del atoms[[int(j) for j in rng.choice(len(atoms), size=count, replace=False)]]
        _rattle(atoms, rng, _JITTER)
        atoms.info["n_vacancies"] = count
        out.append(atoms)
    return out


# --- model-driven kinds (runs in distill.driven) ----------------------------------------


def _md_snapshots(structures, n, rng, teacher, options: SamplingOptions) -> list[Atoms]:
    """NVT Langevin snapshots, one trajectory per (seed, temperature), batched per temperature."""
    return md_snapshots(
        structures, n, rng, teacher, temperatures=options.temperatures, timestep_fs=options.md_timestep,
        stride=options.md_stride, max_memory_scaler=options.max_memory_scaler,
    )


def _relax_snapshots(structures, n, rng, teacher, options: SamplingOptions) -> list[Atoms]:
    """Frames along FIRE relaxations started from rattled, strained seeds."""
    n_runs = math.ceil(n / options.relax_frames)
    starts = []
    for i in range(n_runs):
        atoms = _derived(structures, i % len(structures))
        apply_strain(atoms, float(rng.uniform(-0.03, 0.03)) * np.eye(3))
        _rattle(atoms, rng, 0.15)
        starts.append(atoms)
    paths = relaxation_paths(starts, teacher, fmax=options.relax_fmax, max_steps=options.relax_max_steps,
                             cell=options.relax_cell, max_memory_scaler=options.max_memory_scaler)
    out = []
    for r, step, atoms in along_paths(paths, n):
        # relax_run: one relaxation path, which a split keeps whole (see distill.splitting)
        atoms.info = {"seed_id": starts[r].info["seed_id"], "relax_run": r, "relax_step": step}
        out.append(atoms)
    return out


def _defect_paths(structures, n, rng, driver, options: SamplingOptions) -> list[Atoms]:
    """Frames along relaxations of vacancies and interstitials (:func:`~torchsim_distill.distill.defects.defect_paths`)."""
    o = options
    return defect_paths(structures, n, rng, driver, types=o.defect_types, min_atoms=o.defect_min_atoms,
                        frames_per_path=o.defect_frames, rattle=o.defect_rattle, fmax=o.relax_fmax,
                        max_steps=o.relax_max_steps, max_memory_scaler=o.max_memory_scaler)
