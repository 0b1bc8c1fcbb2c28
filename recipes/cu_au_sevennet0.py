"""The recipe of the first default student: SevenNet-0 distilled into NequIP for Cu–Au.

The shipped student is now its rebuild (``cu_au_sevennet0_v2.py``), a fine-tune of this
one; this recipe reproduces the first student in its own run (``runs/cu_au_sevennet0/``:
seeds, frames, labels, checkpoints), resuming whatever an interrupted run left, and
leaves ``torchsim_distill/models/cu_au_sevennet0/`` alone::

    python recipes/cu_au_sevennet0.py               # resumes; the package lands in the run
    python recipes/cu_au_sevennet0.py --stages data # sample and label only

Seeds cover pure Cu and Au, the ordered Cu3Au, CuAu and CuAu3 phases, random fcc
alloys across the composition range, and (111)/(100) surfaces; the sampler adds
strains, rattles, substitutions, swaps, vacancies, teacher MD and relaxations.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import fcc100, fcc111
from ase.io import write

from torchsim_distill.distill.evaluation import Gates
from torchsim_distill.distill.run import (
    DistillConfig,
    distill,
    label_stage,
    sample_stage,
    split_stage,
    train_stage,
    type_names_of,
)
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.cu_au import lattice_constant, phase, random_alloy

#: Where the recipe keeps its run (labels, checkpoints) so it resumes across sessions.
DEFAULT_RUN = Path(__file__).parent / "runs" / "cu_au_sevennet0"


def seed_structures(seed: int = 0) -> list[Atoms]:
    """The Cu–Au seed set: bulk (pure, ordered, random) and surfaces, ~32–48 atoms each."""
    rng = np.random.default_rng(seed)
    seeds = [phase(name) for name in ("Cu", "Au", "Cu3Au", "CuAu", "CuAu3")]
    for x_au in (0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 0.25, 0.75):
        seeds.append(random_alloy(x_au, (2, 2, 2), rng))
    for make in (fcc111, fcc100):
        for x_au in (0.0, 1.0, 0.3, 0.7):
            slab = make("Cu", size=(2, 2, 6), a=lattice_constant(x_au), vacuum=6.0, periodic=True)
            slab.set_chemical_symbols(list(rng.choice(["Cu", "Au"], size=len(slab), p=[1 - x_au, x_au])))
            seeds.append(slab)
    return seeds


#: Second phase, which produces the shipped file: the base run meets the energy and
#: force gates but stalls at 0.106 GPa stress (train and validation alike), with
#: stress a few % of its loss. The fine-tune starts from its best checkpoint with 30x
#: the stress weight. (Two runs from scratch with r_max 6 Å and stress weight 1000 were
#: stopped far above the gates: 56 meV/atom after 18 epochs with energy weight 1, and
#: 11 meV/atom, 76 meV/Å, 0.31 GPa after 34 epochs with energy weight 100.)
REFINE = {"train_dir": "refine", "stress_weight": 3000.0, "lr": 0.002, "max_epochs": 30}


def refine_recipe(out: Path = DEFAULT_RUN, **kwargs):
    """The fine-tune of :func:`recipe`'s student: the shipped student's config."""
    base = recipe(out, **kwargs)
    return replace(base, **REFINE, init_from=str(Path(base.out) / base.train_dir / "best.ckpt"))


def recipe(out: Path = DEFAULT_RUN, *, n_configs: int = 1200, max_epochs: int = 160):
    """The base :class:`~torchsim_distill.distill.DistillConfig`: data, model and first training.

    The committed base run predates the least-squares energy shifts of ``train_stage``
    (it started from the mean energy per atom for both elements); ``main`` does not
    retrain a finished base run, so the shipped student descends from that run.
    """
    out.mkdir(parents=True, exist_ok=True)
    seeds_file = out / "seeds.xyz"
    if not seeds_file.exists():
        write(seeds_file, seed_structures(), format="extxyz")
    return DistillConfig(
        teacher="sevennet-0",
        structures=[str(seeds_file)],
        out=str(out),
        student="nequip",
        size="small",
        n_configs=n_configs,
        seed=0,
        r_max=5.0,
        max_epochs=max_epochs,
        batch_size=8,
        lr=0.01,
        fractions=(0.75, 0.1, 0.15),
        label_batch_size=8,
        gates=Gates(energy_mae=5.0, force_mae=60.0, stress_mae=0.1, min_speedup=10.0),
        sampling={
            "rattle_amplitudes": (0.02, 0.05, 0.1, 0.15),
            "max_strain": 0.04,
            "max_shear": 0.03,
            "temperatures": (300.0, 700.0, 1100.0),
            "md_stride": 10,
            "relax_frames": 4,
            "relax_max_steps": 60,
        },
    )


def _finished(train_dir: Path, max_epochs: int) -> bool:
    """Whether a training run's last checkpoint is its final epoch."""
    last = train_dir / "last.ckpt"
    return last.exists() and torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= max_epochs - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rebuild the default Cu-Au student (resumes an interrupted run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RUN)
    parser.add_argument("--n-configs", type=int, default=1200)
    parser.add_argument("--max-epochs", type=int, default=160, help="of the base run")
    parser.add_argument("--stages", choices=["data", "all"], default="all", help="data: sample and label only")
    args = parser.parse_args(argv)
    base = recipe(args.out, n_configs=args.n_configs, max_epochs=args.max_epochs)
    # the speed gate (>= 10x SevenNet-0) is judged on one CPU thread; training runs in its own process
    torch.set_num_threads(1)
    teacher = load_teacher(base.teacher)
    frames = sample_stage(base, args.out, teacher=teacher)
    labels = label_stage(base, args.out, split_stage(base, frames), teacher=teacher)
    if args.stages == "data":
        return 0
    # phase 1, the base student (resumed if unfinished); phase 2 fine-tunes it, then
    # packages, compiles and evaluates it against the gates
    if not _finished(args.out / base.train_dir, base.max_epochs):
        train_stage(base, args.out, labels, type_names_of(frames))
    config = refine_recipe(args.out, n_configs=args.n_configs, max_epochs=args.max_epochs)
    result = distill(config)
    if not result.passed:
        # a student that misses its gates is not shipped; its report says by how much
        print(f"gates FAILED ({'; '.join(result.report.failures)}); see {result.run_dir / 'report' / 'model_card.md'}")
        return 2
    print(f"first student written to {result.package} (gates passed); the default one is its rebuild, "
          "recipes/cu_au_sevennet0_v2.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
