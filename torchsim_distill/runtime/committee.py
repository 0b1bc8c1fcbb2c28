"""Committee uncertainty: how much a student and its sibling students disagree.

A committee is the main student (member 0) and K−1 more students trained differently
(another seed, other data), all compiled with ``--target batch`` for one device. Where
they disagree the main student is guessing: the spread of their forces is DP-GEN's
*model deviation*::

    F̄_i = (1/K) Σ_k F_k,i                        mean force on atom i        [N, 3]  eV/Å
    σ_i = sqrt( (1/K) Σ_k |F_k,i − F̄_i|² )       force spread of atom i      [N]     eV/Å
    u_s = max_{i ∈ s} σ_i                         structure uncertainty       [B]     eV/Å
    ε_s = std_k( E_k,s / n_s )                    energy-per-atom spread      [B]     eV/atom

(population standard deviations: divide by K). The pure functions take member outputs
stacked on a leading ``K`` axis; :func:`load_committee` and :func:`committee_spread` run
the compiled members on the inputs the main student was given, so no member builds its
own neighbor list::

    members = load_committee(["seed1.nequip.pt2", "seed2.nequip.pt2"], like=main_artifact)
    spread = committee_spread(members, inputs, energy=main_energy, forces=main_forces)
    spread["uncertainty"], spread["energy_uncertainty"]  # [B] eV/Å, [B] eV/atom
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from torchsim_distill.runtime.artifact import ArtifactError, CompiledArtifact, load_artifact

# -- formulas ----------------------------------------------------------------------------


def force_spread(member_forces: torch.Tensor) -> torch.Tensor:
    """Per-atom force spread ``σ_i = sqrt( mean_k |F_k,i − F̄_i|² )`` (DP-GEN's model deviation).

    Args:
        member_forces: ``[K, N, 3]`` forces of the K members, eV/Å.

    Returns:
        ``[N]`` eV/Å; zero when all members agree (and for a committee of one).
    """
    if member_forces.ndim != 3 or member_forces.shape[-1] != 3:
        raise ValueError(f"member_forces must be [K, N, 3], got {tuple(member_forces.shape)}")
    deviation = member_forces - member_forces.mean(dim=0, keepdim=True)  # F_k,i − F̄_i
    return deviation.square().sum(dim=-1).mean(dim=0).sqrt()


def max_per_system(values: torch.Tensor, system_idx: torch.Tensor, n_systems: int) -> torch.Tensor:
    """``u_s = max_{i: system_idx[i] = s} values[i]``: per-structure max of a per-atom quantity.

    Args:
        values: ``[N]`` per-atom values (non-negative, e.g. :func:`force_spread`).
        system_idx: ``[N]`` structure of each atom, in ``0..n_systems-1``.
        n_systems: number of structures ``B``.

    Returns:
        ``[B]``; zero for a structure without atoms.
    """
    if values.shape != system_idx.shape:
        raise ValueError(f"values {tuple(values.shape)} and system_idx {tuple(system_idx.shape)} differ in shape")
    out = torch.zeros(n_systems, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, system_idx.to(values.device, torch.long), values, reduce="amax", include_self=False)


def energy_spread(member_energies: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """Energy-per-atom spread ``ε_s = sqrt( mean_k (E_k,s/n_s − mean_k' E_k',s/n_s)² )``.

    Args:
        member_energies: ``[K, B]`` total energies of the K members, eV.
        n_atoms: ``[B]`` atoms per structure.

    Returns:
        ``[B]`` eV/atom (population std over members).
    """
    if member_energies.ndim != 2 or n_atoms.shape != member_energies.shape[1:]:
        raise ValueError(
            f"member_energies must be [K, B] and n_atoms [B], got {tuple(member_energies.shape)} "
            f"and {tuple(n_atoms.shape)}"
        )
    per_atom = member_energies / n_atoms.to(member_energies)  # E_k,s / n_s
    return per_atom.std(dim=0, correction=0)


def structure_uncertainty(
    member_energies: torch.Tensor, member_forces: torch.Tensor, system_idx: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Both spreads of a batch: ``uncertainty [B]`` eV/Å (max over atoms of σ_i) and ``energy_uncertainty [B]`` eV/atom.

    Args:
        member_energies: ``[K, B]`` eV.
        member_forces: ``[K, N, 3]`` eV/Å.
        system_idx: ``[N]`` structure of each atom.
    """
    n_systems = member_energies.shape[1]
    n_atoms = torch.bincount(system_idx.to(torch.long), minlength=n_systems)
    return {
        "uncertainty": max_per_system(force_spread(member_forces), system_idx, n_systems),
        "energy_uncertainty": energy_spread(member_energies, n_atoms.to(member_energies.device)),
    }


# -- members -----------------------------------------------------------------------------


def load_committee(
    members: Sequence[str | Path | CompiledArtifact], *, like: CompiledArtifact
) -> list[CompiledArtifact]:
    """Load (or take) the committee's other members and check they can share the main student's inputs.

    Args:
        members: compiled ``--target batch`` students, as files or loaded artifacts.
        like: the main student; members load on its device.

    Raises:
        ArtifactError: a member compiled for another target or device, or with other
            type names, cutoff or per-edge-type cutoffs than the main student (the
            message names the member and what differs).
        FileNotFoundError: a member file that does not exist.
    """
    if isinstance(members, (str, Path, CompiledArtifact)):
        members = [members]
    loaded = []
    for member in members:
        artifact = member if isinstance(member, CompiledArtifact) else load_artifact(member, device=like.device, target="batch")
        check_member(artifact, like=like)
        loaded.append(artifact)
    return loaded


def check_member(member: CompiledArtifact, *, like: CompiledArtifact) -> None:
    """Refuse a member that cannot run on the main student's prepared inputs (see :func:`load_committee`)."""
    differences = []
    if member.target != "batch":
        differences.append(f"target {member.target!r} (needs 'batch')")
    if member.device != like.device:
        differences.append(f"device {member.device} (main student: {like.device})")
    if list(member.type_names) != list(like.type_names):
        differences.append(f"type_names {list(member.type_names)} (main student: {list(like.type_names)})")
    if member.r_max != like.r_max:
        differences.append(f"r_max {member.r_max} Å (main student: {like.r_max} Å)")
    if member.per_edge_type_cutoff != like.per_edge_type_cutoff:
        differences.append(
            f"per_edge_type_cutoff {member.per_edge_type_cutoff} (main student: {like.per_edge_type_cutoff})"
        )
    if differences:
        raise ArtifactError(
            f"committee member {str(member.path)!r} cannot share the main student's neighbor list "
            f"and atom types: it has {'; '.join(differences)}. Committee members must be compiled "
            "with --target batch for the same device from students with the same type names and cutoffs"
        )


def committee_spread(
    members: Sequence[CompiledArtifact],
    inputs: dict[str, torch.Tensor],
    *,
    energy: torch.Tensor,
    forces: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Run each member once on the main student's prepared inputs and return the spreads.

    Args:
        members: the other members (checked by :func:`load_committee`).
        inputs: the main student's inputs by nequip field name (neighbor list included).
        energy: ``[B]`` main student's energies, eV (member 0).
        forces: ``[N, 3]`` main student's forces, eV/Å (member 0).

    Returns:
        ``uncertainty [B]`` eV/Å and ``energy_uncertainty [B]`` eV/atom (see the module
        formulas), in ``forces``' dtype and on its device.
    """
    from nequip.data import AtomicDataDict as K

    energies, all_forces = [energy.reshape(-1)], [forces]
    with torch.no_grad():
        for member in members:
            # float inputs follow each member's dtype (a no-op when it equals the main student's)
            args = [
                inputs[key].to(member.model_dtype) if inputs[key].is_floating_point() else inputs[key]
                for key in member.input_keys
            ]
            out = dict(zip(member.output_keys, member.model(args), strict=True))
            energies.append(out[K.TOTAL_ENERGY_KEY].reshape(-1).to(forces.dtype))
            all_forces.append(out[K.FORCE_KEY].to(forces.dtype))
    return structure_uncertainty(torch.stack(energies), torch.stack(all_forces), inputs[K.BATCH_KEY])
