"""A quick Cu–Au student trained on ASE's EMT: the smoke benchmarks' student and the tests' fixture.

It trains, so it lives above the distillation (``bench`` runs it when ``--smoke`` gives no
model); it was ``torchsim_distill.models.toy``, where inference would have imported training.

EMT is cheap and ships with ASE, so this needs no teacher weights and no network.
The trained checkpoint is cached by its recipe, so repeated runs reuse it::

    ckpt = toy_student(size="tiny")           # nequip checkpoint, trained once
    pt2 = cached_compile(ckpt, device="cpu")   # compiled once
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from filelock import FileLock

from torchsim_distill.compile import cache_dir
from torchsim_distill.distill.training import student_config, train_student
from torchsim_distill.models.cu_au import LATTICE_CONSTANTS, random_alloy

TYPE_NAMES = ["Au", "Cu"]


def emt_cu_au_frames(n: int, seed: int, *, reps: int = 2, rattle: float = 0.08) -> list[Atoms]:
    """``n`` random fcc Cu–Au alloy cells (``4·reps³`` atoms), strained, rattled, EMT-labelled."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = random_alloy(rng.uniform(0.0, 1.0), (reps, reps, reps), rng)
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        atoms.rattle(rattle, seed=int(rng.integers(2**31)))
        atoms.calc = EMT()
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        frames.append(atoms)
    return frames


def toy_student(
    *,
    size: str = "tiny",
    r_max: float = 4.5,
    n_train: int = 40,
    n_val: int = 8,
    max_epochs: int = 10,
    seed: int = 0,
    precision: str = "float64",
    root: str | Path | None = None,
) -> Path:
    """Train (or reuse) a Cu–Au NequIP student on EMT labels; return its best checkpoint.

    ``precision`` is the network's dtype (``"float64"`` or ``"float32"``, nequip's ``model_dtype``).
    """
    # the lattice constants shape the data, so they are part of what is cached
    recipe = dict(size=size, r_max=r_max, n_train=n_train, n_val=n_val, max_epochs=max_epochs, seed=seed,
                  lattice_constants=LATTICE_CONSTANTS)
    if precision != "float64":  # only then: float64 students keep the cache keys they had
        recipe["precision"] = precision
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    run_dir = Path(root) if root is not None else cache_dir() / "toy_students" / key
    best = run_dir / "best.ckpt"
    if best.exists() and (run_dir / "done").exists():
        return best
    run_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{run_dir}.lock"):  # another process training the same student: wait, then reuse it
        if best.exists() and (run_dir / "done").exists():
            return best
        return _train_toy(run_dir, recipe)


def _train_toy(run_dir: Path, recipe: dict) -> Path:
    """Label EMT frames and train the toy student of ``recipe`` in ``run_dir``."""
    size, r_max, max_epochs, seed = recipe["size"], recipe["r_max"], recipe["max_epochs"], recipe["seed"]
    n_train, n_val = recipe["n_train"], recipe["n_val"]
    train_file, val_file = run_dir / "train.xyz", run_dir / "val.xyz"
    write(train_file, emt_cu_au_frames(n_train, seed), format="extxyz")
    write(val_file, emt_cu_au_frames(n_val, seed + 1), format="extxyz")
    cfg = student_config(
        [train_file], [val_file], type_names=TYPE_NAMES, r_max=r_max, size=size,
        max_epochs=max_epochs, seed=seed, precision=recipe.get("precision", "float64"),
    )
    best = train_student(cfg, run_dir)
    (run_dir / "done").write_text(json.dumps(recipe))
    return best
