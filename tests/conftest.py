"""Session fixtures: one tiny Cu–Au student, trained on EMT and compiled once per session.

Training (~15 s) and AOTInductor compilation (~60 s on CPU) are cached under
``$TORCHSIM_DISTILL_CACHE`` (default ``~/.cache/torchsim_distill``), so only the
first session on a machine pays for them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

torch.set_default_dtype(torch.float64)
# one thread: small-system tests run 20-150x slower with two threads on a busy 2-core machine
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per core, at most four. Each worker runs one torch thread (above);
    the slow files (training, nequip-compile, notebooks) are few, so more workers add memory
    (~2 GB each), not speed. Session fixtures are computed once: the caches they fill are
    locked per key across processes."""
    return max(1, min(4, os.cpu_count() or 1))


#: Test files that take minutes on a cold cache, longest first (measured on the project's 2-core
#: VM, cold cache, 2 workers). ``--dist loadfile`` hands files to workers in collection order
#: (pyproject's addopts turn off xdist's reordering by test count, which put the longest file,
#: with 6 tests, behind dozens of quick files and so last): the long files start first and the
#: quick ones fill in around them. The rounds file trains and compiles its own students, so the
#: other worker meanwhile builds the session student for the files after it without waiting.
SLOW_FIRST = (
    "test_distill_rounds.py",  # an on-policy distillation killed and resumed: six nequip-compiles
    "test_inputs_and_errors.py",  # builds the session student (batch and ase targets) first
    "test_budget.py",  # a 6-minute budgeted distillation, killed and resumed
    "test_notebook_high_throughput_screening.py",  # the default student's committee, SevenNet-0 relaxations
    "test_distributed.py",  # a Ray cluster and its actors
    "test_committee.py",  # a second student, trained and compiled
    "test_distill.py",  # a distillation through the CLI
    "test_acceptance.py",
    "test_precision.py",  # a float32 student, trained and compiled
    "test_notebook_distill_your_own.py",  # a distillation with its own compile
    "test_relax.py",  # the default student on the command line
)


def pytest_collection_modifyitems(config, items) -> None:
    """Put the files of :data:`SLOW_FIRST` first, in its order; the rest keep theirs."""
    rank = {name: k for k, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def student_ckpt() -> Path:
    from torchsim_distill.bench.toy import toy_student

    return toy_student(size="tiny", n_train=40, n_val=8, max_epochs=10)


@pytest.fixture(scope="session")
def student_pt2(student_ckpt: Path) -> Path:
    from torchsim_distill.compile import cached_compile

    return cached_compile(student_ckpt, device="cpu", target="batch")


@pytest.fixture(scope="session")
def calc(student_pt2: Path):
    """A shared calculator without skin (tests that change settings build their own)."""
    from torchsim_distill import DistilledTorchSimCalc

    return DistilledTorchSimCalc.from_compiled_model(student_pt2, chemical_species_to_atom_type_map=True)


@pytest.fixture(scope="session")
def eager_calc(student_ckpt: Path):
    """nequip's own ASE calculator on the eager (uncompiled) model: the independent reference."""
    from nequip.integrations.ase import NequIPCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NequIPCalculator._from_saved_model(str(student_ckpt), chemical_species_to_atom_type_map=True)


@pytest.fixture(scope="session")
def student_ase_pt2(student_ckpt: Path) -> Path:
    """The same student compiled for nequip's single-system ``ase`` target."""
    from torchsim_distill.compile import cached_compile

    return cached_compile(student_ckpt, device="cpu", target="ase")


def _serve(model, exact: bool):
    import threading

    from torchsim_distill.jobs.serve import KuspServer, load_served_model

    server = KuspServer(load_served_model(model, exact=exact), port=0, client_timeout=5.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="session")
def kusp_server(student_ckpt: Path, student_pt2: Path):
    """The tiny student served over KUSP on a free loopback port, in a thread, for the session
    (folding periodic clusters onto their cell; ``student_pt2`` compiles it first)."""
    server, thread = _serve(student_ckpt, exact=False)
    yield server
    server.close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def kusp_server_exact(student_ckpt: Path):
    """The same, every request on the exact route (``serve --exact``)."""
    server, thread = _serve(student_ckpt, exact=True)
    yield server
    server.close()
    thread.join(timeout=5)
