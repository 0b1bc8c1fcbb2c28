"""Training configs: options, nequip's field names, fine-tuning from a checkpoint, and
checkpoints that allow resuming."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from torchsim_distill.distill.training import ModelOptions, TrainingOptions, student_config, train_student
from torchsim_distill.models.cu_au import rattled_alloy


def _toy_config(student_ckpt, **kwargs):
    run = student_ckpt.parent  # the toy student's own training data
    return student_config(
        [run / "train.xyz"], [run / "val.xyz"], type_names=["Au", "Cu"], r_max=4.5, size="tiny", **kwargs
    )


def test_init_from_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from: .*nope.ckpt does not exist"):
        student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], init_from=tmp_path / "nope.ckpt")


def test_options_dataclasses_and_keywords_give_the_same_config(tmp_path):
    model = ModelOptions(student="allegro", size="tiny", r_max=5.0, energy_shifts={"Au": -3.0, "Cu": -4.0})
    training = TrainingOptions(max_epochs=7, batch_size=2, lr=0.003, seed=4, stress_weight=10.0, progress=True)
    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], model=model, training=training)
    assert cfg == student_config(
        ["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], student="allegro", size="tiny", r_max=5.0,
        energy_shifts={"Au": -3.0, "Cu": -4.0}, max_epochs=7, batch_size=2, lr=0.003, seed=4,
        stress_weight=10.0, progress=True,
    )
    # keywords apply on top of the dataclasses
    assert cfg == student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], model=model,
                                 training=TrainingOptions(max_epochs=1), max_epochs=7, batch_size=2, lr=0.003,
                                 seed=4, stress_weight=10.0, progress=True)
    assert cfg["trainer"]["max_epochs"] == 7 and cfg["seed"] == 4 and cfg["data"]["seed"] == 4
    assert cfg["training_module"]["model"]["_target_"] == "allegro.model.AllegroModel"
    assert cfg["training_module"]["model"]["r_max"] == 5.0
    assert cfg["training_module"]["optimizer"]["lr"] == 0.003
    assert cfg["trainer"]["callbacks"][-1]["_target_"] == "lightning.pytorch.callbacks.TQDMProgressBar"


def test_unknown_options_are_clear_errors():
    with pytest.raises(TypeError, match="unknown options \\['max_epoch'\\]"):
        student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], max_epoch=3)
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], size="huge")
    with pytest.raises(ValueError, match="unknown student 'mace'"):
        ModelOptions(student="mace")


def test_losses_and_metrics_use_nequips_field_names():
    from nequip.data import AtomicDataDict

    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], atomic_energy_weight=0.5, energy_weight=2.0)
    loss = cfg["training_module"]["loss"]
    assert loss["coeffs"] == {
        AtomicDataDict.TOTAL_ENERGY_KEY: 2.0, AtomicDataDict.FORCE_KEY: 1.0, AtomicDataDict.STRESS_KEY: 100.0,
    }
    (extra,) = loss["extra_metrics"]
    assert extra["field"] == AtomicDataDict.PER_ATOM_ENERGY_KEY and extra["coeff"] == 0.5
    metrics = cfg["training_module"]["val_metrics"]["coeffs"]
    assert metrics == {"per_atom_energy_mae": 1.0, "forces_mae": 1.0, "stress_mae": 100.0}
    no_stress = student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], stress=False)
    assert no_stress["training_module"]["loss"]["coeffs"][AtomicDataDict.STRESS_KEY] == 0.0
    assert no_stress["training_module"]["val_metrics"]["coeffs"]["stress_mae"] is None
    assert no_stress["training_module"]["loss"]["extra_metrics"] is None



def test_huber_force_loss_replaces_the_mse_and_weighs_large_errors_linearly():
    """Below delta the Huber term (×2) is the force MSE; beyond it, a 2 eV/Å error weighs
    2·δ·(2 − δ/2) instead of 4: distorted frames no longer dominate the gradient."""
    import torch
    from hydra.utils import instantiate
    from nequip.data import AtomicDataDict

    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], force_huber_delta=0.2)
    loss = cfg["training_module"]["loss"]
    assert loss["coeffs"][AtomicDataDict.FORCE_KEY] == 0.0  # the MSE is off ...
    (huber,) = loss["extra_metrics"]  # ... and the Huber term takes its place
    assert huber["field"] == AtomicDataDict.FORCE_KEY and huber["coeff"] == 2.0
    metric = instantiate(huber["metric"])
    for error, expected in ((0.1, 0.1**2), (2.0, 2 * 0.2 * (2.0 - 0.1))):
        metric.reset()
        metric.update(torch.tensor([error], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
        assert huber["coeff"] * float(metric.compute()) == pytest.approx(expected)
    assert cfg["training_module"]["val_metrics"]["coeffs"]["forces_mae"] == 1.0  # still judged by the MAE
    with pytest.raises(ValueError, match="force_huber_delta.*> 0"):
        student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], force_huber_delta=0.0)

@pytest.mark.slow
def test_fine_tune_starts_from_the_given_weights_and_checkpoints_every_epoch(student_ckpt, eager_calc, tmp_path):
    from nequip.integrations.ase import NequIPCalculator

    cfg = _toy_config(student_ckpt, max_epochs=2, lr=1e-12, stress_weight=1000.0, init_from=student_ckpt)
    assert cfg["training_module"]["model"]["_target_"] == "nequip.model.ModelFromCheckpoint"
    assert cfg["training_module"]["loss"]["coeffs"]["stress"] == 1000.0
    best = train_student(cfg, tmp_path / "fine_tune")

    # last.ckpt follows every epoch, not only those that improved the validation metric
    last = torch.load(tmp_path / "fine_tune" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["epoch"] == 1
    log = tmp_path / "fine_tune" / "logs" / "version_0" / "metrics.csv"
    assert "val0_epoch/stress_mae" in log.read_text().splitlines()[0]

    # a learning rate of 1e-12 leaves the weights where they started: the base student's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = NequIPCalculator._from_saved_model(str(best), chemical_species_to_atom_type_map=True)
    atoms = rattled_alloy(seed=3)
    ref = atoms.copy()
    ref.calc = eager_calc
    atoms.calc = tuned
    assert abs(atoms.get_potential_energy() - ref.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-6)


def test_energy_shifts_are_the_least_squares_energies_per_type():
    from ase.calculators.singlepoint import SinglePointCalculator

    from torchsim_distill.distill.training import fit_energy_shifts

    frames = []
    for seed, x_au in enumerate((0.0, 0.25, 0.5, 1.0)):
        atoms = rattled_alloy(x_au=x_au, seed=seed)
        n_au = atoms.get_chemical_symbols().count("Au")
        energy = -3.2 * n_au - 4.0 * (len(atoms) - n_au)  # exactly additive
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
        frames.append(atoms)
    shifts = fit_energy_shifts(frames, ["Au", "Cu"])
    assert shifts == pytest.approx({"Au": -3.2, "Cu": -4.0}, abs=1e-10)
    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Au", "Cu"], energy_shifts=shifts)
    assert cfg["training_module"]["model"]["per_type_energy_shifts"] == shifts


def _labelled(path, rng, n_frames=12):
    """Cu frames with known label spreads: forces N(0, 0.5) eV/Å, per-atom energies −3 eV plus
    N(0, 0.04), stress N(0, 0.01) eV/Å³."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames, residuals = [], []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        r = rng.normal(0.0, 0.04)
        residuals.append(r)
        atoms.calc = SinglePointCalculator(
            atoms, energy=len(atoms) * (-3.0 + r), forces=rng.normal(0.0, 0.5, (len(atoms), 3)),
            stress=rng.normal(0.0, 0.01, 6))
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return frames, np.array(residuals)


def test_unset_loss_weights_are_balanced_by_the_training_labels_scales(tmp_path):
    from nequip.data import AtomicDataDict as K

    frames, residuals = _labelled(tmp_path / "train.xyz", np.random.default_rng(0))
    force_rms = np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2))
    stress_rms = np.sqrt(np.mean(np.concatenate([a.get_stress(voigt=False).ravel() for a in frames]) ** 2))
    energy_rms = residuals.std()  # one type, equal sizes: the fitted shift is the mean
    cfg = student_config([tmp_path / "train.xyz"], ["v.xyz"], type_names=["Cu"])
    coeffs = cfg["training_module"]["loss"]["coeffs"]
    assert coeffs[K.TOTAL_ENERGY_KEY] == pytest.approx((force_rms / energy_rms) ** 2, rel=1e-6)
    assert coeffs[K.STRESS_KEY] == pytest.approx((force_rms / stress_rms) ** 2, rel=1e-6)
    assert coeffs[K.TOTAL_ENERGY_KEY] > 50 and coeffs[K.STRESS_KEY] > 1000  # far from the old 1 and 100
    # explicit weights are kept; the other is still balanced
    mine = student_config([tmp_path / "train.xyz"], ["v.xyz"], type_names=["Cu"], energy_weight=3.0)
    assert mine["training_module"]["loss"]["coeffs"][K.TOTAL_ENERGY_KEY] == 3.0
    assert mine["training_module"]["loss"]["coeffs"][K.STRESS_KEY] == coeffs[K.STRESS_KEY]


def test_the_default_schedule_is_a_cosine_over_the_planned_epochs():
    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], max_epochs=40, lr=0.02)
    scheduler = cfg["training_module"]["lr_scheduler"]["scheduler"]
    assert scheduler["_target_"].endswith("CosineAnnealingLR") and scheduler["T_max"] == 40
    assert scheduler["eta_min"] == pytest.approx(0.0002)
    plateau = student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], lr_schedule="plateau")
    assert plateau["training_module"]["lr_scheduler"]["scheduler"]["_target_"].endswith("ReduceLROnPlateau")


def test_a_time_cap_reaches_the_trainer_as_lightnings_duration():
    cfg = student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"], max_time=3725.4)
    assert cfg["trainer"]["max_time"] == "00:01:02:05"
    assert "max_time" not in student_config(["t.xyz"], ["v.xyz"], type_names=["Cu"])["trainer"]


def test_a_run_begun_with_one_validation_set_resumes_with_one(tmp_path):
    """nequip restores metrics per validation set: a checkpoint from before the near/far
    split resumes with the whole split only (resuming it with three failed to load)."""
    import torch

    from torchsim_distill.distill.run import resumable_validation

    val = [tmp_path / "val.xyz", tmp_path / "val_near.xyz", tmp_path / "val_far.xyz"]
    assert resumable_validation(tmp_path, val) == val  # a new run logs all three
    torch.save({"state_dict": {"val_metrics.0._extra_state": 0}}, tmp_path / "last.ckpt")
    assert resumable_validation(tmp_path, val) == val[:1]
    torch.save({"state_dict": {"val_metrics.0._extra_state": 0, "val_metrics.1._extra_state": 0}}, tmp_path / "last.ckpt")
    assert resumable_validation(tmp_path, val) == val
    assert resumable_validation(tmp_path, val[:1]) == val[:1]
