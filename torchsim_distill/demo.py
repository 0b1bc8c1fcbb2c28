"""``torchsim-distill demo``: a student, compiled, evaluating many Cu–Au systems per call.

Until the distilled SevenNet-0 default student ships, the demo trains a small Cu–Au
student on ASE's EMT (cached after the first run), compiles it, relaxes a batch of
random alloys with torch-sim, and compares speed and accuracy with its reference::

    run_demo(n_structures=100)
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch_sim as ts
from ase.calculators.emt import EMT

from .calculator import DistilledTorchSimCalc
from .compile import cached_compile
from .evaluation import compute_metrics, reference_labels
from .toy import emt_cu_au_frames, toy_student


def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_demo(*, n_structures: int = 100, device: str = "cpu", seed: int = 123, relax_steps: int = 50) -> dict[str, float]:
    """Run the demo and print what it measured; return the numbers."""
    print("1/4 student: Cu-Au NequIP trained on EMT labels (cached after the first run)", flush=True)
    ckpt = toy_student(size="small", n_train=60, n_val=10, max_epochs=20)
    print("2/4 compiling with AOTInductor (--target batch; cached after the first run)", flush=True)
    pt2 = cached_compile(ckpt, device=device, target="batch")
    calc = DistilledTorchSimCalc.from_compiled_model(pt2, device=device, chemical_species_to_atom_type_map=True, skin=0.5)

    frames = emt_cu_au_frames(n_structures, seed, reps=2)
    state = ts.io.atoms_to_state(frames, torch.device(device), torch.float64)
    print(f"3/4 one batched call on {n_structures} structures ({state.n_atoms} atoms)", flush=True)
    calc(state)  # warm-up: Warp kernels and allocator
    t_student = _median_time(lambda: calc(state))
    out = calc(state)
    emt = EMT()
    t_emt10 = _median_time(lambda: [_emt_energy(f, emt) for f in frames[:10]], repeats=1)
    reference = reference_labels(frames)
    prediction = {
        "energy": out["energy"].cpu().numpy(),
        "forces": out["forces"].cpu().numpy(),
        "stress": out["stress"].cpu().numpy(),
        "n_atoms": reference["n_atoms"],
    }
    metrics = compute_metrics(reference, prediction, frames)
    e_mae, f_mae = metrics.energy_mae, metrics.force_mae
    print(f"    student: {t_student * 1e3:.1f} ms per batched call = {state.n_atoms / t_student:,.0f} atoms/s")
    print(f"    EMT (ASE, one by one): {t_emt10 / 10 * n_structures * 1e3:.1f} ms for the same structures")
    print(f"    accuracy vs EMT: energy MAE {e_mae:.1f} meV/atom, force MAE {f_mae:.0f} meV/A")

    print(f"4/4 batched FIRE relaxation (Frechet cell filter), {relax_steps} steps", flush=True)
    t0 = time.perf_counter()
    relaxed = ts.optimize(
        system=state, model=calc, optimizer=ts.Optimizer.fire,
        init_kwargs={"cell_filter": ts.CellFilter.frechet}, max_steps=relax_steps,
        convergence_fn=ts.generate_force_convergence_fn(force_tol=0.05),
    )
    t_relax = time.perf_counter() - t0
    final = calc(relaxed)
    drop = float((out["energy"] - final["energy"]).mean() / (state.n_atoms / n_structures))
    print(f"    {n_structures} structures relaxed in {t_relax:.1f} s ({n_structures / t_relax * 60:.0f} structures/min); mean energy drop {drop * 1e3:.1f} meV/atom")
    return {"t_student_call": t_student, "t_emt_equivalent": t_emt10 / 10 * n_structures, "energy_mae_mev_atom": e_mae, "force_mae_mev_a": f_mae, "t_relax": t_relax}


def _emt_energy(atoms, emt: EMT) -> float:
    a = atoms.copy()
    a.calc = emt
    a.get_forces()
    return a.get_potential_energy()
