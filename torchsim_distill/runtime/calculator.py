"""``DistilledTorchSimCalc``: a compiled student as a torch-sim model, many systems per call.

Data flows one way: SimState → model inputs (neighbor list, atom types) → the
AOTInductor student (``nequip-compile --target batch``) → energy, forces, stress::

    calc = DistilledTorchSimCalc.from_compiled_model("student.nequip.pt2", chemical_species_to_atom_type_map=True)
    out = calc(state)  # energy [n_systems] eV, forces [n_atoms, 3] eV/Å, stress [n_systems, 3, 3] eV/Å³
    relaxed = ts.optimize(state, calc, optimizer=ts.Optimizer.fire, init_kwargs={"cell_filter": ts.CellFilter.frechet})

With a committee (other students compiled the same way) it can also say how unsure
it is (see :mod:`torchsim_distill.runtime.committee`)::

    calc = DistilledTorchSimCalc.from_compiled_model(path, committee=["seed1.nequip.pt2"], uncertainty=True)
    calc(state)["uncertainty"]  # [n_systems] eV/Å: max over atoms of the committee's force spread
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_sim as ts
from torch_sim.models.interface import ModelInterface

from torchsim_distill.runtime.artifact import CompiledArtifact, load_artifact
from torchsim_distill.runtime.checks import check_cells, check_forces, check_positions
from torchsim_distill.runtime.committee import committee_spread, load_committee
from torchsim_distill.runtime.dispersion import add_dispersion
from torchsim_distill.runtime.neighbors import BatchedNeighborList
from torchsim_distill.runtime.species import SpeciesMap, SpeciesMapArg


@dataclass
class _Topology:
    """What does not change between MD steps, checked once and kept with what was derived from it.

    The species map, the system-index range and the cell checks cost a few reductions each,
    which at 32 atoms add up to a tenth of the compiled forward; an MD step or an optimizer
    step without a cell filter repeats the same numbers, cell, pbc and system index, so
    those are compared (``torch.equal``, microseconds) and the results reused.
    """

    atomic_numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    system_idx: torch.Tensor
    atom_types: torch.Tensor
    num_nodes: torch.Tensor
    has_volume: torch.Tensor

    def matches(self, atomic_numbers, cell, pbc, system_idx) -> bool:
        return (
            self.atomic_numbers.shape == atomic_numbers.shape
            and self.cell.shape == cell.shape
            and torch.equal(self.system_idx, system_idx)
            and torch.equal(self.atomic_numbers, atomic_numbers)
            and torch.equal(self.cell, cell)
            and torch.equal(self.pbc, pbc)
        )


class DistilledTorchSimCalc(ModelInterface):
    """A compiled NequIP/Allegro student as a torch-sim ``ModelInterface``.

    Use :meth:`from_compiled_model`. Outputs come back in the input's dtype and on
    its device; inputs are cast to the artifact's dtype (float64 for our students)
    and made contiguous, because AOTInductor reads inputs at their compile-time
    strides and dtypes without checking.

    Args:
        artifact: a loaded ``--target batch`` student (see :func:`load_artifact`).
        chemical_species_to_atom_type_map: ``None`` (identity, warns), ``True``
            (identity) or ``{symbol: type_name}``.
        skin: Verlet skin in Å; ``None`` or ``0`` rebuilds the neighbor list every call.
        neighbor_method: ``"auto"``, ``"cell_list"`` or ``"naive"``.
        compute_forces, compute_stress: which outputs to return.
        dtype: the dtype torch-sim should build states in (outputs follow the state).
        committee: the other committee members (the main student is member 0):
            compiled ``--target batch`` students for the same device with the same
            type names and cutoffs (else :class:`ArtifactError`), as files or artifacts.
        uncertainty: also return ``uncertainty [n_systems]`` eV/Å (max over atoms of
            the committee's force spread) and ``energy_uncertainty [n_systems]``
            eV/atom; each call then runs every member once on the same neighbor
            list. Off by default (no member is called); settable later as
            ``calc.uncertainty = True``. Needs a committee.
        dispersion: a correction whose energy, forces and stress are added to the
            student's in every call (see :mod:`torchsim_distill.runtime.dispersion`, e.g.
            ``dispersion_model("d3bj", "pbe")``); settable later as ``calc.dispersion``. With
            it, per-atom ``energies`` are not returned (the D3 kernel has none).
    """

    def __init__(
        self,
        artifact: CompiledArtifact,
        *,
        chemical_species_to_atom_type_map: SpeciesMapArg = None,
        skin: float | None = None,
        neighbor_method: str = "auto",
        compute_forces: bool = True,
        compute_stress: bool = True,
        dtype: torch.dtype = torch.float64,
        committee: Sequence[str | Path | CompiledArtifact] = (),
        uncertainty: bool = False,
        dispersion: ModelInterface | None = None,
    ) -> None:
        """See the class docstring. Nine parameters, as torch-sim's and nequip's calculators
        take them: the artifact, nequip's species map and neighbor method, torch-sim's
        ``compute_forces``, ``compute_stress`` and ``dtype``, and ours (``skin``, the
        ``committee`` and its ``uncertainty``), each an independent switch."""
        super().__init__()
        if artifact.target != "batch":
            raise ValueError(
                f"DistilledTorchSimCalc needs a --target batch artifact, got {artifact.target!r}"
            )
        self.artifact = artifact
        self._device = artifact.device
        self._dtype = dtype
        self._compute_forces = compute_forces
        self._compute_stress = compute_stress
        # neighbor count per atom grows with density: what torch-sim's autobatcher models
        self._memory_scales_with = "n_atoms_x_density"
        self.r_max = artifact.r_max
        self.type_names = list(artifact.type_names)
        self.species = SpeciesMap.resolve(chemical_species_to_atom_type_map, self.type_names).to(self._device)
        self.neighbor_list = BatchedNeighborList(
            artifact.r_max,
            skin=float(skin or 0.0),
            per_edge_type_cutoff=artifact.per_edge_type_cutoff_matrix(),
            method=neighbor_method,
        )
        self.committee = load_committee(committee, like=artifact)
        self.uncertainty = uncertainty
        self._topology: _Topology | None = None
        self.dispersion = dispersion

    @classmethod
    def from_compiled_model(
        cls,
        compile_path: str | Path,
        device: str | torch.device = "cpu",
        chemical_species_to_atom_type_map: SpeciesMapArg = None,
        skin: float | None = None,
        **options,
    ) -> DistilledTorchSimCalc:
        """Load a ``.nequip.pt2`` compiled with ``--target batch`` for ``device``.

        ``options`` go to the constructor (``neighbor_method``, ``compute_forces``,
        ``compute_stress``, ``dtype``, ``committee``, ``uncertainty``); committee
        files load on ``device`` too.
        """
        artifact = load_artifact(compile_path, device=device, target="batch")
        return cls(
            artifact,
            chemical_species_to_atom_type_map=chemical_species_to_atom_type_map,
            skin=skin,
            **options,
        )

    @ModelInterface.compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    @property
    def uncertainty(self) -> bool:
        """Whether calls also return the committee's ``uncertainty`` and ``energy_uncertainty``."""
        return self._uncertainty

    @uncertainty.setter
    def uncertainty(self, value: bool) -> None:
        if value and not self.committee:
            raise ValueError(
                "uncertainty needs a committee: build the calculator with committee=[other "
                "compiled students (--target batch, same type names and cutoffs)]"
            )
        self._uncertainty = bool(value)

    def forward(self, state: ts.SimState, **kwargs) -> dict[str, torch.Tensor]:
        """Energy ``[n_systems]``, forces ``[n_atoms, 3]``, stress ``[n_systems, 3, 3]`` (and uncertainties when on)."""
        return self.evaluate(
            state.positions,
            state.atomic_numbers,
            state.row_vector_cell,
            state.system_idx,
            state.pbc,
        )

    def evaluate(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        mol_idx: torch.Tensor,
        pbc: torch.Tensor | bool | list[bool] = True,
    ) -> dict[str, torch.Tensor]:
        """Tensor-level entry for callers without a SimState.

        Args:
            positions: ``[n_atoms, 3]`` Å.
            atomic_numbers: ``[n_atoms]``.
            cell: ``[n_systems, 3, 3]`` row-vector cells in Å (rows are lattice
                vectors, as in ASE); zero for molecules.
            mol_idx: ``[n_atoms]`` system index of each atom, in ``0..n_systems-1``: torch-sim's
                ``system_idx`` under the design card's name for this entry (everything else in
                the package says ``system_idx``).
            pbc: a bool, ``[3]`` or ``[n_systems, 3]``.

        Returns:
            ``energy [n_systems]`` eV, ``forces [n_atoms, 3]`` eV/Å, ``stress
            [n_systems, 3, 3]`` eV/Å³ (ASE sign: positive under tension; zero for
            systems with no cell volume) and ``energies [n_atoms]`` eV per atom;
            with :attr:`uncertainty` on also ``uncertainty [n_systems]`` eV/Å and
            ``energy_uncertainty [n_systems]`` eV/atom (the committee's spreads;
            everything else stays the main student's).

        Raises:
            InvalidStructureError: (a ``ValueError``) a non-finite position, a periodic
                system whose cell has no volume, or two atoms at one position; the
                message names the system and atoms.
        """
        # nequip's field names; imported here, not at module level, because importing
        # nequip is slow and loading the artifact has imported it already
        from nequip.data import AtomicDataDict as K

        out_dtype, out_device = positions.dtype, positions.device
        inputs = self._prepare(positions, atomic_numbers, cell, system_idx=mol_idx, pbc=pbc)
        with torch.no_grad():
            raw = self.artifact.model([inputs[k] for k in self.artifact.input_keys])
        out = dict(zip(self.artifact.output_keys, raw, strict=True))
        check_forces(
            out[K.FORCE_KEY], inputs[K.POSITIONS_KEY], inputs[K.BATCH_KEY], inputs[K.EDGE_INDEX_KEY],
            inputs[K.EDGE_CELL_SHIFT_KEY], inputs[K.CELL_KEY],
        )

        def _out(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=out_device, dtype=out_dtype)

        results = {"energy": _out(out[K.TOTAL_ENERGY_KEY].reshape(-1))}
        if self._compute_forces:
            results["forces"] = _out(out[K.FORCE_KEY])
        if self._compute_stress:
            stress = out[K.STRESS_KEY].reshape(-1, 3, 3)
            # molecules have no volume: nequip's virial/volume is meaningless there
            has_volume = self._topology.has_volume
            results["stress"] = _out(stress if bool(has_volume.all()) else torch.where(has_volume[:, None, None], stress, 0.0))
        results["energies"] = _out(out[K.PER_ATOM_ENERGY_KEY].reshape(-1))
        if self._uncertainty:  # every member on the same inputs: one neighbor list
            spread = committee_spread(
                self.committee, inputs, energy=out[K.TOTAL_ENERGY_KEY], forces=out[K.FORCE_KEY]
            )
            results.update({key: _out(value) for key, value in spread.items()})
        if self.dispersion is not None:  # e.g. D3 on top: summed here, so every face of the student gets it
            results = add_dispersion(results, self.dispersion, positions, atomic_numbers, cell, mol_idx, pbc)
        return results

    def _prepare(self, positions, atomic_numbers, cell, *, system_idx, pbc) -> dict[str, torch.Tensor]:
        """Validate and convert inputs to the artifact's device, dtype and layout (nequip's fields).

        Raises:
            InvalidStructureError: a non-finite position, or a periodic system without a cell.
        """
        from nequip.data import AtomicDataDict as K

        n_atoms = positions.shape[0]
        if n_atoms == 0:
            raise ValueError("empty state: it has no atoms; pass at least one system with atoms")
        if positions.shape != (n_atoms, 3):
            raise ValueError(f"positions must be [n_atoms, 3], got {tuple(positions.shape)}")
        if atomic_numbers.shape != (n_atoms,) or system_idx.shape != (n_atoms,):
            raise ValueError(
                f"atomic_numbers and mol_idx must be [n_atoms]=[{n_atoms}], got "
                f"{tuple(atomic_numbers.shape)} and {tuple(system_idx.shape)}"
            )
        if cell.ndim == 2:
            cell = cell.unsqueeze(0)
        n_systems = cell.shape[0]
        if cell.shape != (n_systems, 3, 3):
            raise ValueError(f"cell must be [n_systems, 3, 3], got {tuple(cell.shape)}")
        device, dtype = self._device, self.artifact.model_dtype
        pos = positions.detach().to(device=device, dtype=dtype).contiguous()
        cell = cell.detach().to(device=device, dtype=dtype).contiguous()
        system_idx = system_idx.detach().to(device=device, dtype=torch.long).contiguous()
        atomic_numbers = atomic_numbers.detach().to(device)
        pbc_t = torch.as_tensor(pbc, dtype=torch.bool, device=device)
        pbc_t = pbc_t.expand(n_systems, 3).contiguous() if pbc_t.ndim < 2 else pbc_t.contiguous()
        check_positions(pos, system_idx)
        topology = self._topology
        if topology is None or not topology.matches(atomic_numbers, cell, pbc_t, system_idx):
            topology = self._topology = self._check_topology(atomic_numbers, cell, pbc_t, system_idx)
        edge_index, edge_cell_shift = self.neighbor_list(pos, cell, pbc_t, system_idx, topology.atom_types)
        return {
            K.POSITIONS_KEY: pos,
            K.EDGE_INDEX_KEY: edge_index.contiguous(),
            K.ATOM_TYPE_KEY: topology.atom_types,
            K.CELL_KEY: cell,
            K.EDGE_CELL_SHIFT_KEY: edge_cell_shift.to(dtype).contiguous(),
            K.BATCH_KEY: system_idx,
            K.NUM_NODES_KEY: topology.num_nodes,
        }

    def _check_topology(self, atomic_numbers, cell, pbc, system_idx) -> _Topology:
        """Check what changes rarely (system index range, cells, species) and derive what the model needs from it.

        Raises:
            ValueError: a system index outside the cells given, or an element the species map lacks.
            InvalidStructureError: a periodic system without a cell.
        """
        n_systems = cell.shape[0]
        low, high = (int(v) for v in torch.aminmax(system_idx))
        if low < 0 or high >= n_systems:
            raise ValueError(
                f"mol_idx must lie in 0..{n_systems - 1} (one cell per system), got values in {low}..{high}"
            )
        check_cells(cell, pbc)
        atom_types = self.species.atom_types(atomic_numbers).contiguous()
        # kept for comparison with later calls: copies, since callers may reuse their buffers
        return _Topology(
            atomic_numbers.clone(), cell.clone(), pbc.clone(), system_idx.clone(), atom_types,
            torch.bincount(system_idx, minlength=n_systems), cell.det().abs() > 1e-12,
        )
