"""Serve a student to KIM codes (LAMMPS, ASE's KIM calculator, KIM tests) through KUSP's portable model.

KIM hands a model a cluster: the contributing atoms, whose energies count, and padding atoms
(periodic images, ghosts) out to the model's influence distance. The energy KIM wants is the
sum of the contributing atoms' energies, and the forces are that sum's derivative with
respect to every atom, padding included (LAMMPS folds the padding forces onto their owners)::

    server = KuspServer(load_served_model("default"), port=12345)
    server.write_config("kusp_config.yaml")   # export as KUSP_SERVER_CONFIG and KUSP_CONFIG
    server.serve_forever()                    # Ctrl-C stops it
    torchsim-distill serve default --port 12345 --config-out kusp_config.yaml

**Two routes.** A compiled ``--target batch`` student returns the forces of the *total* energy
of every atom it is given. On a KIM cluster that total includes the padding atoms' energies,
which are wrong (their environments are cut off at the cluster's edge) and whose gradients leak
into every force within reach: for the shipped student on a 108-atom Cu–Au cell padded to
12 Å, those forces were off by up to 119 eV/Å. No input to the compiled graph removes them (any
atom with neighbours has a position-dependent energy). So:

* **Folded (the fast route, default).** When the cluster is one periodic cell — every padding
  atom an image of a contributing atom under one lattice, as LAMMPS on one MPI rank and ASE's
  KIM calculator send it (:mod:`.kim_fold` finds the lattice) — the contributing energy is that
  cell's energy, and the compiled student evaluates the cell alone, at the speed of our own
  calculators. Each contributing atom gets its total force (its own and its images'), padding
  atoms none: what the client sums onto each atom (LAMMPS's reverse communication, ASE's
  padding fold) is exact. One more sum matters: LAMMPS computes the virial as ``Σ x ⊗ f`` over
  every atom, padding included, and the cell's lattice term lives on the padding. It is put
  back exactly: three padding atoms get forces ``g_k`` and their owners ``-g_k``, chosen so that
  ``Σ_k shift_k ⊗ g_k`` is the missing term; every atom's summed force is unchanged and
  ``Σ x ⊗ f = -σ V``. The price: a padding atom's force is not its own derivative, so a client
  that reads padding forces one by one (rather than summing them onto their owners) needs
  ``--exact``.
* **Exact (any cluster).** Other clusters (ghosts from another MPI rank, a slab, a perfect
  crystal whose owners are ambiguous on a first look; see :mod:`.kim_fold`) go to the
  student's eager nequip model, which returns per-atom energies; the server differentiates
  ``Σ_i contributing_i · e_i`` with autograd. On the 108-atom cell it equals our compiled
  calculator to 1e-13 eV and 1e-14 eV/Å. It pays for every padding atom, eagerly: see
  ``benchmarks/kusp_overhead.py``.

**Why the influence distance is layers × r_max.** A message-passing student's atom feels
atoms up to ``num_layers · r_max`` away (through its neighbours' neighbours), so KIM must pad
that far or the contributing atoms' energies are wrong. Padding beyond what an atom's energy
can reach is work only: before each call the server keeps the edges whose centre atom is
within ``num_layers - 1`` hops of a contributing atom (only those atoms' updated features reach
a contributing energy) and drops atoms further than ``num_layers`` hops. That changes no
contributing energy, only the cost. The folded route would need less padding (images enough to
find the cell), but which route a request takes is known only once it arrives, so the server
declares the exact route's distance.

**D3 on top** (``--dispersion d3bj --functional pbe``; see
:mod:`~torchsim_distill.runtime.dispersion`). The folded and isolated routes evaluate the
compiled student with D3 added in the same call, on the periodic cell (or the isolated
cluster) itself: exact, whatever D3's 32 Å reach, since the cell's periodic D3 needs no
padding. The exact route cannot: it needs the contributing atoms' share of the energy, and the
D3 kernel gives energies per system only (no per-atom split), while padding out to D3's reach
(its pair cutoff plus the coordination numbers' cutoff, ~64 Å) would cost far more than the
student. So with D3, ``--exact`` is refused and a request that does not fold onto one cell
(LAMMPS on several MPI ranks) is refused with a logged error naming the reason, never answered
without D3.

Bad requests (see :mod:`~torchsim_distill.jobs.kusp_protocol`) close that connection with a
logged error naming the problem; the server goes on serving the next client.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# torch-sim's, nequip's and Warp's first imports, quietly (see torchsim_distill.utils.quiet)
import torchsim_distill.runtime  # noqa: F401

# isort: split
import numpy as np
import torch

from torchsim_distill.jobs.kim_fold import Fold, Folder
from torchsim_distill.jobs.kusp_protocol import ProtocolError, read_request, write_config, write_reply

if TYPE_CHECKING:
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

logger = logging.getLogger(__name__)

#: Seconds a connected client may stay silent mid-request before the server drops it: the
#: server serves one client at a time, so a stalled one must not hold it for ever.
CLIENT_TIMEOUT = 60.0
#: Suffixes of the model files the server can serve (a compiled ``.nequip.pt2`` cannot: see
#: the module docstring).
SERVABLE_SUFFIXES = (".nequip.zip", ".ckpt")


@dataclass
class ServedModel:
    """A student's eager nequip model (and, for the folded route, its compiled form) with what
    KIM needs to know about it.

    Attributes:
        model: the eager nequip ``GraphModel`` (per-atom energies): the exact route.
        type_names: species in type-index order; a KIM species code is this index.
        r_max: cutoff in Å.
        num_layers: interaction layers (1 for strictly local models such as Allegro).
        device: where it runs.
        name: what it was loaded from (for logs).
        periodic: the compiled student for the folded route; None: every request takes the
            exact route.
        dispersion: the correction the compiled student adds on top (``"d3bj (pbe)"``), for
            logs; with one, the exact route refuses (see the module docstring).
    """

    model: torch.nn.Module
    type_names: list[str]
    r_max: float
    num_layers: int
    device: torch.device
    name: str = ""
    periodic: DistilledTorchSimCalc | None = None
    folder: Folder | None = field(default=None, repr=False)
    dispersion: str | None = None
    #: requests answered by each route
    routes: dict[str, int] = field(default_factory=lambda: {"folded": 0, "isolated": 0, "exact": 0})

    def __post_init__(self) -> None:
        from ase.data import atomic_numbers

        if self.periodic is not None and self.folder is None:
            self.folder = Folder(self.influence_distance)
        self._numbers = np.array([atomic_numbers[name] for name in self.type_names])  # by species code
        self.last_route = ""  # the route of the last request

    @property
    def influence_distance(self) -> float:
        """Å: how far KIM must pad around contributing atoms, ``num_layers × r_max``."""
        return self.num_layers * self.r_max

    def compute(self, species: np.ndarray, positions: np.ndarray, contributing: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy of the contributing atoms and forces KIM sums onto every atom.

        Args:
            species: ``[n]`` type indices (KIM species codes).
            positions: ``[n, 3]`` Å, a cluster without cell or periodicity.
            contributing: ``[n]`` bool.

        Returns:
            ``(energy, forces)``: ``Σ_{i contributing} e_i`` in eV and forces ``[n, 3]`` in eV/Å:
            ``-∂energy/∂positions`` on the exact route; on the folded route each atom's total
            (see the module docstring).
        """
        if self.periodic is not None and contributing.any():
            if contributing.all():  # nothing to fold: an isolated cluster, exact as it is
                self._took("isolated")
                return self.on_cell(species, positions, np.zeros((3, 3)), pbc=False)[:2]
            try:
                fold = self.folder(species, positions, contributing)
            except (ValueError, np.linalg.LinAlgError) as err:  # a degenerate geometry: the exact route still answers
                logger.warning("could not fold a request of %d atoms (%s: %s): exact route", len(species),
                               type(err).__name__, err)
                fold = None
            if fold is not None:
                self._took("folded")
                return self._folded(fold, species, positions, contributing)
        if self.dispersion is not None and contributing.any():
            raise ValueError(
                f"this cluster of {len(species)} atoms is not one periodic cell (e.g. LAMMPS on several MPI ranks): "
                f"only the folded and isolated routes can add {self.dispersion} (its kernel has no per-atom energies); "
                "run on one rank, or serve without --dispersion"
            )
        self._took("exact")
        return self._exact(species, positions, contributing)

    def _took(self, route: str) -> None:
        self.routes[route] += 1
        self.last_route = route

    def on_cell(self, species: np.ndarray, positions: np.ndarray, cell: np.ndarray,
                pbc: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """``(energy, forces [n, 3], stress [3, 3])`` of the compiled student on one system: the
        folded route's call (species codes, positions in Å, ``cell`` ``[3, 3]`` rows in Å)."""
        numbers = torch.as_tensor(self._numbers[species])
        out = self.periodic.evaluate(torch.tensor(positions), numbers, torch.tensor(cell)[None],
                                     torch.zeros(len(numbers), dtype=torch.long), pbc)
        return float(out["energy"][0]), out["forces"].numpy(), out["stress"][0].numpy()

    def _folded(self, fold: Fold, species, positions, contributing) -> tuple[float, np.ndarray]:
        """The folded route: the compiled student on the cell, the virial's lattice term carried
        by three padding atoms (see the module docstring)."""
        pos_c = positions[contributing]
        energy, f_cell, stress = self.on_cell(species[contributing], pos_c, fold.cell, pbc=True)
        volume = abs(np.linalg.det(fold.cell))
        lattice_term = -stress * volume - pos_c.T @ f_cell  # Σ x ⊗ f the padding must add
        carriers = fold.carriers
        kicks = np.linalg.solve((fold.shift[carriers] @ fold.cell).T, lattice_term)
        contributing_idx, padding_idx = np.flatnonzero(contributing), np.flatnonzero(~contributing)
        forces = np.zeros((len(positions), 3))
        forces[contributing_idx] = f_cell
        forces[padding_idx[carriers]] += kicks
        np.subtract.at(forces, contributing_idx[fold.owner[carriers]], kicks)
        return energy, forces

    def _exact(self, species: np.ndarray, positions: np.ndarray, contributing: np.ndarray) -> tuple[float, np.ndarray]:
        """The exact route: autograd of the masked per-atom energy sum on the eager model."""
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


def load_served_model(model: str | Path, device: str = "cpu", *, exact: bool = False, dispersion: str | None = None,
                      functional: str = "pbe") -> ServedModel:
    """The student for ``model``: a student's name (``"default"``), a ``.nequip.zip`` package or
    a nequip checkpoint; eager, and compiled (on first use, cached) unless ``exact``.
    ``dispersion="d3bj"`` adds D3(BJ) of ``functional`` (the teacher's) on the folded and
    isolated routes (see the module docstring).

    Raises:
        UnknownStudentError: (a ``ValueError``) neither a known student nor a student file.
        UnknownDispersionError: (a ``ValueError``) an unknown dispersion or functional.
        ValueError: a compiled ``.nequip.pt2`` (which cannot give KIM's forces), or a
            dispersion with ``exact`` or with a student that cannot be compiled.
    """
    from torchsim_distill.compile import load_eager_model
    from torchsim_distill.models.registry import resolve_student

    if dispersion is not None:
        from torchsim_distill.runtime.dispersion import dispersion_model

        dispersion_model(dispersion, functional)  # a misspelt name fails before anything is compiled
        if exact:
            raise ValueError(f"--exact cannot serve {dispersion}: the exact route needs per-atom energies, which the "
                             "D3 kernel does not give; serve without --exact (periodic cells are folded, exactly)")
    path = resolve_student(model)
    if not path.name.endswith(SERVABLE_SUFFIXES):
        raise ValueError(
            f"{str(model)!r} is a compiled student, which returns forces of every atom's energy, padding "
            "included; KIM needs those of the contributing atoms only: serve the package (.nequip.zip) "
            "or checkpoint it was compiled from, or a student's name"
        )
    eager = load_eager_model(path).to(device)
    periodic = None
    if not exact:
        from torchsim_distill.models.registry import load_student

        try:
            periodic = load_student(path, device, dispersion=dispersion, functional=functional)
        except Exception as err:  # e.g. a checkpoint whose training data is gone: nequip-compile needs it
            if dispersion is not None:
                raise ValueError(f"cannot compile {model} ({type(err).__name__}: {err}), and only the compiled "
                                 f"student can serve {dispersion}") from err
            logger.warning("cannot compile %s (%s: %s): every request takes the exact route (slower)",
                           model, type(err).__name__, err)
    return ServedModel(
        model=eager,
        type_names=list(eager.type_names),
        r_max=float(eager.metadata["r_max"]),
        num_layers=num_interaction_layers(eager),
        device=torch.device(device),
        name=str(model),
        periodic=periodic,
        dispersion=None if dispersion is None else f"{dispersion} ({functional})",
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
                logger.debug("%s: %d atoms (%d contributing, %s), E = %.6f eV, %.1f ms", peer, len(request.species),
                             int(request.contributing.sum()), self.model.last_route, energy, 1e3 * (time.perf_counter() - t0))
        except ProtocolError as err:
            self.rejected += 1
            logger.error("bad request from %s, connection closed: %s", peer, err)
        except (TimeoutError, ConnectionError) as err:
            self.rejected += 1
            logger.error("connection from %s dropped: %s", peer, err or type(err).__name__)
        except Exception as err:  # a failed compute must not take the server down
            self.rejected += 1
            logger.error("request from %s failed, connection closed: %s: %s", peer, type(err).__name__, err)
