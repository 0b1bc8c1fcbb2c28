"""Time one training step of candidate student sizes, in a process of its own.

Run by :func:`~torchsim_distill.distill.budget.measure_costs` as
``python -m torchsim_distill.distill.budget_probe`` with a JSON request on stdin; prints a
JSON answer. A process of its own because building a nequip model sets nequip's global
state (default dtype, seeds) in the process that builds it; and its start-up, importing
nequip, is what every ``nequip-train`` pays too, so it is measured here as well.

Request: ``{"frames": extxyz path, "type_names", "r_max", "precision", "sizes", "batch_size", "steps"}``.
Answer: ``{"import_s", "step_s": {size: s}, "forward_s": {size: s}}`` (one optimiser step on
a batch of ``batch_size`` frames, and one forward pass with forces, the least of ``steps``).
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()


def main() -> None:
    request = json.loads(sys.stdin.read())
    import torch
    from ase.io import read
    from hydra.utils import get_method
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
    from nequip.utils.global_state import global_state_initialized, set_global_state

    from torchsim_distill.distill.training import ModelOptions, _model_config

    if not global_state_initialized():
        set_global_state()
    import_s = time.perf_counter() - T0
    names = request["type_names"]
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=names, chemical_species_to_atom_type_map={t: t for t in names})
    frames = read(request["frames"], index=":")
    data = [mapper(compute_neighborlist_(from_ase(a), r_max=request["r_max"])) for a in frames[: request["batch_size"]]]
    batch = AtomicDataDict.batched_from_list(data)
    step_s, forward_s = {}, {}
    for size in request["sizes"]:
        options = ModelOptions(size=size, r_max=request["r_max"], precision=request["precision"],
                               energy_shifts=dict.fromkeys(names, 0.0))
        config = _model_config(options, names, 0)
        config.update(avg_num_neighbors=20.0, per_type_energy_scales=1.0)
        model = get_method(config.pop("_target_"))(**config)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        steps, forwards = [], []
        for _ in range(request["steps"]):
            t = time.perf_counter()
            out = model(dict(batch))
            loss = out[AtomicDataDict.FORCE_KEY].square().mean() + out[AtomicDataDict.TOTAL_ENERGY_KEY].square().mean()
            forwards.append(time.perf_counter() - t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append(time.perf_counter() - t)
        step_s[size], forward_s[size] = min(steps), min(forwards)
    print(json.dumps({"import_s": import_s, "step_s": step_s, "forward_s": forward_s}))


if __name__ == "__main__":
    main()
