"""Batched FIRE relaxation in torch-sim, set up one way for every caller.

The distillation's relaxations (the acceptance suite's, the sampler's relaxation paths)
run torch-sim's FIRE to a force tolerance, optionally with the Fréchet cell filter; this
is that call, once::

    final, converged = fire_relax(state, model, fmax=0.002, max_steps=500, cell=True)
    converged(final)  # [n_systems] bools, from the forces FIRE left on the final state

The relax job (:mod:`torchsim_distill.jobs.relax`) keeps its own loop over
``ts.fire_step``: it needs each structure's exact step count, which ``ts.optimize`` keeps
to itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_sim as ts
from torch_sim.models.interface import ModelInterface


def fire_relax(
    state: ts.SimState, model: ModelInterface, *, fmax: float, max_steps: int, cell: bool, **optimize: Any
) -> tuple[ts.SimState, Callable[[ts.SimState], torch.Tensor]]:
    """FIRE on every system of ``state`` until all forces (and, with ``cell``, every row of
    the Fréchet filter's cell force, virial / N in eV) are below ``fmax`` eV/Å, or
    ``max_steps``; ``optimize`` goes to ``ts.optimize`` (``trajectory_reporter``,
    ``autobatcher``). Returns the final state and the convergence test it was held to
    (a function of a state: ``[n_systems]`` bools)."""
    converged_fn = ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=cell)
    final = ts.optimize(
        state, model,
        optimizer=ts.Optimizer.fire,
        convergence_fn=converged_fn,
        max_steps=max_steps,
        init_kwargs={"cell_filter": ts.CellFilter.frechet} if cell else None,
        **optimize,
    )
    return final, converged_fn
