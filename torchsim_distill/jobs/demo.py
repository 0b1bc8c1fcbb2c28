"""``torchsim-distill demo``: the main job on the embedded default student.

Generates about a hundred Cu–Au structures, relaxes them in one batched torch-sim run
with the default student (SevenNet-0 distilled into a small NequIP model, compiled on
first use and cached), and compares the student with its teacher on a few of them:
the same batched call, timed side by side, and the errors of energy, forces and stress::

    run_demo(n_structures=100, out="torchsim_distill_demo")
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms
from ase.io import write

from torchsim_distill.jobs.relax import relax_structures
from torchsim_distill.models.cu_au import PHASE_SITES, fcc_alloy
from torchsim_distill.models.default import default_calc


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


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare_with_teacher(student, teacher, structures: list[Atoms], *, repeats: int = 3) -> dict[str, float]:
    """One batched call on the same state with each model: errors and the time ratio.

    Errors are the student's against the teacher's outputs: energy MAE per atom (meV),
    force MAE per component (meV/Å), stress MAE per component (GPa).
    """
    state_s = ts.io.atoms_to_state(structures, student.device, student.dtype)
    state_t = ts.io.atoms_to_state(structures, teacher.device, teacher.dtype)
    out_s, out_t = student(state_s), teacher(state_t)  # also the warm-up of both
    times_s, times_t = [], []
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        times_s.append(_seconds(lambda: student(state_s)))
        times_t.append(_seconds(lambda: teacher(state_t)))
    n_atoms = state_s.n_atoms_per_system.cpu().numpy()

    def arr(out, key):
        return out[key].detach().to("cpu", torch.float64).numpy()

    gpa = 160.21766208  # eV/Å³ → GPa
    t_s, t_t = float(np.median(times_s)), float(np.median(times_t))
    return {
        "n_structures": len(structures),
        "n_atoms": int(n_atoms.sum()),
        "energy_mae_mev_atom": float(np.mean(np.abs(arr(out_s, "energy") - arr(out_t, "energy")) / n_atoms) * 1e3),
        "force_mae_mev_a": float(np.mean(np.abs(arr(out_s, "forces") - arr(out_t, "forces"))) * 1e3),
        "stress_mae_gpa": float(np.mean(np.abs(arr(out_s, "stress") - arr(out_t, "stress"))) * gpa),
        "t_student_s": t_s,
        "t_teacher_s": t_t,
        "speedup": t_t / t_s,
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
) -> dict[str, object]:
    """Run the demo, print what it measured, and return the numbers.

    Writes ``structures.extxyz`` (the inputs), ``relaxed.extxyz`` and ``results.csv``
    into ``out``. The teacher comparison needs the ``teachers`` extra (SevenNet-0); it
    is skipped with a message when ``sevenn`` is not installed or ``n_compare`` is 0.
    """
    out = Path(out)
    print("1/3 the default student: SevenNet-0 distilled into a small NequIP model for Cu-Au "
          "(compiled with AOTInductor on first use, then cached)", flush=True)
    calc = default_calc(device, skin=None)  # the cell filter moves the cell every step: no skin

    structures = demo_structures(n_structures, seed)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "structures.extxyz", structures, format="extxyz")
    n_atoms = sum(len(a) for a in structures)
    print(f"2/3 relaxing {n_structures} Cu-Au structures ({n_atoms} atoms) in one batched torch-sim run "
          "(FIRE + Frechet cell filter, in-flight autobatching)", flush=True)
    summary = relax_structures(structures, calc, out, fmax=fmax, max_steps=max_steps, progress=True)
    result: dict[str, object] = {
        "n_structures": n_structures, "n_converged": summary.n_converged,
        "relax_wall_s": summary.wall_time, "structures_per_min": n_structures / summary.wall_time * 60,
    }

    n_compare = min(n_compare, n_structures)
    print(f"3/3 student vs teacher (SevenNet-0) on {n_compare} of the input structures, same batched call", flush=True)
    if n_compare == 0:
        print("    skipped (n_compare=0)")
        return result
    try:
        from torchsim_distill.distill.teachers import load_teacher

        teacher = load_teacher("sevennet-0", device=device)
    except ImportError as err:
        print(f"    skipped: the teacher needs the 'teachers' extra (pip install -e '.[teachers]'): {err}")
        return result
    cmp = compare_with_teacher(calc, teacher, structures[:n_compare])
    print(f"    time per call: student {cmp['t_student_s'] * 1e3:.1f} ms, teacher {cmp['t_teacher_s'] * 1e3:.0f} ms "
          f"-> {cmp['speedup']:.0f}x faster (torch threads: {torch.get_num_threads()})")
    print(f"    student vs teacher: energy {cmp['energy_mae_mev_atom']:.2f} meV/atom, "
          f"forces {cmp['force_mae_mev_a']:.1f} meV/A, stress {cmp['stress_mae_gpa']:.3f} GPa (MAE)")
    result["teacher_comparison"] = cmp
    return result

