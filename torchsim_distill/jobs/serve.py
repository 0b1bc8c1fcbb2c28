"""Serve a student to KIM codes (LAMMPS, ASE's KIM calculator, KIM tests) through KUSP's portable model.

KIM hands a model a cluster: the contributing atoms, whose energies count, and padding atoms
(periodic images, ghosts) out to the model's influence distance. The energy KIM wants is the
sum of the contributing atoms' energies, and the forces are that sum's derivative with
respect to every atom, padding included (LAMMPS folds the padding forces onto their owners)::

    server = KuspServer(load_served_model("default"), port=12345)
    server.write_config("kusp_config.yaml")   # export as KUSP_SERVER_CONFIG and KUSP_CONFIG
    server.serve_forever()                    # Ctrl-C stops it
    torchsim-distill serve default --port 12345 --config-out kusp_config.yaml

**Why autograd of the masked sum, not the compiled student.** A compiled ``--target batch``
student returns the forces of the *total* energy of every atom it is given. On a KIM cluster
that total includes the padding atoms' energies, which are wrong (their environments are cut
off at the cluster's edge) and whose gradients leak into every force within reach: for the
shipped student on a 108-atom Cu–Au cell padded to 12 Å, the folded forces were off by up to
119 eV/Å. No input to the compiled graph removes them (any atom with neighbours has a
position-dependent energy). So the server runs the
student's eager nequip model, which returns per-atom energies, and differentiates
``Σ_i contributing_i · e_i`` with autograd. It is exact: on that cell it equals our compiled
calculator to 1e-13 eV and 1e-14 eV/Å. The price is speed (eager, and the padding is
recomputed): see ``benchmarks/kusp_overhead.py``.

**Why the influence distance is layers × r_max.** A message-passing student's atom feels
atoms up to ``num_layers · r_max`` away (through its neighbours' neighbours), so KIM must pad
that far or the contributing atoms' energies are wrong. Padding beyond what an atom's energy
can reach is work only: before each call the server keeps the edges whose centre atom is
within ``num_layers - 1`` hops of a contributing atom (only those atoms' updated features reach
a contributing energy) and drops atoms further than ``num_layers`` hops. That changes no
contributing energy, only the cost.

Bad requests (see :mod:`~torchsim_distill.jobs.kusp_protocol`) close that connection with a
logged error naming the problem; the server goes on serving the next client.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchsim_distill.jobs.kusp_protocol import ProtocolError, read_request, write_config, write_reply

logger = logging.getLogger(__name__)

#: Seconds a connected client may stay silent mid-request before the server drops it: the
#: server serves one client at a time, so a stalled one must not hold it for ever.
CLIENT_TIMEOUT = 60.0
#: Suffixes of the model files the server can serve (a compiled ``.nequip.pt2`` cannot: see
#: the module docstring).
SERVABLE_SUFFIXES = (".nequip.zip", ".ckpt")


@dataclass
class ServedModel:
    """A student's eager nequip model with what KIM needs to know about it.

    Attributes:
        model: the eager nequip ``GraphModel`` (per-atom energies).
        type_names: species in type-index order; a KIM species code is this index.
        r_max: cutoff in Å.
        num_layers: interaction layers (1 for strictly local models such as Allegro).
        device: where it runs.
        name: what it was loaded from (for logs).
    """

    model: torch.nn.Module
    type_names: list[str]
    r_max: float
    num_layers: int
    device: torch.device
    name: str = ""

    @property
    def influence_distance(self) -> float:
        """Å: how far KIM must pad around contributing atoms, ``num_layers × r_max``."""
        return self.num_layers * self.r_max

    def compute(self, species: np.ndarray, positions: np.ndarray, contributing: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy of the contributing atoms and its forces on every atom.

        Args:
            species: ``[n]`` type indices (KIM species codes).
            positions: ``[n, 3]`` Å, a cluster without cell or periodicity.
            contributing: ``[n]`` bool.

        Returns:
            ``(energy, forces)``: ``Σ_{i contributing} e_i`` in eV and ``-∂energy/∂positions``
            ``[n, 3]`` in eV/Å (zero on atoms it cannot reach).
        """
        from nequip.data import AtomicDataDict as K

        from torchsim_distill.runtime.neighbors import BatchedNeighborList

        dev, dtype = self.device, torch.float64
        # copies: request arrays are read-only views of the received bytes
        pos = torch.tensor(positions, dtype=dtype, device=dev)
        types = torch.tensor(species, dtype=torch.long, device=dev)
        contrib = torch.tensor(contributing, dtype=torch.bool, device=dev)
        n = pos.shape[0]
        forces = np.zeros((n, 3))
        if not bool(contrib.any()):
            return 0.0, forces
        edges, _ = BatchedNeighborList(self.r_max)(
            pos, torch.zeros(1, 3, 3, dtype=dtype, device=dev), torch.zeros(1, 3, dtype=torch.bool, device=dev),
            torch.zeros(n, dtype=torch.long, device=dev), types,
        )
        edges, atoms = prune(edges, contrib, self.num_layers)
        local = torch.full((n,), -1, dtype=torch.long, device=dev)
        local[atoms] = torch.arange(atoms.numel(), device=dev)
        p = pos[atoms].clone().requires_grad_(True)
        data = {K.POSITIONS_KEY: p, K.EDGE_INDEX_KEY: local[edges], K.ATOM_TYPE_KEY: types[atoms]}
        per_atom = self.model.model.func(data)[K.PER_ATOM_ENERGY_KEY].reshape(-1)
        energy = per_atom[contrib[atoms]].sum()
        (grad,) = torch.autograd.grad(energy, p)
        forces[atoms.cpu().numpy()] = -grad.detach().cpu().numpy()
        return float(energy.detach()), forces


def prune(edges: torch.Tensor, contributing: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges and atoms that can change a contributing atom's energy.

    An atom ``h`` hops from the nearest contributing atom passes its layer-``l`` features on
    only if ``h ≤ num_layers - l``: its incoming edges (which shape layers ≥ 1) matter only for
    ``h ≤ num_layers - 1``, and the atom itself only for ``h ≤ num_layers``.

    Args:
        edges: ``[2, n_edges]`` nequip's order (``edges[0]`` the centre, ``edges[1]`` the neighbour).
        contributing: ``[n_atoms]`` bool.
        num_layers: interaction layers.

    Returns:
        ``(edges [2, kept], atoms [m])``: the kept edges (global indices) and the atoms they
        touch together with every contributing atom, sorted.
    """
    reach = contributing.clone()  # atoms within h hops, h = 0 .. num_layers - 1
    for _ in range(num_layers - 1):
        step = reach.clone()
        step[edges[1][reach[edges[0]]]] = True  # neighbours of reached centres
        reach = step
    kept = edges[:, reach[edges[0]]]
    used = contributing.clone()
    used[kept.reshape(-1)] = True
    return kept, used.nonzero().squeeze(1)


def num_interaction_layers(model: torch.nn.Module) -> int:
    """Message-passing layers of a nequip model: its ``ConvNetLayer`` modules; 1 for a strictly
    local model (Allegro), whose atom energies see only neighbours within ``r_max``."""
    names = [type(m).__name__ for m in model.modules()]
    if "ConvNetLayer" in names:
        return names.count("ConvNetLayer")
    if any("Allegro" in name for name in names):
        return 1
    raise ValueError(
        f"cannot tell how far this model's atoms see (no ConvNetLayer or Allegro module among {sorted(set(names))[:8]}...): "
        "KIM needs its influence distance"
    )


def load_served_model(model: str | Path, device: str = "cpu") -> ServedModel:
    """The eager student for ``model``: a student's name (``"default"``), a ``.nequip.zip``
    package or a nequip checkpoint.

    Raises:
        UnknownStudentError: (a ``ValueError``) neither a known student nor a student file.
        ValueError: a compiled ``.nequip.pt2`` (which cannot give KIM's forces).
    """
    from torchsim_distill.compile import load_eager_model
    from torchsim_distill.models.registry import resolve_student

    path = resolve_student(model)
    if not path.name.endswith(SERVABLE_SUFFIXES):
        raise ValueError(
            f"{str(model)!r} is a compiled student, which returns forces of every atom's energy, padding "
            "included; KIM needs those of the contributing atoms only: serve the package (.nequip.zip) "
            "or checkpoint it was compiled from, or a student's name"
        )
    eager = load_eager_model(path).to(device)
    return ServedModel(
        model=eager,
        type_names=list(eager.type_names),
        r_max=float(eager.metadata["r_max"]),
        num_layers=num_interaction_layers(eager),
        device=torch.device(device),
        name=str(model),
    )


class KuspServer:
    """A KUSP server for one student, one client at a time.

    Args:
        model: what :func:`load_served_model` returns.
        host: address to bind; loopback by default (anyone who can connect can run the model).
        port: TCP port; 0 picks a free one (see :attr:`port`).
        client_timeout: seconds a client may stall mid-request before it is dropped.
    """

    def __init__(self, model: ServedModel, *, host: str = "127.0.0.1", port: int = 12345,
                 client_timeout: float = CLIENT_TIMEOUT) -> None:
        self.model = model
        self.client_timeout = client_timeout
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.2)  # wake to notice close()
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self.served = 0  # requests answered
        self.compute_seconds: list[float] = []  # per request, in the model (the rest of a call is transport)
        self.rejected = 0  # connections closed for a bad request or a failed compute

    def write_config(self, path: str | Path) -> Path:
        """The YAML KUSP's portable model reads (both formats; see :func:`write_config`)."""
        return write_config(path, host=self.host, port=self.port, species=self.model.type_names,
                            influence_distance=self.model.influence_distance)

    def serve_forever(self) -> None:
        """Answer clients until :meth:`close` (or Ctrl-C, which propagates after the socket is closed)."""
        logger.info("serving %s (species %s, influence distance %.2f A) on %s:%d", self.model.name,
                    " ".join(self.model.type_names), self.model.influence_distance, self.host, self.port)
        try:
            while not self._stop.is_set():
                try:
                    conn, addr = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                with conn:
                    self._handle(conn, f"{addr[0]}:{addr[1]}")
        finally:
            self._sock.close()

    def close(self) -> None:
        """Stop :meth:`serve_forever` (from another thread) and release the port."""
        self._stop.set()

    def _handle(self, conn: socket.socket, peer: str) -> None:
        """Answer requests on one connection until the client closes it; a bad one closes it early."""
        conn.settimeout(self.client_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        logger.debug("connection from %s", peer)
        try:
            while (request := read_request(conn, len(self.model.type_names))) is not None:
                t0 = time.perf_counter()
                energy, forces = self.model.compute(request.species, request.positions, request.contributing)
                self.compute_seconds.append(time.perf_counter() - t0)
                write_reply(conn, energy, forces)
                self.served += 1
                logger.debug("%s: %d atoms (%d contributing), E = %.6f eV, %.1f ms", peer, len(request.species),
                             int(request.contributing.sum()), energy, 1e3 * (time.perf_counter() - t0))
        except ProtocolError as err:
            self.rejected += 1
            logger.error("bad request from %s, connection closed: %s", peer, err)
        except (TimeoutError, ConnectionError) as err:
            self.rejected += 1
            logger.error("connection from %s dropped: %s", peer, err or type(err).__name__)
        except Exception as err:  # a failed compute must not take the server down
            self.rejected += 1
            logger.error("request from %s failed, connection closed: %s: %s", peer, type(err).__name__, err)
