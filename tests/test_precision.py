"""Float32 students end to end: trained, compiled with a float32 tolerance, run by the calculator.

The float32 toy student is trained (~15 s) and compiled (~60 s) once per machine (cached);
the references are nequip's eager models, never the compiled one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch_sim as ts

from torchsim_distill.models.cu_au import rattled_alloy


@pytest.fixture(scope="module")
def student32_ckpt() -> Path:
    from torchsim_distill.bench.toy import toy_student

    return toy_student(size="tiny", n_train=40, n_val=8, max_epochs=10, precision="float32")


@pytest.fixture(scope="module")
def student32_pt2(student32_ckpt: Path) -> Path:
    from torchsim_distill.compile import cached_compile

    return cached_compile(student32_ckpt, device="cpu", target="batch")


@pytest.mark.slow
def test_float32_student_compiles_in_float32_within_its_tolerance(student32_ckpt, student32_pt2):
    from torchsim_distill.compile import (
        FLOAT32_TOL,
        check_against_eager,
        load_eager_model,
        stored_check_report,
    )
    from torchsim_distill.runtime.artifact import load_artifact

    eager = load_eager_model(student32_ckpt)
    assert eager.metadata["model_dtype"] == "float32"
    assert load_artifact(student32_pt2, target="batch").model_dtype == torch.float32
    stored = stored_check_report(student32_pt2)
    assert (stored["energy_tol"], stored["force_tol"]) == (FLOAT32_TOL, FLOAT32_TOL)
    # a fresh probe batch (another seed than compile's check): float32 round-off, far below the tolerance
    de, df, _ = check_against_eager(student32_pt2, eager, seed=7)
    assert 0 <= de <= FLOAT32_TOL and 0 <= df <= FLOAT32_TOL


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", [torch.float64, torch.float32])
def test_calculator_runs_a_float32_student_on_float64_and_float32_states(student32_ckpt, student32_pt2, state_dtype):
    from nequip.integrations.ase import NequIPCalculator

    from torchsim_distill import DistilledTorchSimCalc

    atoms = [rattled_alloy(seed=0), rattled_alloy(reps=(3, 2, 2), x_au=0.6, seed=1)]
    calc = DistilledTorchSimCalc.from_compiled_model(student32_pt2, chemical_species_to_atom_type_map=True, dtype=state_dtype)
    out = calc(ts.io.atoms_to_state(atoms, calc.device, state_dtype))
    assert {out[k].dtype for k in ("energy", "forces", "stress")} == {state_dtype}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = NequIPCalculator._from_saved_model(str(student32_ckpt), chemical_species_to_atom_type_map=True)
    start = 0
    for k, a in enumerate(atoms):
        a = a.copy()
        a.calc = eager
        forces = torch.as_tensor(a.get_forces(), dtype=torch.float64)
        n = len(a)
        # float32 round-off of energies of ~10 eV and forces of ~1 eV/Å, with a 10x margin
        assert abs(float(out["energy"][k]) - a.get_potential_energy()) < 1e-4
        assert (out["forces"][start : start + n].double() - forces).abs().max() < 1e-4
        start += n


@pytest.mark.slow
def test_float64_weights_cast_into_a_float32_network(student_ckpt):
    from nequip.data import AtomicDataDict as K

    from torchsim_distill.compile import load_eager_model, probe_batch, with_edges
    from torchsim_distill.distill.training import ModelOptions, _model_config, model_cast_from

    donor = load_eager_model(student_ckpt)
    architecture = _model_config(ModelOptions(size="tiny", r_max=4.5, precision="float32"), ["Au", "Cu"], 0)
    # statistics that the donor's weights and buffers must override (the trainer fills them from data)
    architecture.update(avg_num_neighbors=3.0, per_type_energy_shifts=0.0, per_type_energy_scales=1.0)
    model = model_cast_from(str(student_ckpt), architecture).eval()
    assert model.metadata["model_dtype"] == "float32"
    assert torch.float32 in {p.dtype for p in model.parameters()}
    data = with_edges(probe_batch(["Au", "Cu"], 4.5, seed=3), 4.5)
    ref = donor({k: v.clone() for k, v in data.items()})
    out = model({k: v.to(torch.float32) if v.is_floating_point() else v.clone() for k, v in data.items()})
    de = (out[K.TOTAL_ENERGY_KEY].double() - ref[K.TOTAL_ENERGY_KEY]).abs().max()
    df = (out[K.FORCE_KEY].double() - ref[K.FORCE_KEY]).abs().max()
    assert de < 1e-4 and df < 1e-4, (de, df)  # the same function, up to float32 round-off

    wrong = _model_config(ModelOptions(size="small", r_max=4.5, precision="float32"), ["Au", "Cu"], 0)
    wrong.update(avg_num_neighbors=3.0, per_type_energy_shifts=0.0, per_type_energy_scales=1.0)
    with pytest.raises(ValueError, match="not the one asked for"):
        model_cast_from(str(student_ckpt), wrong)


@pytest.mark.slow
def test_precision_reaches_the_training_config(student_ckpt):
    from torchsim_distill.distill.training import student_config

    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], precision="float32")
    assert cfg["training_module"]["model"]["model_dtype"] == "float32"
    same = student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], init_from=student_ckpt, r_max=4.5, size="tiny")
    assert same["training_module"]["model"]["_target_"] == "nequip.model.ModelFromCheckpoint"
    cast = student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], init_from=student_ckpt, r_max=4.5,
                          size="tiny", precision="float32")
    assert cast["training_module"]["model"]["_target_"].endswith("training.model_cast_from")
    assert cast["training_module"]["model"]["architecture"]["model_dtype"] == "float32"


def test_precision_is_checked_and_on_the_command_line():
    from torchsim_distill.cli import build_parser
    from torchsim_distill.distill.advice import distill_argv
    from torchsim_distill.distill.run import DistillConfig
    from torchsim_distill.distill.training import ModelOptions

    with pytest.raises(ValueError, match="precision"):
        DistillConfig(teacher="emt", structures=[], out="x", precision="float16").check()
    with pytest.raises(ValueError, match="precision"):
        ModelOptions(precision="bfloat16")
    args = build_parser().parse_args(["distill", "--teacher", "emt", "--structures", "s.xyz", "--out", "o",
                                      "--precision", "float32"])
    assert args.precision == "float32"
    argv = distill_argv(DistillConfig(teacher="emt", structures=["s.xyz"], out="o", precision="float32"))
    assert argv[argv.index("--precision") + 1] == "float32"
