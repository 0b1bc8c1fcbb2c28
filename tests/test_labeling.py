"""Batched, resumable teacher labeling into extxyz."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

from torchsim_distill.distill.labeling import label_frames, labelled_frame_ids
from torchsim_distill.distill.sampling import sample_configurations
from torchsim_distill.models.cu_au import lattice_constant, phase

REPO = Path(__file__).resolve().parents[1]


def _frames(n: int = 24, seed: int = 0) -> list[Atoms]:
    """Cheap-kind Cu–Au frames (no teacher needed to make them): 2–8 atoms, and the
    vacancy frames cut in the acceptance suite's vacancy cell (31–63 atoms)."""
    cu, au = phase("Cu", (1, 1, 1)), phase("Au", (1, 1, 1))
    cu_au = bulk("Cu", "fcc", a=lattice_constant(0.5), cubic=True).repeat((2, 1, 1))
    cu_au.symbols[[0, 3, 5]] = "Au"
    return sample_configurations([cu, au, cu_au], None, n_configs=n, seed=seed, progress=False)


def _assert_labels_match_emt(path: Path, frames: list[Atoms]) -> None:
    """Every frame id exactly once in ``path``, labelled as EMT labels the frame itself."""
    written = read(path, index=":", format="extxyz")
    ids = [str(a.info["frame_id"]) for a in written]
    assert Counter(ids) == Counter(str(a.info["frame_id"]) for a in frames)
    by_id = {str(a.info["frame_id"]): a for a in frames}
    for atoms in written:
        ref = by_id[str(atoms.info["frame_id"])].copy()
        assert np.array_equal(atoms.numbers, ref.numbers)
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-8)
        ref.calc = EMT()
        np.testing.assert_allclose(atoms.get_potential_energy(), ref.get_potential_energy(), atol=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-6)
        np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), atol=1e-8)
        np.testing.assert_allclose(atoms.calc.results["energies"], ref.get_potential_energies(), atol=1e-6)
        assert atoms.info["kind"] == ref.info["kind"] and atoms.info["seed_id"] == ref.info["seed_id"]


def test_labels_equal_emt_and_keep_order(tmp_path):
    frames = _frames()
    out = tmp_path / "labels.xyz"
    report = label_frames(frames, "emt", out, batch_size=5, progress=False)
    assert (report.n_labelled, report.n_skipped, report.truncated_bytes) == (len(frames), 0, 0)
    _assert_labels_match_emt(out, frames)
    assert labelled_frame_ids(out) == [a.info["frame_id"] for a in frames]


def test_memory_scaler_batching_gives_the_same_labels(tmp_path):
    frames = _frames()
    out = tmp_path / "labels.xyz"
    # EMT wrapper scales with n_atoms: the largest frame goes alone, the small ones are packed
    largest = max(len(a) for a in frames)
    label_frames(frames, "emt", out, max_memory_scaler=largest, progress=False)
    _assert_labels_match_emt(out, frames)


def test_a_frame_over_the_memory_limit_is_named(tmp_path):
    frames = _frames()
    largest = max(frames, key=len)
    with pytest.raises(ValueError, match=f"{largest.info['frame_id']}.*{len(largest)} atoms.*max_memory_scaler"):
        label_frames(frames, "emt", tmp_path / "labels.xyz", max_memory_scaler=len(largest) - 1, progress=False)


def test_nequip_ase_dataset_reads_labels(tmp_path):
    from nequip.data import AtomicDataDict
    from nequip.data.dataset import ASEDataset

    frames = _frames(8)
    out = tmp_path / "labels.xyz"
    label_frames(frames, "emt", out, batch_size=4, progress=False)
    dataset = ASEDataset(str(out), ase_args={"format": "extxyz"})
    assert len(dataset) == len(frames)
    data = dataset[0]
    ref = frames[0].copy()
    ref.calc = EMT()
    assert float(data[AtomicDataDict.TOTAL_ENERGY_KEY]) == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(np.asarray(data[AtomicDataDict.FORCE_KEY]), ref.get_forces(), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(data[AtomicDataDict.STRESS_KEY]).reshape(3, 3), ref.get_stress(voigt=False), atol=1e-8
    )
    assert AtomicDataDict.PER_ATOM_ENERGY_KEY in data


def test_rerun_labels_nothing_new(tmp_path):
    frames = _frames(8)
    out = tmp_path / "labels.xyz"
    label_frames(frames, "emt", out, batch_size=3, progress=False)
    before = out.read_bytes()
    report = label_frames(frames, "emt", out, batch_size=3, progress=False)
    assert (report.n_labelled, report.n_skipped) == (0, 8)
    assert out.read_bytes() == before


_KILLED_SCRIPT = """
import sys, time
from ase.calculators.emt import EMT
from ase.io import read
from torchsim_distill.distill.labeling import label_frames

class SlowEMT(EMT):
    # slow enough that the parent can kill us part-way through
    def calculate(self, *args, **kwargs):
        time.sleep(0.15)
        super().calculate(*args, **kwargs)

frames = read(sys.argv[1], index=":", format="extxyz")
label_frames(frames, SlowEMT(), sys.argv[2], batch_size=2, progress=False)
"""


def test_resume_after_sigkill(tmp_path):
    frames = _frames(30)
    frames_file, out, script = tmp_path / "frames.xyz", tmp_path / "labels.xyz", tmp_path / "label.py"
    write(frames_file, frames, format="extxyz")
    frames = read(frames_file, index=":", format="extxyz")  # exactly what the child labels
    script.write_text(textwrap.dedent(_KILLED_SCRIPT))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(frames_file), str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while len(labelled_frame_ids(out)) < 4:
            assert proc.poll() is None, f"labeling child exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "child wrote no frames within 300 s (its first write comes after its imports and first labels)"
            time.sleep(0.05)
        assert proc.poll() is None, "child finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = labelled_frame_ids(out)
    assert 4 <= len(done) < len(frames)

    report = label_frames(frames, "emt", out, batch_size=4, progress=False)
    assert report.n_skipped == len(done)
    assert report.n_labelled == len(frames) - len(done)
    _assert_labels_match_emt(out, frames)


def _labelled_text(frames: list[Atoms]) -> str:
    labelled = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.get_stress()
        labelled.append(atoms)
    buffer = io.StringIO()
    write(buffer, labelled, format="extxyz")
    return buffer.getvalue()


@pytest.mark.parametrize("cut", ["in_count_line", "after_comment_line", "mid_atom_line", "before_last_newline"])
def test_truncated_trailing_frame_is_repaired(tmp_path, cut):
    frames = _frames(10)
    out = tmp_path / "labels.xyz"
    label_frames(frames[:6], "emt", out, batch_size=6, progress=False)
    complete = out.read_bytes()
    text = _labelled_text(frames[6:7])
    lines = text.splitlines(keepends=True)
    partial = {
        "in_count_line": lines[0][:1],
        "after_comment_line": "".join(lines[:2]),
        "mid_atom_line": "".join(lines[:3]) + lines[3][:20],
        "before_last_newline": text[:-1],
    }[cut]
    with open(out, "a") as f:
        f.write(partial)
    assert labelled_frame_ids(out) == [a.info["frame_id"] for a in frames[:6]]  # reading ignores the tail

    with pytest.warns(UserWarning, match="removing .* bytes after the last complete frame"):
        report = label_frames(frames, "emt", out, batch_size=3, progress=False)
    assert report.truncated_bytes == len(partial.encode())
    assert (report.n_skipped, report.n_labelled) == (6, 4)
    assert out.read_bytes().startswith(complete)
    _assert_labels_match_emt(out, frames)


def test_frames_need_unique_ids(tmp_path):
    frames = _frames(4)
    del frames[1].info["frame_id"]
    with pytest.raises(ValueError, match=r"frame 1 has no info\['frame_id'\]"):
        label_frames(frames, "emt", tmp_path / "a.xyz", progress=False)
    frames = _frames(4)
    frames[2].info["frame_id"] = frames[0].info["frame_id"]
    with pytest.raises(ValueError, match="frame ids repeat"):
        label_frames(frames, "emt", tmp_path / "b.xyz", progress=False)


def test_numeric_looking_ids_resume_without_duplicates(tmp_path):
    # "007" is written bare and reads back from extxyz as the integer 7
    frames = _frames(4)
    for k, atoms in enumerate(frames):
        atoms.info["frame_id"] = f"00{k}"
    out = tmp_path / "labels.xyz"
    label_frames(frames[:2], "emt", out, batch_size=2, progress=False)
    report = label_frames(frames, "emt", out, batch_size=2, progress=False)
    assert (report.n_skipped, report.n_labelled) == (2, 2)
    assert len(read(out, index=":")) == 4


def test_option_and_file_errors(tmp_path):
    frames = _frames(4)
    with pytest.raises(ValueError, match="not both"):
        label_frames(frames, "emt", tmp_path / "a.xyz", batch_size=2, max_memory_scaler=10, progress=False)
    foreign = tmp_path / "foreign.xyz"
    write(foreign, [bulk("Cu", cubic=True)], format="extxyz")
    with pytest.raises(ValueError, match="frame without frame_id"):
        label_frames(frames, "emt", foreign, progress=False)
