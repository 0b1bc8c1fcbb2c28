"""DFT-D3(BJ) dispersion on top of a student, by name: torch-sim's nvalchemiops D3 model.

SevenNet-0 and most foundation teachers are PBE-level and are run with D3(BJ) on top; a
student distilled from such a teacher is too. This builds torch-sim's
:class:`~torch_sim.models.dispersion.D3DispersionModel` (nvalchemiops' Warp kernels, CPU or
GPU) with the reference C6 tables and the functional's Becke–Johnson damping parameters
shipped by ``tad-dftd3`` (read offline; ``pip install 'torchsim-distill[d3]'``)::

    d3 = dispersion_model("d3bj", functional="pbe", device="cpu")   # a torch-sim ModelInterface
    out = d3(state)          # energy [n_systems] eV, forces [n_atoms, 3] eV/Å, stress [n_systems, 3, 3] eV/Å³
    calc = load_student("default", dispersion="d3bj", functional="pbe")  # student + D3, summed per call

The energy is the two-body D3(BJ) sum (Grimme et al. 2010, 2011), in the model's units::

    E = −½ Σ_{i≠j} Σ_T [ s6 C6ᵢⱼ / (r⁶ + R₀⁶) + s8 C8ᵢⱼ / (r⁸ + R₀⁸) ],   R₀ = a1 √(C8ᵢⱼ/C6ᵢⱼ) + a2
    C6ᵢⱼ = Σ_pq C6ʳᵉᶠ L_pq / Σ_pq L_pq,   L_pq = exp(−4 [(CNᵢ − CNᵢᵖ)² + (CNⱼ − CNⱼᵠ)²])
    CNᵢ = Σ_j 1 / (1 + exp(−16 (R_cov,i + R_cov,j) / r + 16)),   C8ᵢⱼ = 3 C6ᵢⱼ √(Qᵢ Qⱼ)

without the three-body (ATM, s9) term, as torch-sim's model and SevenNet's D3 calculator.
Pairs and coordination-number neighbors are those within one ``cutoff``: by default 60 Bohr
(31.75 Å), s-dftd3's two-body cutoff. The original dftd3 program's 95 Bohr moves dense Cu's
D3 energy by 0.4 meV/atom, costs 3× more, and there the float32 sums of nvalchemiops'
kernels (results come back in the model's dtype) drift from a float64 reference by 2e-3 GPa
in stress (1e-4 GPa at 60 Bohr). Elements up to Ra (Z = 88) are covered (the actinides have
more reference systems than the kernels' 5 × 5 grid).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch_sim as ts
from torch_sim.models.interface import ModelInterface
from torch_sim.units import UnitConversion

#: Dispersion corrections known by name.
DISPERSIONS = ("d3bj",)
#: The heaviest element the reference tables are used for (nvalchemiops' grid holds 5
#: reference systems per element; Ac and heavier have up to 7).
MAX_Z = 88
#: The pair (and coordination-number) cutoff, Å: 60 Bohr, s-dftd3's two-body cutoff.
DEFAULT_CUTOFF = 60.0 * UnitConversion.Bohr_to_Ang
_REFS = 5


class UnknownDispersionError(ValueError):
    """A dispersion correction or functional that is not known by name."""


def _require_tad_dftd3():
    try:
        import tad_dftd3
    except ImportError as err:
        raise ModuleNotFoundError(
            "D3 dispersion needs the reference tables of tad-dftd3: pip install 'torchsim-distill[d3]' "
            "(or pip install tad-dftd3)"
        ) from err
    return tad_dftd3


@functools.cache
def functionals() -> tuple[str, ...]:
    """The functionals with D3(BJ) damping parameters in tad-dftd3's table (s-dftd3's names)."""
    import tomllib
    from importlib.resources import files

    _require_tad_dftd3()
    table = tomllib.loads(files("tad_dftd3.param").joinpath("parameters.toml").read_text())
    return tuple(sorted(name for name, entry in table["parameter"].items() if "bj" in entry.get("d3", {})))


def bj_parameters(functional: str) -> dict[str, float]:
    """The D3(BJ) damping parameters ``s6, s8, a1, a2`` (``a2`` in Bohr) of ``functional``
    (s-dftd3's names and synonyms, e.g. ``"pbe"``, ``"r2scan"``, ``"b3lyp"``).

    Raises:
        UnknownDispersionError: no D3(BJ) parameters for that name; the message lists them.
    """
    _require_tad_dftd3()
    from tad_dftd3.param import get_functional_params

    try:
        found = get_functional_params(str(functional), damping="bj", dtype=torch.float64)
    except (KeyError, ValueError) as err:
        raise UnknownDispersionError(
            f"no D3(BJ) parameters for functional {functional!r}; known: {', '.join(functionals())}"
        ) from err
    return {key: float(found[key]) for key in ("s6", "s8", "a1", "a2")}


@functools.cache
def _tables_cpu():
    """nvalchemiops' D3Parameters (atomic units) from tad-dftd3's reference data, elements 0..MAX_Z.

    ``rcov``: D3's covalent radii (Pyykkö–Atsumi, metals −10 %, × 4/3), Bohr; ``r4r2``: √Qᵢ,
    ``Qᵢ = ½ √Zᵢ ⟨r⁴⟩/⟨r²⟩``; ``c6ab[Zi, Zj, p, q]``: reference C6, Hartree·Bohr⁶ (zero where
    a reference system does not exist, which the kernel skips); ``cn_ref[Zi, Zj, p, q]``: the
    coordination number of Zi's reference p.
    """
    _require_tad_dftd3()
    from nvalchemiops.torch.interactions.dispersion import D3Parameters
    from tad_dftd3.data import R4R2
    from tad_dftd3.reference import Reference
    from tad_mctc.data import radii

    n = MAX_Z + 1
    ref = Reference(dtype=torch.float64, device=torch.device("cpu"))
    cn = ref.cn[:n, :_REFS]
    if (ref.cn[:n, _REFS:] >= 0).any():  # a reference system the 5 × 5 grid would drop
        raise RuntimeError("tad-dftd3's reference tables have more than 5 reference systems below Z = 89")
    valid = cn >= 0
    c6 = torch.where(valid[:, None, :, None] & valid[None, :, None, :], ref.c6[:n, :n, :_REFS, :_REFS], 0.0)
    return D3Parameters(
        rcov=radii.COV_D3(dtype=torch.float64)[:n].clone(),
        r4r2=R4R2(dtype=torch.float64)[:n].clone(),
        c6ab=c6.contiguous(),
        cn_ref=cn[:, None, :, None].expand(n, n, _REFS, _REFS).contiguous(),
    )


def d3_tables(device: str | torch.device = "cpu"):
    """The reference tables on ``device`` (built once, from tad-dftd3's data)."""
    return _tables_cpu().to(device=torch.device(device))


class D3BJ(ModelInterface):
    """Two-body D3(BJ) of one functional as a torch-sim model (see the module docstring).

    A thin layer over torch-sim's ``D3DispersionModel``: it refuses elements beyond the
    tables, gives molecules (no cell volume) zero stress instead of dividing by a zero
    volume, and evaluates a batch that mixes periodic and non-periodic systems one pbc
    group at a time (one call for the usual batch).

    Args:
        functional: the functional whose damping parameters to use.
        cutoff: Å, for the pairs and the coordination numbers.
        device, dtype: where it runs and the dtype of its outputs.
    """

    def __init__(
        self,
        functional: str = "pbe",
        *,
        cutoff: float = DEFAULT_CUTOFF,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        compute_stress: bool = True,
    ) -> None:
        super().__init__()
        from torch_sim.models.dispersion import D3DispersionModel

        self.functional = str(functional)
        self.parameters = bj_parameters(functional)
        self.cutoff = float(cutoff)
        self._device = torch.device(device)
        self._dtype = dtype
        self._compute_forces = True
        self._compute_stress = compute_stress
        self._memory_scales_with = "n_atoms_x_density"
        p = self.parameters
        self.d3 = D3DispersionModel(
            a1=p["a1"], a2=p["a2"], s8=p["s8"], s6=p["s6"], d3_params=d3_tables(self._device), cutoff=self.cutoff,
            device=self._device, dtype=dtype, compute_stress=compute_stress,
        )

    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = self.d3.compute_stress = bool(value)

    def forward(self, state: ts.SimState, **kwargs) -> dict[str, torch.Tensor]:
        """Energy ``[n_systems]`` eV, forces ``[n_atoms, 3]`` eV/Å, stress ``[n_systems, 3, 3]`` eV/Å³ (ASE sign)."""
        return self.evaluate(state.positions, state.atomic_numbers, state.row_vector_cell, state.system_idx, state.pbc)

    def evaluate(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        system_idx: torch.Tensor,
        pbc: torch.Tensor | bool = True,
    ) -> dict[str, torch.Tensor]:
        """The tensor-level call: ``positions [n_atoms, 3]`` Å, ``cell [n_systems, 3, 3]`` row
        vectors Å, ``system_idx [n_atoms]`` (systems contiguous), ``pbc`` a bool, ``[3]`` or
        ``[n_systems, 3]``."""
        z_max = int(atomic_numbers.max())
        if z_max > MAX_Z:
            raise ValueError(f"D3 reference tables here cover elements up to Ra (Z = {MAX_Z}); got Z = {z_max}")
        device, dtype = self._device, self._dtype
        positions = positions.detach().to(device=device, dtype=dtype)
        cell = cell.detach().to(device=device, dtype=dtype).reshape(-1, 3, 3)
        system_idx = system_idx.detach().to(device=device, dtype=torch.long)
        n_systems = cell.shape[0]
        pbc_t = torch.as_tensor(pbc, dtype=torch.bool, device=device)
        pbc_t = pbc_t.expand(n_systems, 3) if pbc_t.ndim < 2 else pbc_t
        energy = torch.zeros(n_systems, device=device, dtype=dtype)
        forces = torch.zeros_like(positions)
        stress = torch.zeros(n_systems, 3, 3, device=device, dtype=dtype)
        for flags in torch.unique(pbc_t, dim=0):
            systems = (pbc_t == flags).all(dim=1).nonzero().flatten()
            atoms = torch.isin(system_idx, systems)
            local = torch.searchsorted(systems, system_idx[atoms])  # renumbered 0..k−1
            state = ts.SimState(
                positions=positions[atoms], masses=torch.ones(int(atoms.sum()), device=device, dtype=dtype),
                cell=cell[systems].transpose(-1, -2), pbc=flags, atomic_numbers=atomic_numbers[atoms].to(device),
                system_idx=local,
            )
            with warnings.catch_warnings():  # a molecule's zero volume: its stress is replaced below
                warnings.simplefilter("ignore")
                out = self.d3(state)
            energy[systems] = out["energy"].to(dtype)
            forces[atoms] = out["forces"].to(dtype)
            if self._compute_stress:
                has_volume = (cell[systems].det().abs() > 1e-12)[:, None, None]
                stress[systems] = torch.where(has_volume, out["stress"].to(dtype), 0.0)
        results = {"energy": energy, "forces": forces}
        if self._compute_stress:
            results["stress"] = stress
        return results


def dispersion_model(
    name: str,
    functional: str | None = "pbe",
    *,
    cutoff: float | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> D3BJ:
    """The dispersion correction ``name`` (one of :data:`DISPERSIONS`) for ``functional``.

    Raises:
        UnknownDispersionError: an unknown correction or functional; the message lists the known ones.
    """
    if str(name).lower() not in DISPERSIONS:
        raise UnknownDispersionError(f"unknown dispersion correction {name!r}; known: {', '.join(DISPERSIONS)}")
    if functional is None:
        raise UnknownDispersionError(f"dispersion {name!r} needs a functional (the teacher's), e.g. functional='pbe'")
    return D3BJ(functional, cutoff=DEFAULT_CUTOFF if cutoff is None else cutoff, device=device, dtype=dtype)


def add_dispersion(results: dict[str, torch.Tensor], dispersion: D3BJ, positions, atomic_numbers, cell,
                   system_idx, pbc) -> dict[str, torch.Tensor]:
    """``results`` (a student's) with the dispersion's energy, forces and stress added;
    ``dispersion`` is anything with :meth:`D3BJ.evaluate`'s tensor-level call.

    Per-atom ``energies`` are dropped: the D3 kernel gives energies per system only, and a
    per-atom split that does not add up to the energy would mislead."""
    extra = dispersion.evaluate(positions, atomic_numbers, cell, system_idx, pbc)
    out = dict(results)
    for key in ("energy", "forces", "stress"):
        if key in out:
            out[key] = out[key] + extra[key].to(device=out[key].device, dtype=out[key].dtype)
    out.pop("energies", None)
    return out
