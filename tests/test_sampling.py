"""Configuration sampling around seed structures, and splits by seed or by trajectory."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from torchsim_distill.distill.sampling import (
    FAR_KINDS,
    KINDS,
    NEAR_EQUILIBRIUM_KINDS,
    TEACHER_KINDS,
    SamplingOptions,
    kind_quotas,
    sample_configurations,
    split_by_seed,
    split_frames,
)
from torchsim_distill.distill.splitting import _deal, frame_group, seeds_needed
from torchsim_distill.distill.teachers import load_teacher
from torchsim_distill.models.cu_au import lattice_constant, phase


def _seeds() -> list[Atoms]:
    """Pure Cu, pure Au and an ordered CuAu cell: 4 atoms each, so sampling stays fast."""
    cu, au = phase("Cu", (1, 1, 1)), phase("Au", (1, 1, 1))
    cu_au = bulk("Cu", "fcc", a=lattice_constant(0.5), cubic=True)
    cu_au.symbols[[0, 3]] = "Au"
    return [cu, au, cu_au]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("emt")


@pytest.fixture(scope="module")
def frames(teacher):
    return sample_configurations(_seeds(), teacher, n_configs=40, seed=7, progress=False)


def _same(a: list[Atoms], b: list[Atoms]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.numbers, y.numbers)
        and np.array_equal(x.positions, y.positions)
        and np.array_equal(x.cell.array, y.cell.array)
        and x.info == y.info
        for x, y in zip(a, b, strict=True)
    )


def test_every_kind_produces_frames(frames):
    counts = Counter(atoms.info["kind"] for atoms in frames)
    assert set(counts) == set(KINDS) - {"defect_relax"}  # 4-atom seeds: too small for defects (test_sampling_kinds)
    assert sum(counts.values()) == 40
    # the far kinds share a tenth (SamplingOptions.far_share), the others the rest evenly
    assert counts["large_rattle"] == counts["compress"] == 2
    assert sorted(counts[k] for k in NEAR_EQUILIBRIUM_KINDS if k != "defect_relax") == [4] * 9


def test_frames_record_seed_and_unique_ids(frames):
    seeds = _seeds()
    for atoms in frames:
        seed_id = atoms.info["seed_id"]
        assert 0 <= seed_id < len(seeds)
        assert set(atoms.get_chemical_symbols()) <= {"Cu", "Au"}
        assert atoms.calc is None
    assert len({atoms.info["frame_id"] for atoms in frames}) == len(frames)
    # seeds are visited in turn: every seed appears in the cheap kinds
    assert {a.info["seed_id"] for a in frames if a.info["kind"] == "rattle"} == {0, 1, 2}


def test_kinds_do_what_they_say(frames):
    seeds = _seeds()
    for atoms in frames:
        kind, seed = atoms.info["kind"], seeds[atoms.info["seed_id"]]
        if kind == "rattle":
            assert np.allclose(atoms.cell.array, seed.cell.array)
            assert atoms.info["rattle"] in (0.02, 0.05, 0.1, 0.2)
        elif kind == "large_rattle":
            assert np.allclose(atoms.cell.array, seed.cell.array)
            assert atoms.info["rattle"] in (0.25, 0.3)
        elif kind == "compress":
            assert 0.85 <= atoms.info["compression"] <= 0.96
            np.testing.assert_allclose(atoms.cell.array, atoms.info["compression"] * seed.cell.array)
        elif kind == "iso_strain":
            expected = seed.get_volume() * (1 + atoms.info["strain"]) ** 3
            assert atoms.get_volume() == pytest.approx(expected)
        elif kind == "shear_strain":
            assert 0 < atoms.info["shear"] <= 0.03
            assert not np.allclose(atoms.cell.array, seed.cell.array)
        elif kind == "substitution":
            assert len(atoms) == len(seed)
            assert (atoms.numbers != seed.numbers).sum() == atoms.info["n_substituted"]
        elif kind == "swap":
            assert sorted(atoms.numbers) == sorted(seed.numbers)  # composition kept
            assert len(set(seed.numbers)) == 2  # only mixed seeds can swap
        elif kind == "vacancy":  # a bulk seed's, in the acceptance suite's vacancy cell (4 atoms → 2×2×2)
            assert len(seed) == 4 and len(atoms) == 32 - atoms.info["n_vacancies"]
            np.testing.assert_allclose(atoms.cell.array, 2 * seed.cell.array)
        elif kind == "md":
            assert atoms.info["temperature"] in (300.0, 800.0, 1500.0)
            assert atoms.info["md_step"] > 0 and atoms.info["md_step"] % 10 == 0
            assert np.allclose(atoms.cell.array, seed.cell.array)
        elif kind == "relax":
            assert atoms.info["relax_step"] > 0 and atoms.info["relax_run"] >= 0


def test_md_covers_temperatures_and_moves_atoms(frames):
    md = [a for a in frames if a.info["kind"] == "md"]
    seeds = _seeds()
    assert len({a.info["temperature"] for a in md}) >= 2
    for atoms in md:
        assert np.abs(atoms.positions - seeds[atoms.info["seed_id"]].positions).max() > 1e-3


def test_relax_frames_lower_forces_along_the_path():
    frames = sample_configurations(  # a teacher given by name
        _seeds()[:1], "emt", n_configs=4, seed=1, kinds=["relax"], relax_frames=4, progress=False
    )
    assert len(frames) == 4
    steps = [a.info["relax_step"] for a in frames]
    assert steps == sorted(steps)
    fmax = []
    for atoms in frames:
        atoms.calc = load_teacher("emt").calculator
        fmax.append(np.abs(atoms.get_forces()).max())
    assert fmax[-1] < fmax[0]


def test_deterministic_for_a_seed(teacher, frames):
    again = sample_configurations(_seeds(), teacher, n_configs=40, seed=7, progress=False)
    assert _same(frames, again)
    other = sample_configurations(_seeds(), teacher, n_configs=40, seed=8, progress=False)
    assert not _same(frames, other)


def test_cheap_kinds_need_no_teacher_and_skip_inapplicable():
    frames = sample_configurations(_seeds(), None, n_configs=12, seed=0, progress=False)
    assert {a.info["kind"] for a in frames} == set(KINDS) - TEACHER_KINDS
    # one element only: no substitutions or swaps; 1-atom cells: no vacancies
    pure = [bulk("Cu", "fcc", a=3.61)]
    kinds = {a.info["kind"] for a in sample_configurations(pure, None, n_configs=6, seed=0, progress=False)}
    assert kinds == {"rattle", "large_rattle", "iso_strain", "axial_strain", "compress", "shear_strain"}


def test_options_and_keyword_overrides_sample_the_same_frames():
    cheap = ["rattle", "iso_strain", "shear_strain", "substitution", "vacancy"]
    options = SamplingOptions(rattle_amplitudes=[0.3], max_strain=0.01, max_shear=0.005, max_vacancies=1)

    def sample(**kwargs):
        return sample_configurations(_seeds(), None, n_configs=15, seed=2, kinds=cheap, progress=False, **kwargs)

    with_options = sample(options=options)
    assert _same(with_options, sample(**asdict(options)))  # a DistillConfig.sampling dict
    assert _same(with_options, sample(options=SamplingOptions(max_strain=0.01), rattle_amplitudes=(0.3,),
                                      max_shear=0.005, max_vacancies=1))  # overrides on top of options
    assert not _same(with_options, sample())
    assert {a.info["rattle"] for a in with_options if a.info["kind"] == "rattle"} == {0.3}
    assert all(abs(a.info["strain"]) <= 0.01 for a in with_options if a.info["kind"] == "iso_strain")
    assert all(a.info["n_vacancies"] == 1 for a in with_options if a.info["kind"] == "vacancy")


def test_sampling_options_are_frozen_tuples_and_survive_json():
    options = SamplingOptions(temperatures=[300, 600], max_memory_scaler=100.0)
    assert options.temperatures == (300, 600) and options.rattle_amplitudes == (0.02, 0.05, 0.1, 0.2)
    assert SamplingOptions(**json.loads(json.dumps(asdict(options)))) == options
    with pytest.raises(AttributeError):
        options.max_strain = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown sampling options \\['max_stain'\\]"):
        sample_configurations(_seeds(), None, n_configs=4, seed=0, max_stain=0.1)


def test_bad_kind_requests_raise():
    with pytest.raises(ValueError, match="unknown kinds"):
        sample_configurations(_seeds(), None, n_configs=4, seed=0, kinds=["melt"])
    with pytest.raises(ValueError, match="needs a teacher"):
        sample_configurations(_seeds(), None, n_configs=4, seed=0, kinds=["md"])
    with pytest.raises(ValueError, match="at least two elements"):
        sample_configurations([bulk("Cu", cubic=True)], None, n_configs=4, seed=0, kinds=["substitution"])


def test_seeds_from_files(tmp_path):
    path = tmp_path / "seeds.xyz"
    write(path, _seeds(), format="extxyz")
    frames = sample_configurations([path], None, n_configs=6, seed=0, kinds=["rattle"], progress=False)
    assert [a.info["seed_id"] for a in frames] == [0, 1, 2, 0, 1, 2]


def test_split_by_seed_keeps_seeds_apart():
    seeds = [bulk("Cu", "fcc", a=3.5 + 0.05 * i, cubic=True) for i in range(10)]
    frames = sample_configurations(seeds, None, n_configs=40, seed=0, kinds=["rattle", "iso_strain"], progress=False)
    train, val, test = split_by_seed(frames, seed=0)
    seed_sets = [{a.info["seed_id"] for a in split} for split in (train, val, test)]
    assert all(seed_sets)
    assert not (seed_sets[0] & seed_sets[1] or seed_sets[0] & seed_sets[2] or seed_sets[1] & seed_sets[2])
    assert [len(s) for s in seed_sets] == [8, 1, 1]
    assert len(train) + len(val) + len(test) == len(frames)
    assert split_by_seed(frames, seed=0) == (train, val, test)


def test_split_by_seed_with_three_seeds_gives_one_each(frames):
    splits = split_by_seed(frames, seed=3)
    assert sorted(len({a.info["seed_id"] for a in s}) for s in splits) == [1, 1, 1]


def test_split_by_seed_needs_three_seeds():
    frames = sample_configurations(_seeds()[:2], None, n_configs=8, seed=0, kinds=["rattle"], progress=False)
    with pytest.raises(ValueError, match="needs at least 3 distinct seed structures.*got 2"):
        split_by_seed(frames, seed=0)
    # with an empty test split two seeds are enough
    train, val, test = split_by_seed(frames, fractions=(0.5, 0.5, 0.0), seed=0)
    assert train and val and not test


def test_seeds_needed_follows_the_smallest_share():
    assert seeds_needed((0.8, 0.1, 0.1)) == 10
    assert seeds_needed((0.5, 0.5, 0.0)) == 2
    assert seeds_needed((0.6, 0.2, 0.2)) == 5


def test_split_frames_uses_whole_seeds_when_there_are_enough():
    seeds = [bulk("Cu", "fcc", a=3.5 + 0.05 * i, cubic=True) for i in range(10)]
    frames = sample_configurations(seeds, None, n_configs=40, seed=0, kinds=["rattle", "iso_strain"], progress=False)
    splits, how = split_frames(frames, seed=0)
    assert how.startswith("by seed structure: 10 seeds")
    assert splits == split_by_seed(frames, seed=0)


def test_split_frames_with_few_seeds_keeps_trajectories_whole_and_most_frames_for_training(frames):
    # three seeds (the user with few seeds): a seed split would train on a third of the frames
    splits, how = split_frames(frames, seed=0)
    assert how.startswith("by trajectory within seeds: only 3 seed structures")
    train, val, test = splits
    assert len(train) + len(val) + len(test) == len(frames)
    assert len(train) >= 0.6 * len(frames) and val and test
    ids = [{a.info["frame_id"] for a in s} for s in splits]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # no MD trajectory or relaxation path is shared between two splits
    for i, a in enumerate(splits[0]):
        group = frame_group(a, 0)
        if group[0] in ("md", "relax"):
            for other in (val, test):
                assert all(frame_group(b, 1) != group for b in other)
    # every kind with at least 5 frames reaches training
    assert {a.info["kind"] for a in train} == {a.info["kind"] for a in frames}
    assert split_frames(frames, seed=0) == (splits, how)


def test_frame_group_rules():
    md = Atoms("Cu", info={"seed_id": 2, "kind": "md", "temperature": 300.0, "md_step": 10})
    md2 = Atoms("Cu", info={"seed_id": 2, "kind": "md", "temperature": 300.0, "md_step": 20})
    hot = Atoms("Cu", info={"seed_id": 2, "kind": "md", "temperature": 900.0, "md_step": 10})
    relax = Atoms("Cu", info={"seed_id": 2, "kind": "relax", "relax_run": 1, "relax_step": 5})
    rattle = Atoms("Cu", info={"seed_id": 2, "kind": "rattle"})
    tagged = Atoms("Cu", info={"seed_id": 2, "kind": "md", "group": "round1-a", "md_step": 10})
    assert frame_group(md, 0) == frame_group(md2, 1) != frame_group(hot, 2)
    assert frame_group(relax, 3)[0] == "relax" and frame_group(rattle, 4) != frame_group(rattle, 5)
    assert frame_group(tagged, 6) == ("group", 2, "round1-a")


def test_deal_fills_every_split_near_its_share():
    split_of = _deal([1] * 20, (0.8, 0.1, 0.1))
    assert [split_of.count(i) for i in range(3)] == [16, 2, 2]
    # one big trajectory and a few single frames: the empty splits still get one group each
    split_of = _deal([30, 1, 1, 1], (0.8, 0.1, 0.1))
    assert split_of[0] == 0 and {1, 2} <= set(split_of)


def test_split_frames_refuses_too_few_groups_and_missing_seed_ids():
    one = [Atoms("Cu", info={"seed_id": 0, "kind": "md", "temperature": 300.0, "md_step": s}) for s in (10, 20)]
    with pytest.raises(ValueError, match="groups of correlated frames cannot fill 3 splits"):
        split_frames(one, seed=0)
    with pytest.raises(ValueError, match="frame 0 has no info\\['seed_id'\\]"):
        split_frames([Atoms("Cu")], seed=0)


def test_far_kinds_reach_the_repulsive_wall_and_can_be_turned_off():
    seeds = [bulk("Cu", "fcc", a=3.61, cubic=True)]
    frames = sample_configurations(seeds, None, n_configs=50, seed=0, progress=False)
    assert {a.info["kind"] for a in frames} >= FAR_KINDS
    compressed = [a for a in frames if a.info["kind"] == "compress"]
    assert min(a.info["compression"] for a in compressed) < 0.87  # stratified: one near the bottom
    nearest = min(a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)].min() for a in compressed)
    assert nearest < 0.87 * 3.61 / np.sqrt(2)  # nearest neighbours pushed well inside the fcc bond
    old = sample_configurations(seeds, None, n_configs=50, seed=0, progress=False, far_kinds=False)
    assert {a.info["kind"] for a in old} <= set(NEAR_EQUILIBRIUM_KINDS) and not {a.info["kind"] for a in old} & FAR_KINDS


def test_far_kinds_take_a_tenth_of_the_sample_by_default_and_an_even_share_when_asked():
    """A single-element seed set had 2 far kinds among 6 cheap ones: an even share gave them a
    third (a quarter with the teacher's kinds); ``far_share`` (default 0.1) caps them together."""
    seeds = [bulk("Cu", "fcc", a=3.61, cubic=True)]
    counts = Counter(a.info["kind"] for a in sample_configurations(seeds, None, n_configs=100, seed=0, progress=False))
    assert counts["large_rattle"] + counts["compress"] == 10 and counts["large_rattle"] == counts["compress"] == 5
    near = [k for k in counts if k not in FAR_KINDS]
    assert len(near) == 5 and all(counts[k] == 90 // 5 + (i < 90 % 5) for i, k in enumerate(near))
    even = Counter(a.info["kind"] for a in sample_configurations(
        seeds, None, n_configs=70, seed=0, progress=False, options=SamplingOptions(far_share=None)))
    assert set(even.values()) == {10}
    assert kind_quotas(["compress"], 7, 0.1) == {"compress": 7}  # only far kinds asked for: all of them
    assert kind_quotas(["rattle", "compress", "md"], 10, 0.0) == {"rattle": 5, "compress": 0, "md": 5}
    with pytest.raises(ValueError, match="far_share"):
        SamplingOptions(far_share=1.5)
