"""The student through the real KIM API: KUSP's portable model, Debian's LAMMPS and ASE's KIM calculator.

Needs what ``.ci/run`` installs: Debian's ``lammps`` (built with KIM) and ``libkim-api-dev``,
KUSP's portable model ``KUSP__MO_000000000000_000`` in the KIM user collection, and ``kimpy``.
Without them these tests skip on a developer's machine and fail in CI (``CI`` set), which
installs them.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk

from torchsim_distill.models.cu_au import rattled_alloy

PORTABLE_MODEL = "KUSP__MO_000000000000_000"


def _missing() -> str | None:
    """What of the KIM set-up is missing here, or None."""
    if shutil.which("lmp") is None:
        return "LAMMPS (`lmp`, Debian package lammps)"
    if " KIM " not in subprocess.run(["lmp", "-h"], capture_output=True, text=True).stdout.replace("\n", " "):
        return "the KIM package in LAMMPS (`lmp -h` does not list it)"
    if shutil.which("kim-api-collections-management") is None:
        return "the KIM API (Debian package libkim-api-dev)"
    listing = subprocess.run(["kim-api-collections-management", "list"], capture_output=True, text=True).stdout
    if PORTABLE_MODEL not in listing:
        return f"KUSP's portable model {PORTABLE_MODEL} in a KIM collection (see .ci/run)"
    if importlib.util.find_spec("kimpy") is None:
        return "kimpy (pip install kimpy, built against the KIM API)"
    return None


class Served:
    """``torchsim-distill serve`` in its own process (KIM calls from this process hold the GIL
    while they wait on the socket, so an in-process server thread would never answer)."""

    def __init__(self, model, workdir: Path, *options: str) -> None:
        self.config, self.log = workdir / "kusp_config.yaml", workdir / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchsim_distill.cli", "serve", str(model), "--port", "0",
             "--config-out", str(self.config), "--debug", *options],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + 600
        while not self.config.exists():  # written once the socket listens
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"the server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)
        self.type_names = yaml.safe_load(self.config.read_text())["model"]["species"]

    def requests(self, route: str = "") -> int:
        """Requests answered so far (the server logs each at debug level), on ``route`` if given."""
        return self.log.read_text().count(f" contributing, {route}" if route else " contributing, ")

    def wait_for_requests(self, more_than: int, route: str = "", timeout: float = 10.0) -> int:
        """:meth:`requests` once above ``more_than`` (the server logs a request after replying)."""
        deadline = time.monotonic() + timeout
        while (n := self.requests(route)) <= more_than and time.monotonic() < deadline:
            time.sleep(0.05)
        return n

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        self.proc.wait(timeout=60)
        return self.log.read_text()


def _start(student_ckpt, workdir: Path, *options: str) -> Served:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs the KIM set-up, but {missing} is missing")
        pytest.skip(f"{missing} not installed")
    return Served(student_ckpt, workdir, *options)


def _stop(server: Served) -> None:
    log = server.stop()
    assert server.proc.returncode == 0 and "stopped after" in log, log[-2000:]


@pytest.fixture(scope="module")
def served(student_ckpt, student_pt2, tmp_path_factory):
    """``serve`` as a user starts it (periodic cells folded); ``student_pt2``: compiled already."""
    server = _start(student_ckpt, tmp_path_factory.mktemp("kim"))
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def served_exact(student_ckpt, tmp_path_factory):
    """``serve --exact``: every request on the exact route."""
    server = _start(student_ckpt, tmp_path_factory.mktemp("kim_exact"), "--exact")
    yield server
    _stop(server)


def _kim_env(server: Served, monkeypatch, tmp_path) -> dict:
    """KUSP's portable model finds the server through its config file (and the KIM API writes
    its kim.log into the test's folder, not the checkout)."""
    monkeypatch.chdir(tmp_path)
    for key in ("KUSP_SERVER_CONFIG", "KUSP_CONFIG"):
        monkeypatch.setenv(key, str(server.config))
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def kim_env(served, monkeypatch, tmp_path):
    return _kim_env(served, monkeypatch, tmp_path)


def _reference(calc, atoms, stress: bool = False):
    from torchsim_distill import DistilledCalculator

    atoms = atoms.copy()
    atoms.calc = DistilledCalculator(calc)
    result = atoms.get_potential_energy(), atoms.get_forces()
    return (*result, atoms.get_stress(voigt=False)) if stress else result


LAMMPS_INPUT = """\
kim init {model} metal
read_data cell.data
kim interactions {species}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 600.0 4928459 mom yes rot yes
fix 1 all {ensemble}
timestep 0.001
compute virial all pressure NULL virial
thermo_style custom step pe ke etotal c_virial[1] c_virial[2] c_virial[3] c_virial[4] c_virial[5] c_virial[6] vol
thermo_modify format float %.12f
thermo 1
dump 1 all custom 100 forces.dump id x y z fx fy fz
dump_modify 1 format float %.14e sort id
run {steps}
"""
#: bar per eV/Å³ (LAMMPS's metal units give pressure in bar)
BAR = 1.602176634e6


def _thermo(log: str) -> np.ndarray:
    lines = log.split("Step PotEng KinEng TotEng")[1].split("\n", 1)[1].split("Loop time")[0].strip().splitlines()
    return np.array([[float(x) for x in line.split()] for line in lines])


def _lammps(server: Served, env: dict, tmp_path: Path, atoms, steps: int, ensemble: str = "nve", ranks: int = 1):
    """Run LAMMPS MD through KIM on ``atoms`` (on ``ranks`` MPI ranks); (thermo rows, step-0
    atoms as LAMMPS holds them, step-0 forces)."""
    from ase.io import write

    species = server.type_names
    write(tmp_path / "cell.data", atoms, format="lammps-data", specorder=species, masses=True)
    (tmp_path / "in.lmp").write_text(LAMMPS_INPUT.format(model=PORTABLE_MODEL, species=" ".join(species), steps=steps,
                                                            ensemble=ensemble))
    mpi = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] if ranks > 1 else []
    proc = subprocess.run([*mpi, "lmp", "-in", "in.lmp", "-log", "none"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    thermo = _thermo(proc.stdout)
    assert thermo[:, 0].tolist() == list(range(steps + 1))
    dump = np.loadtxt(tmp_path / "forces.dump", skiprows=9, max_rows=len(atoms))
    step0 = atoms.copy()
    step0.positions = dump[:, 1:4]  # as LAMMPS holds them (wrapped into the box)
    return thermo, step0, dump[:, 4:7]


def _assert_step0(calc, thermo, step0, forces) -> None:
    """Energy, forces and virial pressure of step 0 equal our calculator's."""
    energy, f_ref, stress = _reference(calc, step0, stress=True)
    assert thermo[0, 1] == pytest.approx(energy, abs=1e-6)
    np.testing.assert_allclose(forces, f_ref, atol=1e-5)
    # LAMMPS's virial pressure (xx yy zz xy xz yz), from Σ x ⊗ f over its atoms and ghosts
    voigt = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(thermo[0, 4:10], [-stress[i, j] * BAR for i, j in voigt], atol=1e-2)
    assert np.abs(thermo[0, 4:10]).max() > 100.0  # bar: a stressed cell, so the check can fail


def test_lammps_md_through_kim_equals_our_calculator(kim_env, served, calc, tmp_path):
    atoms = rattled_alloy((2, 2, 2), seed=11)
    before, folded = served.requests(), served.requests("folded")
    thermo, step0, forces = _lammps(served, kim_env, tmp_path, atoms, steps=100)
    assert served.wait_for_requests(before + 100) - before >= 101  # every force call went through our server
    assert served.requests("folded") - folded >= 100  # on the folded route (the first may search)
    _assert_step0(calc, thermo, step0, forces)

    # NVE: the total energy stays flat while potential and kinetic energy trade places
    pe, etot = thermo[:, 1], thermo[:, 3]
    assert np.ptp(pe) > 0.05
    assert np.ptp(etot) < 0.02 * np.ptp(pe)


def test_lammps_npt_folded_follows_the_cell_and_equals_the_exact_route(served, served_exact, calc, monkeypatch, tmp_path):
    """An NPT run changes the cell every step: the folded server follows it (and the barostat
    reads the virial the padding carries) step for step as the exact route computes it."""
    atoms, npt = rattled_alloy((2, 2, 2), seed=12), "npt temp 600.0 600.0 0.1 aniso 0.0 0.0 0.5"
    runs = {}
    for name, server in (("folded", served), ("exact", served_exact)):
        (tmp_path / name).mkdir()
        env = _kim_env(server, monkeypatch, tmp_path / name)
        before = server.requests(name)
        runs[name] = _lammps(server, env, tmp_path / name, atoms, steps=30, ensemble=npt)
        assert server.wait_for_requests(before + 30, name) - before >= 31  # every call on its route
    _assert_step0(calc, *runs["exact"])
    folded, exact = runs["folded"][0], runs["exact"][0]
    assert np.ptp(exact[:, 10]) > 1e-3 * exact[0, 10]  # the cell's volume moved
    np.testing.assert_allclose(folded[:, 10], exact[:, 10], rtol=1e-9)
    np.testing.assert_allclose(folded[:, 1], exact[:, 1], atol=1e-6)  # potential energy
    np.testing.assert_allclose(folded[:, 4:10], exact[:, 4:10], atol=0.05)  # virial pressure, bar


def test_lammps_on_two_mpi_ranks_takes_the_exact_route_and_equals_one_rank(served, kim_env, tmp_path):
    """On two ranks each rank's ghosts include the other rank's atoms: not one cell, so the
    folded server answers exactly, and the run is the one-rank run."""
    atoms = rattled_alloy((3, 2, 2), seed=14)  # 11.4 Å along x, split there between the ranks
    runs = {}
    for ranks in (1, 2):
        (tmp_path / str(ranks)).mkdir()
        exact = served.requests("exact")
        runs[ranks] = _lammps(served, kim_env, tmp_path / str(ranks), atoms, steps=5, ranks=ranks)[0]
        if ranks == 2:
            assert served.wait_for_requests(exact + 11, "exact") - exact >= 12  # 6 force calls × 2 ranks
    np.testing.assert_allclose(runs[2][:, 1], runs[1][:, 1], atol=1e-6)  # potential energy
    np.testing.assert_allclose(runs[2][:, 4:11], runs[1][:, 4:11], atol=0.05)  # virial pressure (bar), volume


@pytest.mark.parametrize("kind", ["cluster", "periodic", "triclinic"])
def test_ase_kim_calculator_equals_our_calculator(kim_env, served, calc, kind):
    from ase.calculators.kim import KIM

    atoms = rattled_alloy((2, 2, 2) if kind == "periodic" else (1, 1, 2), seed=13)
    if kind == "cluster":
        atoms.pbc = False
        atoms.center(vacuum=6.0)
    if kind == "triclinic":  # primitive fcc cells: 60° between the cell vectors
        atoms = bulk("Cu", "fcc", a=3.8).repeat((3, 2, 4))
        atoms.set_chemical_symbols(np.random.default_rng(13).choice(["Cu", "Au"], len(atoms)))
        atoms.rattle(0.05, seed=13)
    energy, forces = _reference(calc, atoms)
    kim_atoms = atoms.copy()
    kim_atoms.calc = KIM(PORTABLE_MODEL)
    route = "isolated" if kind == "cluster" else "folded"  # ASE pads a periodic cell with its images
    before = served.requests(route)
    assert kim_atoms.get_potential_energy() == pytest.approx(energy, abs=1e-6)
    np.testing.assert_allclose(kim_atoms.get_forces(), forces, atol=1e-5)
    assert served.wait_for_requests(before, route) > before
    del kim_atoms  # the KIM model's last log line goes to kim.log in the test's folder, not the checkout
    gc.collect()
