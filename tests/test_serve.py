"""The KUSP server without KIM: exact energies and forces for padded clusters, bad requests survived.

Clients here speak the wire format of KUSP's portable model (``jobs.kusp_protocol``); the
reference is the compiled student on the periodic cell (``calc``), an independent route
(AOTInductor, periodic neighbor list, forces of the total energy).
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from torchsim_distill.jobs.kusp_protocol import call, encode_request
from torchsim_distill.models.cu_au import rattled_alloy


def padded_cluster(atoms, cut: float):
    """KIM's view of a periodic orthorhombic cell: the cell's atoms (contributing) and every
    periodic image within ``cut`` Å of the cell (padding); ``owner`` maps each to its atom."""
    lengths, pos = np.diag(atoms.cell.array), atoms.get_positions(wrap=True)
    reach = [int(np.ceil(cut / length)) for length in lengths]
    blocks = []
    for shift in np.ndindex(*(2 * r + 1 for r in reach)):
        shift = np.array(shift) - reach
        p = pos + shift * lengths
        outside = np.maximum(np.maximum(-p, p - lengths), 0.0)
        keep = np.linalg.norm(outside, axis=1) <= cut
        blocks.append((p[keep], np.flatnonzero(keep), np.full(keep.sum(), not shift.any())))
    positions, owner, contributing = (np.concatenate(x) for x in zip(*blocks, strict=True))
    return positions, owner, contributing


def reference(calc, atoms, pbc: bool, stress: bool = False):
    n = len(atoms)
    out = calc.evaluate(torch.tensor(atoms.get_positions(wrap=pbc)), torch.tensor(atoms.numbers),
                        torch.tensor(atoms.cell.array)[None], torch.zeros(n, dtype=torch.long), pbc)
    result = float(out["energy"][0]), out["forces"].numpy()
    return (*result, out["stress"][0].numpy()) if stress else result


def route_taken(server, route: str, call):
    """``call()``'s result, asserting the server answered it on ``route``."""
    before = dict(server.model.routes)
    result = call()
    after = server.model.routes
    assert {k: after[k] - before[k] for k in after} == {k: int(k == route) for k in after}
    return result


def codes(server, symbols) -> np.ndarray:
    return np.array([server.model.type_names.index(s) for s in symbols], dtype=np.int32)


def test_influence_distance_is_layers_times_r_max(kusp_server, tmp_path):
    model = kusp_server.model
    assert model.num_layers == 2  # the tiny preset's interaction layers
    assert model.influence_distance == pytest.approx(2 * model.r_max)
    config = yaml.safe_load(kusp_server.write_config(tmp_path / "kusp.yaml").read_text())
    # the released portable model reads server + global, the newer one protocol + server + model
    assert config["protocol"] == "ip"
    assert config["server"] == {"host": "127.0.0.1", "port": kusp_server.port}
    assert config["global"] == {"influence_distance": model.influence_distance, "elements": model.type_names}
    assert config["model"] == {"influence_distance": model.influence_distance, "species": model.type_names}


@pytest.mark.parametrize("route", ["folded", "exact"])
@pytest.mark.parametrize("reps", [(2, 2, 2), (3, 2, 2)])
def test_padded_periodic_cell_equals_compiled_student(request, calc, reps, route):
    server = request.getfixturevalue("kusp_server" if route == "folded" else "kusp_server_exact")
    atoms = rattled_alloy(reps, seed=sum(reps))
    e_ref, f_ref, s_ref = reference(calc, atoms, pbc=True, stress=True)
    # padding beyond the influence distance (as LAMMPS's skin adds) must change nothing
    positions, owner, contributing = padded_cluster(atoms, server.model.influence_distance + 1.0)
    assert (~contributing).sum() > 5 * len(atoms)
    species = codes(server, np.array(atoms.get_chemical_symbols())[owner])
    energy, forces = route_taken(server, route, lambda: call(server.host, server.port, species, positions, contributing))
    folded = np.zeros_like(f_ref)
    np.add.at(folded, owner, forces)  # padding forces belong to the atoms they are images of
    assert energy == pytest.approx(e_ref, abs=1e-9)
    np.testing.assert_allclose(folded, f_ref, atol=1e-9)
    # LAMMPS's virial, Σ x ⊗ f over every atom it holds, padding included, is the cell's -σV:
    # the exact route's padding forces give it as derivatives, the folded route's carry it
    virial = positions.T @ forces
    np.testing.assert_allclose(virial, -s_ref * atoms.get_volume(), atol=1e-8)
    if route == "folded":
        assert np.count_nonzero(np.abs(forces[~contributing]).sum(axis=1)) <= 3  # the carriers


def test_too_little_padding_is_wrong(kusp_server_exact, calc):
    """The check above can fail: padding to r_max only (one layer's reach) misses the second layer."""
    server = kusp_server_exact
    atoms = rattled_alloy((2, 2, 2), seed=4)
    e_ref, _ = reference(calc, atoms, pbc=True)
    positions, owner, contributing = padded_cluster(atoms, server.model.r_max)
    energy, _ = call(server.host, server.port, codes(server, np.array(atoms.get_chemical_symbols())[owner]),
                     positions, contributing)
    assert abs(energy - e_ref) > 1e-4


@pytest.mark.parametrize("route", ["isolated", "exact"])
def test_cluster_without_padding_equals_compiled_student(request, calc, route):
    server = request.getfixturevalue("kusp_server" if route == "isolated" else "kusp_server_exact")
    atoms = rattled_alloy((2, 2, 1), seed=7)
    atoms.pbc = False
    e_ref, f_ref = reference(calc, atoms, pbc=False)
    n = len(atoms)
    energy, forces = route_taken(server, route, lambda: call(
        server.host, server.port, codes(server, atoms.get_chemical_symbols()), atoms.positions, np.ones(n, dtype=bool)))
    assert energy == pytest.approx(e_ref, abs=1e-9)
    np.testing.assert_allclose(forces, f_ref, atol=1e-9)


def test_clusters_that_are_not_one_cell_take_the_exact_route(kusp_server, kusp_server_exact, calc):
    """Ghosts from another MPI rank (here: half a periodic cell is contributing, the other half
    and every image is padding) and a perfect crystal (whose owners are ambiguous) are not
    folded; the folded server answers them as the exact one does."""
    server = kusp_server
    atoms = rattled_alloy((3, 2, 2), seed=5)
    positions, owner, contributing = padded_cluster(atoms, server.model.influence_distance + 1.0)
    half = contributing & (positions[:, 0] < atoms.cell[0, 0] / 2)
    species = codes(server, np.array(atoms.get_chemical_symbols())[owner])
    energy, forces = route_taken(server, "exact", lambda: call(server.host, server.port, species, positions, half))
    e_exact, f_exact = call(kusp_server_exact.host, kusp_server_exact.port, species, positions, half)
    assert energy == pytest.approx(e_exact, abs=1e-9)
    np.testing.assert_allclose(forces, f_exact, atol=1e-9)

    perfect = rattled_alloy((2, 2, 2), rattle=0.0)
    perfect.set_chemical_symbols(["Cu"] * len(perfect))
    e_ref, f_ref, s_ref = reference(calc, perfect, pbc=True, stress=True)
    positions, owner, contributing = padded_cluster(perfect, server.model.influence_distance + 1.0)
    species = codes(server, np.array(perfect.get_chemical_symbols())[owner])
    server.model.folder.last = None  # a first look, as at the start of a run
    energy, forces = route_taken(server, "exact", lambda: call(server.host, server.port, species, positions, contributing))
    assert energy == pytest.approx(e_ref, abs=1e-9)
    np.testing.assert_allclose(positions.T @ forces, -s_ref * perfect.get_volume(), atol=1e-8)


def _raw(server, payload: bytes) -> bytes:
    """Send raw bytes, half-close, and return whatever the server answers before closing
    (a server that closed first, possibly resetting the connection, answered nothing)."""
    chunks = []
    with socket.create_connection((server.host, server.port), timeout=10) as conn:
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError, OSError):
            pass
    return b"".join(chunks)


GOOD = (np.array([0, 1, 0], dtype=np.int32), np.array([[0.0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]]), np.ones(3, dtype=bool))


@pytest.mark.parametrize(("payload", "message"), [
    (struct.pack("=ii", 4, -5), "atom count -5 out of range"),
    (struct.pack("=ii", 4, 2_000_000_000), "atom count 2000000000 out of range"),
    (struct.pack("=ii", 8, 3), "integer width 8 not supported"),
    (encode_request(*GOOD)[:50], "truncated frame"),
    (b"\x04\x00", "truncated frame"),
    (encode_request(np.array([0, 7, 0], dtype=np.int32), *GOOD[1:]), "species code 7 at atom 1 out of range"),
    (encode_request(np.array([0, -1, 0], dtype=np.int32), *GOOD[1:]), "species code -1 at atom 1 out of range"),
    (encode_request(GOOD[0], np.array([[0.0, 0, 0], [np.nan, 0, 0], [0, 2.5, 0]]), GOOD[2]), "non-finite position"),
    (encode_request(GOOD[0], GOOD[1], np.array([1, 2, 1])), "contributing flag 2 at atom 1"),
])
def test_bad_request_closes_its_connection_and_the_next_client_is_served(kusp_server, caplog, payload, message):
    caplog.set_level(logging.ERROR, logger="torchsim_distill.jobs.serve")
    rejected = kusp_server.rejected
    assert _raw(kusp_server, payload) == b""  # no reply: the connection was closed
    assert message in caplog.text
    assert kusp_server.rejected == rejected + 1
    energy, forces = call(kusp_server.host, kusp_server.port, *GOOD)
    assert np.isfinite(energy) and forces.shape == (3, 3)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)  # no padding: momentum conserved


def test_client_that_stalls_is_dropped(kusp_server, caplog):
    caplog.set_level(logging.ERROR, logger="torchsim_distill.jobs.serve")
    with socket.create_connection((kusp_server.host, kusp_server.port)) as conn:
        conn.sendall(struct.pack("=i", 4))  # then nothing, for longer than the client timeout
        conn.settimeout(15)
        assert conn.recv(1) == b""
    assert "dropped" in caplog.text
    assert call(kusp_server.host, kusp_server.port, *GOOD)[1].shape == (3, 3)


def test_one_connection_may_carry_many_requests(kusp_server):
    with socket.create_connection((kusp_server.host, kusp_server.port), timeout=10) as conn:
        for _ in range(3):
            conn.sendall(encode_request(*GOOD))
            data = b""
            while len(data) < 8 * 10:
                data += conn.recv(80 - len(data))
    assert np.isfinite(struct.unpack("=d", data[:8])[0])


def test_compiled_student_is_refused_with_the_reason(student_pt2):
    from torchsim_distill.jobs.serve import load_served_model

    with pytest.raises(ValueError, match="contributing atoms only: serve the package"):
        load_served_model(student_pt2)
    with pytest.raises(ValueError, match="is not a known student and no such file exists"):
        load_served_model("no_such_student.nequip.zip")


def test_cli_names_a_bad_model_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torchsim_distill.cli", "serve", str(tmp_path / "x.nequip.zip"),
                           "--config-out", str(tmp_path / "k.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "torchsim-distill serve: error: model" in proc.stderr and not (tmp_path / "k.yaml").exists()


def test_a_student_that_cannot_be_compiled_is_served_on_the_exact_route(student_ckpt, monkeypatch, caplog):
    from torchsim_distill.jobs.serve import load_served_model
    from torchsim_distill.models import registry

    def no_compile(*args, **kwargs):
        raise FileNotFoundError("training data gone")

    monkeypatch.setattr(registry, "load_student", no_compile)
    with caplog.at_level(logging.WARNING, logger="torchsim_distill.jobs.serve"):
        model = load_served_model(student_ckpt)
    assert model.periodic is None and "every request takes the exact route" in caplog.text
    atoms = rattled_alloy((1, 1, 1), seed=2)
    positions, owner, contributing = padded_cluster(atoms, model.influence_distance)
    model.compute(np.array([model.type_names.index(s) for s in np.array(atoms.get_chemical_symbols())[owner]]),
                  positions, contributing)
    assert model.last_route == "exact"


def test_a_fold_that_fails_falls_back_to_the_exact_route(kusp_server, calc, monkeypatch, caplog):
    def broken(*args):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(kusp_server.model, "folder", broken)
    atoms = rattled_alloy((2, 2, 2), seed=21)
    e_ref, _ = reference(calc, atoms, pbc=True)
    positions, owner, contributing = padded_cluster(atoms, kusp_server.model.influence_distance)
    species = codes(kusp_server, np.array(atoms.get_chemical_symbols())[owner])
    with caplog.at_level(logging.WARNING, logger="torchsim_distill.jobs.serve"):
        energy, _ = route_taken(kusp_server, "exact", lambda: call(kusp_server.host, kusp_server.port, species,
                                                                   positions, contributing))
    assert energy == pytest.approx(e_ref, abs=1e-9) and "could not fold" in caplog.text


# -- D3 on top (serve --dispersion d3bj) -----------------------------------------------------------


def test_served_with_d3_equals_the_student_with_d3(student_ckpt, student_pt2, calc):
    """``serve --dispersion d3bj --functional pbe``: a periodic cell folded, and an isolated
    cluster, get the student + D3 of the calculator with ``dispersion=`` (itself checked against
    s-dftd3 in test_dispersion.py); LAMMPS's virial is that sum's; a cluster the exact route
    would take is refused rather than answered without D3."""
    pytest.importorskip("tad_dftd3")
    from torchsim_distill.jobs.serve import load_served_model
    from torchsim_distill.models.registry import load_student

    served = load_served_model(student_ckpt, dispersion="d3bj", functional="pbe")
    with_d3 = load_student(student_pt2, skin=None, dispersion="d3bj", functional="pbe")

    def species(atoms, owner=None):
        symbols = np.array(atoms.get_chemical_symbols())
        return np.array([served.type_names.index(s) for s in (symbols if owner is None else symbols[owner])])

    atoms = rattled_alloy((2, 2, 2), seed=13)
    e_ref, f_ref, s_ref = reference(with_d3, atoms, pbc=True, stress=True)
    e_plain, _ = reference(calc, atoms, pbc=True)
    assert (e_plain - e_ref) / len(atoms) > 0.05  # D3 is there: ~0.1-0.3 eV/atom of binding in dense Cu-Au
    positions, owner, contributing = padded_cluster(atoms, served.influence_distance + 1.0)
    energy, forces = served.compute(species(atoms, owner), positions, contributing)
    assert served.last_route == "folded"
    folded = np.zeros_like(f_ref)
    np.add.at(folded, owner, forces)
    # to D3's float32 kernel sums (the fold's cell differs from the cell's by rounding)
    assert energy == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(folded, f_ref, atol=1e-6)
    np.testing.assert_allclose(positions.T @ forces, -s_ref * atoms.get_volume(), atol=1e-5)

    cluster = rattled_alloy((2, 2, 1), seed=7)
    cluster.pbc = False
    e_ref, f_ref = reference(with_d3, cluster, pbc=False)
    energy, forces = served.compute(species(cluster), cluster.positions, np.ones(len(cluster), dtype=bool))
    assert served.last_route == "isolated"
    assert energy == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(forces, f_ref, atol=1e-6)

    half = contributing & (positions[:, 0] < atoms.cell[0, 0] / 2)  # ghosts of another MPI rank
    with pytest.raises(ValueError, match=r"not one periodic cell .* only the folded and isolated routes can add d3bj"):
        served.compute(species(atoms, owner), positions, half)


def test_serve_refuses_d3_where_it_cannot_add_it(student_ckpt, tmp_path):
    from torchsim_distill.jobs.serve import load_served_model
    from torchsim_distill.runtime.dispersion import UnknownDispersionError

    with pytest.raises(ValueError, match="--exact cannot serve d3bj"):
        load_served_model(student_ckpt, exact=True, dispersion="d3bj")
    with pytest.raises(UnknownDispersionError, match="known: d3bj"):
        load_served_model(student_ckpt, dispersion="d4")
    proc = subprocess.run([sys.executable, "-m", "torchsim_distill.cli", "serve", str(student_ckpt), "--dispersion",
                           "d4", "--config-out", str(tmp_path / "k.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'd4' (choose from d3bj)" in proc.stderr.replace("'d3bj'", "d3bj")
