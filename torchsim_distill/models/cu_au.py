"""Cu–Au fcc cells: the one builder, with one set of lattice constants, that every
Cu–Au structure in the package starts from (the default student's seeds, the demo, the
benchmark cells, the toy student's data)::

    atoms = fcc_alloy(ORDERED_SITES["Cu3Au"] * 8)          # L1_2 Cu3Au, 32 atoms
    atoms = random_alloy(0.4, (3, 3, 3), rng)               # 108 atoms, x_Au ≈ 0.4
    a = lattice_constant(0.25)                              # Å, Vegard's law
    atoms = rattled_alloy((2, 2, 2), x_au=0.4, seed=0)      # 32 atoms at a = 3.8 Å, rattled (tests)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk

from torchsim_distill.utils.atoms_info import RANDOM_ALLOY_KEY

#: SevenNet-0-like lattice constants of the pure metals, Å (the teacher of the default
#: student; relaxation refines them). Alloys sit on Vegard's line in between.
LATTICE_CONSTANTS = {"Cu": 3.63, "Au": 4.17}
#: Site occupations of the ordered phases in ASE's 4-site cubic fcc cell, whose sites are
#: (0,0,0), (0,½,½), (½,0,½), (½,½,0): L1_2 puts the minority element on the corner,
#: L1_0 alternates (001) layers (z=0 vs z=½).
ORDERED_SITES = {
    "Cu3Au": ["Au", "Cu", "Cu", "Cu"], "CuAu": ["Au", "Cu", "Cu", "Au"], "CuAu3": ["Cu", "Au", "Au", "Au"],
}
#: The pure metals and the ordered phases, as sites of the 4-site cubic cell.
PHASE_SITES = {"Cu": ["Cu"] * 4, "Au": ["Au"] * 4, **ORDERED_SITES}


def lattice_constant(x_au: float) -> float:
    """Vegard's-law fcc lattice constant (Å) at Au fraction ``x_au``."""
    return LATTICE_CONSTANTS["Cu"] * (1 - x_au) + LATTICE_CONSTANTS["Au"] * x_au


def fcc_alloy(symbols: Sequence[str], reps: tuple[int, int, int] = (2, 2, 2), *, a: float | None = None) -> Atoms:
    """The cubic fcc cell repeated ``reps`` with ``symbols`` on its ``4·prod(reps)`` sites,
    at lattice constant ``a`` (Å; default: the Vegard constant of its composition)."""
    symbols = list(symbols)
    a = lattice_constant(symbols.count("Au") / len(symbols)) if a is None else a
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(reps)
    if len(atoms) != len(symbols):
        raise ValueError(f"{len(symbols)} symbols for {len(atoms)} sites of a cubic fcc cell repeated {reps}")
    atoms.set_chemical_symbols(symbols)
    return atoms


def phase(name: str, reps: tuple[int, int, int] = (2, 2, 2)) -> Atoms:
    """A pure metal or ordered phase (a key of :data:`PHASE_SITES`), repeated ``reps``, named
    ``info["name"] = name`` so that reports spell it as the README does (``Cu3Au``, not the
    alphabetical formula ``AuCu3``)."""
    atoms = fcc_alloy(PHASE_SITES[name] * int(np.prod(reps)), reps)
    atoms.info["name"] = name
    return atoms


def random_alloy(x_au: float, reps: tuple[int, int, int], rng: np.random.Generator) -> Atoms:
    """A random fcc alloy: each site Au with probability ``x_au``, at its Vegard constant,
    tagged ``info["random_alloy"]`` (the acceptance suite gates its formation energy as a
    mixing energy)."""
    n = 4 * int(np.prod(reps))
    atoms = fcc_alloy(list(rng.choice(["Cu", "Au"], size=n, p=[1 - x_au, x_au])), reps)
    atoms.info[RANDOM_ALLOY_KEY] = True
    return atoms


def rattled_alloy(
    reps: tuple[int, int, int] = (2, 2, 2), x_au: float = 0.4, seed: int = 0, *, a: float = 3.8, rattle: float = 0.05
) -> Atoms:
    """A random fcc Cu–Au cell at one lattice constant ``a`` (Å; 3.8 is Vegard's for
    x_Au ≈ 0.32), each site Au with probability ``x_au``, atoms displaced by Gaussian noise
    of width ``rattle`` (Å): forces on every atom, deterministic in ``seed``. The tests'
    and benchmarks' quick cell (it was ``tests/conftest.cu_au``)."""
    rng = np.random.default_rng(seed)
    n = 4 * int(np.prod(reps))
    atoms = fcc_alloy(list(rng.choice(["Cu", "Au"], size=n, p=[1 - x_au, x_au])), reps, a=a)
    atoms.rattle(rattle, seed=seed)
    return atoms
