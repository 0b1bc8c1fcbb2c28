"""A quick Cu–Au student trained on ASE's EMT: the smoke benchmarks' student and the tests' fixture.

It trains, so it lives above the distillation (``bench`` runs it when ``--smoke`` gives no
model); it was ``torchsim_distill.models.toy``, where inference would have imported training.

EMT is cheap and ships with ASE, so this needs no teacher weights and no network.
The trained checkpoint is cached by its recipe, so repeated runs reuse it::

    ckpt = toy_student(size="tiny")           # nequip checkpoint, trained once
    pt2 = cached_compile(ckpt, device="cpu")   # compiled once
"""

from __future__ import annotations

import dataclasses
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
from torchsim_distill.distill.training import ModelOptions, TrainingOptions, student_config, train_student
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
    The training recipe is pinned here (:func:`toy_options`), not taken from the library's
    defaults, and the cache is keyed by every option: when the defaults of
    :class:`TrainingOptions` change, this student neither changes under the tests that measured
    it nor is reused from a cache trained by the old defaults (a fresh CI machine and a warm
    cache once trained two different students from the same call).
    """
    model, training = toy_options(size=size, r_max=r_max, max_epochs=max_epochs, seed=seed, precision=precision)
    # the lattice constants shape the data, so they are part of what is cached
    recipe = dict(n_train=n_train, n_val=n_val, lattice_constants=LATTICE_CONSTANTS,
                  model=dataclasses.asdict(model), training=dataclasses.asdict(training))
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run_dir = Path(root) if root is not None else cache_dir() / "toy_students" / key
    best = run_dir / "best.ckpt"
    if best.exists() and (run_dir / "done").exists():
        return best
    run_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{run_dir}.lock"):  # another process training the same student: wait, then reuse it
        if best.exists() and (run_dir / "done").exists():
            return best
        return _train_toy(run_dir, recipe, model, training)


def toy_options(
    *, size: str, r_max: float, max_epochs: int, seed: int, precision: str
) -> tuple[ModelOptions, TrainingOptions]:
    """The toy student's network and its fixed training recipe.

    The loss weights and schedule are explicit: energy weight 1, stress weight 100 and the
    plateau schedule, the recipe its tests' tolerances were measured on. Ten epochs on 40
    EMT frames is too short a run for the balanced weights and cosine schedule that serve
    real students (they gave a toy student with force errors above 1 eV/Å near its data).
    """
    model = ModelOptions(size=size, r_max=r_max, precision=precision)
    training = TrainingOptions(max_epochs=max_epochs, seed=seed, energy_weight=1.0, stress_weight=100.0,
                               lr_schedule="plateau")
    return model, training


def _train_toy(run_dir: Path, recipe: dict, model: ModelOptions, training: TrainingOptions) -> Path:
    """Label EMT frames and train the toy student of ``recipe`` in ``run_dir``."""
    n_train, n_val = recipe["n_train"], recipe["n_val"]
    train_file, val_file = run_dir / "train.xyz", run_dir / "val.xyz"
    write(train_file, emt_cu_au_frames(n_train, training.seed), format="extxyz")
    write(val_file, emt_cu_au_frames(n_val, training.seed + 1), format="extxyz")
    cfg = student_config([train_file], [val_file], type_names=TYPE_NAMES, model=model, training=training)
    best = train_student(cfg, run_dir)
    (run_dir / "done").write_text(json.dumps(recipe, default=str))
    return best
