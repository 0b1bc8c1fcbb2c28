"""``torchsim-distill demo``: the main job on the embedded default student.

Generates about a hundred Cu–Au structures, relaxes them in one batched torch-sim run
with the default student (SevenNet-0 distilled into a small NequIP model, compiled on
first use and cached), and compares the student with its teacher on a few of them:
the same batched call, timed side by side, and the errors of energy, forces and stress::

    run_demo(n_structures=100, out="torchsim_distill_demo")
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from torchsim_distill.distill.evaluation import compute_metrics, measure_speed, predict
from torchsim_distill.jobs.relax import relax_structures
from torchsim_distill.models.cu_au import PHASE_SITES, fcc_alloy
from torchsim_distill.models.default import default_calc

logger = logging.getLogger(__name__)


def demo_structures(n: int, seed: int = 0) -> list[Atoms]:
    """``n`` Cu–Au cells: the pure metals and ordered phases, then random fcc alloys.

    Cells have 32 or 108 atoms, strained by up to 3 % and rattled by 0.05 Å, so that
    every structure has something to relax.
    """
    rng = np.random.default_rng(seed)
    ordered = list(PHASE_SITES.values())
    out = []
    for i in range(n):
        reps = (2, 2, 2) if i % 4 else (3, 3, 3)
        if i < len(ordered):
            symbols = ordered[i] * int(np.prod(reps))
        else:
            x_au = rng.uniform(0.05, 0.95)
            symbols = list(rng.choice(["Cu", "Au"], size=4 * int(np.prod(reps)), p=[1 - x_au, x_au]))
        atoms = fcc_alloy(symbols, reps)
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(2**31)))
        atoms.info["id"] = f"demo_{i:03d}"
        out.append(atoms)
    return out


def compare_with_teacher(student, teacher, structures: list[Atoms], *, repeats: int = 3) -> dict[str, float]:
    """The student against its teacher on the same structures, with the evaluation stage's
    own functions: errors of one batched call each, and the time of that call.

    Errors are the student's against the teacher's outputs: energy MAE per atom (meV),
    force MAE per component (meV/Å), stress MAE per component (GPa); times are medians
    of ``repeats`` interleaved calls after a warm-up (see :func:`measure_speed`).
    """
    n = len(structures)
    metrics = compute_metrics(predict(teacher, structures, batch_size=n), predict(student, structures, batch_size=n), structures)
    speed = measure_speed(student, teacher, structures, repeats=repeats)
    return {
        "n_structures": n,
        "n_atoms": metrics.n_atoms,
        "energy_mae_mev_atom": metrics.energy_mae,
        "force_mae_mev_a": metrics.force_mae,
        "stress_mae_gpa": metrics.stress_mae,
        "t_student_s": speed["t_student_s"],
        "t_teacher_s": speed["t_teacher_s"],
        "speedup": speed["speedup"],
        "torch_threads": speed["torch_threads"],
    }


def run_demo(
    *,
    n_structures: int = 100,
    out: str | Path = "torchsim_distill_demo",
    device: str = "cpu",
    seed: int = 0,
    max_steps: int = 300,
    fmax: float = 0.05,
    n_compare: int = 8,
    progress: bool = True,
) -> dict[str, object]:
    """Run the demo, log what it measured (the CLI shows it), and return the numbers
    (``progress``: the relaxation's progress bar).

    Writes ``structures.extxyz`` (the inputs), ``relaxed.extxyz`` and ``results.csv``
    into ``out``. The teacher comparison needs the ``teachers`` extra (SevenNet-0); it
    is skipped with a message when ``sevenn`` is not installed or ``n_compare`` is 0.
    """
    out = Path(out)
    logger.info("1/3 the default student: SevenNet-0 distilled into a small NequIP model for Cu-Au "
                "(compiled with AOTInductor on first use, then cached)")
    calc = default_calc(device, skin=None)  # the cell filter moves the cell every step: no skin

    structures = demo_structures(n_structures, seed)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "structures.extxyz", structures, format="extxyz")
    n_atoms = sum(len(a) for a in structures)
    logger.info(f"2/3 relaxing {n_structures} Cu-Au structures ({n_atoms} atoms) in one batched torch-sim run "
                "(FIRE + Frechet cell filter, in-flight autobatching)")
    summary = relax_structures(structures, calc, out, fmax=fmax, max_steps=max_steps, progress=progress, summary=True)
    result: dict[str, object] = {
        "n_structures": n_structures, "n_converged": summary.n_converged,
        "relax_wall_s": summary.wall_time, "structures_per_min": n_structures / summary.wall_time * 60,
    }

    n_compare = min(n_compare, n_structures)
    logger.info(f"3/3 student vs teacher (SevenNet-0) on {n_compare} of the input structures, same batched call")
    if n_compare == 0:
        logger.info("    skipped (n_compare=0)")
        return result
    try:
        from torchsim_distill.distill.teachers import load_teacher

        teacher = load_teacher("sevennet-0", device=device)
    except ImportError as err:
        logger.info(f"    skipped: the teacher needs the 'teachers' extra (pip install -e '.[teachers]'): {err}")
        return result
    cmp = compare_with_teacher(calc, teacher, structures[:n_compare])
    logger.info(f"    time per call: student {cmp['t_student_s'] * 1e3:.1f} ms, teacher {cmp['t_teacher_s'] * 1e3:.0f} ms "
                f"-> {cmp['speedup']:.0f}x faster (torch threads: {cmp['torch_threads']})")
    logger.info(f"    student vs teacher: energy {cmp['energy_mae_mev_atom']:.2f} meV/atom, "
                f"forces {cmp['force_mae_mev_a']:.1f} meV/A, stress {cmp['stress_mae_gpa']:.3f} GPa (MAE)")
    result["teacher_comparison"] = cmp
    return result

