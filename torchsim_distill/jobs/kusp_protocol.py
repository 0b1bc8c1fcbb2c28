"""The KUSP wire format: what KUSP's KIM portable model sends and expects back, and its config file.

KUSP (KIM Utility for Serving Potentials, ``pip install kusp``) ships a KIM portable model,
``KUSP__MO_000000000000_000``, that forwards every KIM compute to a server over one TCP
connection, in native byte order (checked against the portable model's C++ source)::

    request:  int32 int_width (4) | int32 n | n × int32 species code | n × 3 float64 positions (Å)
              | n × int32 contributing flag (1: the atom's energy counts; 0: padding)
    reply:    float64 energy (eV) | n × 3 float64 forces (eV/Å)

Species codes are 0-based indices into the config's species list, not atomic numbers. No
cell is sent: periodic images arrive as padding atoms. The portable model reads the server's
address, species and influence distance from a YAML file: ``$KUSP_SERVER_CONFIG`` in KUSP's
released package (``server:`` and ``global:`` blocks), ``$KUSP_CONFIG`` in its newer one
(``protocol: ip``, ``server:`` and ``model:``). :func:`write_config` writes one file both read::

    req = read_request(conn)                 # raises ProtocolError naming what is wrong
    write_reply(conn, energy, forces)
    write_config("kusp_config.yaml", host="127.0.0.1", port=12345, species=["Au", "Cu"], influence_distance=10.0)
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The integer width every KIM build sends (C ``int``); the only one we accept.
INT_WIDTH = 4
#: Largest request accepted, in atoms: ~40 MB of input, far above any KIM cluster we serve,
#: and small enough that a corrupt count cannot make the server allocate gigabytes.
MAX_ATOMS = 1_000_000
#: Bytes per atom in a request: species code, three coordinates, contributing flag.
BYTES_PER_ATOM = INT_WIDTH + 3 * 8 + INT_WIDTH


class ProtocolError(ValueError):
    """A request that breaks the wire format (the message says how)."""


@dataclass(frozen=True)
class Request:
    """One KIM compute.

    Attributes:
        species: ``[n]`` int32 codes, indices into the server's species list.
        positions: ``[n, 3]`` float64, Å.
        contributing: ``[n]`` bool; False for padding atoms (periodic images, ghosts).
    """

    species: np.ndarray
    positions: np.ndarray
    contributing: np.ndarray


def _recv_exact(conn: socket.socket, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes, or ProtocolError naming ``what`` was cut short."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = conn.recv_into(view[got:], size - got)
        if n == 0:
            raise ProtocolError(f"truncated frame: connection closed after {got} of {size} bytes of {what}")
        got += n
    return bytes(buf)


def read_request(conn: socket.socket, n_species: int) -> Request | None:
    """Read one request; None when the client closed the connection before sending one.

    Raises:
        ProtocolError: integer width not 4, atom count negative, zero or above
            :data:`MAX_ATOMS`, a truncated frame, species codes outside ``0..n_species-1``,
            non-finite positions, or contributing flags other than 0 and 1.
    """
    first = conn.recv(4, socket.MSG_WAITALL)
    if not first:
        return None
    if len(first) < 4:
        raise ProtocolError(f"truncated frame: {len(first)} of 4 bytes of the integer width")
    (int_width,) = struct.unpack("=i", first)
    if int_width != INT_WIDTH:
        raise ProtocolError(f"integer width {int_width} not supported (KIM sends 4-byte ints)")
    (n,) = struct.unpack("=i", _recv_exact(conn, INT_WIDTH, "the atom count"))
    if not 0 < n <= MAX_ATOMS:
        raise ProtocolError(f"atom count {n} out of range (1..{MAX_ATOMS})")
    raw = _recv_exact(conn, n * BYTES_PER_ATOM, f"{n} atoms")
    species = np.frombuffer(raw, dtype=np.int32, count=n)
    positions = np.frombuffer(raw, dtype=np.float64, count=3 * n, offset=4 * n).reshape(n, 3)
    flags = np.frombuffer(raw, dtype=np.int32, count=n, offset=28 * n)
    bad = np.flatnonzero((species < 0) | (species >= n_species))
    if bad.size:
        raise ProtocolError(
            f"species code {int(species[bad[0]])} at atom {int(bad[0])} out of range: this server "
            f"serves {n_species} species (codes 0..{n_species - 1})"
        )
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise ProtocolError(f"non-finite position {positions[bad[0]].tolist()} at atom {int(bad[0])}")
    bad = np.flatnonzero((flags != 0) & (flags != 1))
    if bad.size:
        raise ProtocolError(f"contributing flag {int(flags[bad[0]])} at atom {int(bad[0])} is neither 0 nor 1")
    return Request(species=species, positions=positions, contributing=flags.astype(bool))


def write_reply(conn: socket.socket, energy: float, forces: np.ndarray) -> None:
    """Send ``energy`` (eV) and ``forces [n, 3]`` (eV/Å) as float64 in one write."""
    conn.sendall(struct.pack("=d", energy) + np.ascontiguousarray(forces, dtype=np.float64).tobytes())


def encode_request(species: np.ndarray, positions: np.ndarray, contributing: np.ndarray) -> bytes:
    """A request as KUSP's portable model frames it (for clients written in Python)."""
    n = len(species)
    return (
        struct.pack("=ii", INT_WIDTH, n)
        + np.ascontiguousarray(species, dtype=np.int32).tobytes()
        + np.ascontiguousarray(positions, dtype=np.float64).tobytes()
        + np.ascontiguousarray(contributing, dtype=np.int32).tobytes()
    )


def decode_reply(data: bytes, n: int) -> tuple[float, np.ndarray]:
    """``(energy, forces [n, 3])`` from a reply's bytes."""
    if len(data) != 8 * (1 + 3 * n):
        raise ProtocolError(f"reply of {len(data)} bytes, expected {8 * (1 + 3 * n)} for {n} atoms")
    values = np.frombuffer(data, dtype=np.float64)
    return float(values[0]), values[1:].reshape(n, 3).copy()


def call(host: str, port: int, species: np.ndarray, positions: np.ndarray, contributing: np.ndarray,
         *, timeout: float = 60.0) -> tuple[float, np.ndarray]:
    """One compute through the server, as the portable model does it: connect, send, read, close."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(encode_request(species, positions, contributing))
        return decode_reply(_recv_exact(conn, 8 * (1 + 3 * len(species)), "the reply"), len(species))


def config_text(*, host: str, port: int, species: list[str], influence_distance: float) -> str:
    """The YAML both KUSP portable models read: the released one (``server``, ``global``) and
    the newer one (``protocol: ip``, ``server``, ``model``)."""
    names = ", ".join(species)
    return (
        "# written by `torchsim-distill serve`; read by KUSP's KIM portable model\n"
        "protocol: ip\n"
        f"server:\n  host: {host}\n  port: {port}\n"
        f"model:\n  influence_distance: {influence_distance!r}\n  species: [{names}]\n"
        f"global:\n  influence_distance: {influence_distance!r}\n  elements: [{names}]\n"
    )


def write_config(path: str | Path, **fields) -> Path:
    """Write :func:`config_text` to ``path``; export it as ``KUSP_SERVER_CONFIG`` and ``KUSP_CONFIG``."""
    path = Path(path)
    path.write_text(config_text(**fields))
    return path
