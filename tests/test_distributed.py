"""Relaxation and labelling on a local Ray cluster (2 CPUs), against the single-process runs.

The cluster starts once for the module (a few seconds to a minute on a loaded machine).
Each check compares with what one process computes on the same input: the same rows in
the same order, energies to 1e-8 eV, the same labelled file byte for byte.
"""

from __future__ import annotations

import ast
import csv
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from torchsim_distill.models.cu_au import rattled_alloy

ray = pytest.importorskip("ray", reason="the distributed extra (Ray) is not installed")

from torchsim_distill.distill.labeling import label_frames  # noqa: E402
from torchsim_distill.jobs import distributed  # noqa: E402
from torchsim_distill.jobs.chunk_store import ChunkStore  # noqa: E402
from torchsim_distill.jobs.distributed import relax_structures_on_ray  # noqa: E402
from torchsim_distill.jobs.relax import RelaxInputError, relax_structures  # noqa: E402

N_STRUCTURES = 24
OPTIONS = dict(fmax=0.05, max_steps=60, progress=False)


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 CPUs; its processes skip one slow optional import (``ray_env/``)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "ray_env"), saved or ""])
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    finally:  # Ray's processes have read it; this process goes on as before
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def structures(tmp_path_factory) -> Path:
    """A few dozen small random Cu–Au cells (4 and 8 atoms), in one file."""
    frames = [
        rattled_alloy(reps=(1 + i % 2, 1, 1), x_au=0.2 + 0.6 * (i % 5) / 4, seed=i, a=3.7 + 0.02 * (i % 7), rattle=0.08)
        for i in range(N_STRUCTURES)
    ]
    path = tmp_path_factory.mktemp("inputs") / "cu_au.extxyz"
    write(path, frames)
    return path


@pytest.fixture(scope="module")
def reference(structures, student_pt2, tmp_path_factory):
    """The single-process run's summary (no Ray)."""
    return relax_structures(structures, student_pt2, tmp_path_factory.mktemp("single") / "out", **OPTIONS)


def _rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_as(reference, out_dir: Path) -> None:
    """Rows in the same order; ids, formulas, steps, convergence equal; energies to 1e-8 eV."""
    ours, theirs = _rows(out_dir), _rows(reference.out_dir)
    assert [r["id"] for r in ours] == [r["id"] for r in theirs]  # every structure once, in input order
    for a, b in zip(ours, theirs, strict=True):
        for key in ("formula", "n_atoms", "steps", "converged"):
            assert a[key] == b[key], (a["id"], key)
        assert abs(float(a["energy"]) - float(b["energy"])) <= 1e-8, a["id"]
        assert float(a["volume"]) == pytest.approx(float(b["volume"]), abs=1e-6)
    relaxed, expected = read(out_dir / "relaxed.extxyz", ":"), read(reference.out_dir / "relaxed.extxyz", ":")
    assert [a.info["id"] for a in relaxed] == [a.info["id"] for a in expected]
    for a, b in zip(relaxed, expected, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-8)
    # the shard store is gone once the outputs are written
    assert not list(out_dir.parent.glob(f".{out_dir.name}.parts-*"))


def test_killed_actors_and_a_killed_run_lose_and_repeat_nothing(
    cluster, structures, student_pt2, reference, tmp_path, monkeypatch, capsys
):
    """One screening through everything that can go wrong, then resumed from the command line.

    Run 1 (Python API, 2 actors, shards of 2): once the first shard is stored, one actor
    is killed for good (the pool hands its shard to a fresh actor) and the other is
    killed and restarted by Ray (which replays its shard); after 6 stored shards the run
    itself dies. Run 2 (``torchsim-distill relax --ray local``) relaxes only the rest.
    The outputs are the single-process run's: every structure once, in input order,
    energies to 1e-8 eV. (One test, because each actor start costs tens of seconds here.)
    """
    from torchsim_distill.cli import main

    # the reference relaxes something: structures moved and took steps, so equal rows mean something
    assert {r.steps for r in reference.structures} != {0}
    out = tmp_path / "out"
    write_shard = ChunkStore.write
    written: list[list[int]] = [[], []]

    def dies_after_six(store, k, chunk):
        write_shard(store, k, chunk)
        written[0].append(k)
        if len(written[0]) == 6:
            raise KeyboardInterrupt  # as if the run were killed right after storing it

    monkeypatch.setattr(ChunkStore, "write", dies_after_six)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            relax_structures_on_ray(structures, student_pt2, out, ray="local", shard_size=2, n_actors=2, **OPTIONS)
        except BaseException as err:  # checked below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while not written[0]:
        assert thread.is_alive() and time.monotonic() < deadline, f"no shard was stored: {errors}"
        time.sleep(0.05)
    actors = sorted(n for n in ray.util.list_named_actors() if n.startswith("torchsim_distill.relax."))
    assert len(actors) == 2 and thread.is_alive(), "the run ended before its actors could be killed"
    ray.kill(ray.get_actor(actors[0]), no_restart=True)
    ray.kill(ray.get_actor(actors[1]), no_restart=False)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], KeyboardInterrupt), errors
    assert not (out / "results.csv").exists()
    store = next(tmp_path.glob(".out.parts-*"))
    (store / "chunk-0000099.pkl.partial").write_bytes(b"cut short")  # a write the kill cut short: no shard

    def record(store, k, chunk):
        write_shard(store, k, chunk)
        written[1].append(k)

    monkeypatch.setattr(ChunkStore, "write", record)
    args = ["relax", str(structures), "--model", str(student_pt2), "--out", str(out), "--fmax", str(OPTIONS["fmax"]),
            "--max-steps", str(OPTIONS["max_steps"]), "--quiet", "--ray", "local", "--shard-size", "2", "--actors", "2"]
    assert main(args) == 0, capsys.readouterr().err
    assert not set(written[0]) & set(written[1])  # nothing relaxed twice
    assert sorted(written[0] + written[1]) == list(range(N_STRUCTURES // 2))
    _assert_same_as(reference, out)


def _frames(n: int = 30):
    frames = [rattled_alloy(reps=(1, 1, 1 + i % 2), x_au=0.5, seed=100 + i, rattle=0.1) for i in range(n)]
    for i, atoms in enumerate(frames):
        atoms.info["frame_id"] = f"f{i:03d}"
    return frames


def test_teacher_actors_write_the_single_process_labels(cluster, tmp_path):
    """``distill --ray``'s labelling stage against ``label_frames`` in one process, resuming a
    store that an earlier run left with its first frames."""
    from torchsim_distill.distill.run import DistillConfig, label_stage

    frames = _frames()
    label_frames(frames, "emt", tmp_path / "single.xyz", batch_size=4, progress=False)
    config = DistillConfig(teacher="emt", structures=[], out=str(tmp_path / "run"), label_batch_size=4, ray="local")
    label_frames(frames[:9], "emt", tmp_path / "run" / "labels" / "train.xyz", batch_size=4, progress=False)
    paths = label_stage(config, tmp_path / "run", {"train": frames}, progress=False)
    # every frame once, in input order, with the labels one process computes: the same bytes
    assert paths["train"].read_bytes() == (tmp_path / "single.xyz").read_bytes()
    assert read(paths["train"], "-1").get_forces().any()  # labels are there, not zeros


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        fn(*args, **kwargs)
    return f"{type(err.value).__name__}: {err.value}"


def test_bad_input_fails_before_any_worker_starts(cluster, student_pt2, tmp_path):
    nickel = tmp_path / "ni.xyz"
    write(nickel, [rattled_alloy(seed=1), rattled_alloy(seed=2).copy()])
    frames = read(nickel, ":")
    frames[1][0].symbol = "Ni"
    write(nickel, frames)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("not a structure\n")
    for bad in (nickel, garbage, tmp_path / "missing.xyz"):
        single = _error(relax_structures, bad, student_pt2, tmp_path / "a", progress=False, on_error="stop")
        on_ray = _error(relax_structures_on_ray, bad, student_pt2, tmp_path / "b", progress=False, ray="local",
                        on_error="stop")
        assert on_ray == single
    assert "Ni" in _error(relax_structures_on_ray, nickel, student_pt2, tmp_path / "b", ray="local", on_error="stop")
    assert issubclass(RelaxInputError, ValueError)
    # an unknown teacher: load_teacher's error, before the store is touched
    single = _error(label_frames, _frames(2), "no-such-teacher", tmp_path / "l1.xyz", progress=False)
    assert _error(label_frames, _frames(2), "no-such-teacher", tmp_path / "l2.xyz", progress=False, ray="local") == single
    assert not (tmp_path / "l2.xyz").exists()
    # a calculator object cannot be sent to the actors to load
    from torchsim_distill.jobs.relax import load_model

    assert "file path" in _error(relax_structures_on_ray, nickel, load_model(student_pt2), tmp_path / "c", ray="local")
    assert not [n for n in ray.util.list_named_actors() if n.startswith("torchsim_distill.")]
    assert not list(tmp_path.glob(".*parts-*")) and not (tmp_path / "b").exists()


def test_without_ray_installed_the_error_names_the_extra(student_pt2, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` now fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'torchsim_distill\[distributed\]'"):
        relax_structures_on_ray(tmp_path / "missing.xyz", student_pt2, tmp_path / "out", ray="local")
    with pytest.raises(ImportError, match="distributed"):
        label_frames(_frames(2), "emt", tmp_path / "labels.xyz", ray="local")
    assert not (tmp_path / "labels.xyz").exists()


def test_the_cli_reports_bad_input_on_ray_in_the_same_line(cluster, student_pt2, tmp_path, capsys):
    from torchsim_distill.cli import main

    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("not a structure\n")
    bad = ["relax", str(garbage), "--model", str(student_pt2), "--out", str(tmp_path / "x"), "--quiet", "--on-error", "stop"]
    capsys.readouterr()
    assert main(bad) == 1
    single = capsys.readouterr().err
    assert main(bad + ["--ray", "local"]) == 1
    assert capsys.readouterr().err == single and "cannot read structure 0" in single


def test_ray_is_imported_only_inside_functions():
    """Without --ray nothing imports Ray: no module of the package imports it at load time."""
    package = Path(distributed.__file__).resolve().parents[1]
    top_level = []
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only (not inside functions)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            top_level += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "ray"]
    assert not top_level, top_level
    # and the check sees function-local imports of Ray where they are
    assert "import ray" in (package / "utils" / "ray_pool.py").read_text()
