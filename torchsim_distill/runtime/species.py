"""Map chemical species (atomic numbers) to a student's atom types.

A nequip model names its atom types (``type_names``); these are often element
symbols but need not be (``"Cu_fcc"``). The map is resolved once, into a lookup
table indexed by atomic number, so each call is one gather::

    table = SpeciesMap.resolve(True, ["Au", "Cu"])
    atom_types = table.atom_types(torch.tensor([29, 79, 29]))  # -> [1, 0, 1]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from ase.data import atomic_numbers as _Z_OF
from ase.data import chemical_symbols

SpeciesMapArg = dict[str, str] | bool | None


@dataclass(frozen=True)
class SpeciesMap:
    """A resolved species → atom-type map.

    Attributes:
        type_names: the model's atom type names, in type-index order.
        species_to_type: chemical symbol → type name.
        table: ``[119]`` long tensor, atomic number → type index, ``-1`` if unmapped.
    """

    type_names: tuple[str, ...]
    species_to_type: dict[str, str]
    table: torch.Tensor

    @classmethod
    def resolve(cls, mapping: SpeciesMapArg, type_names: list[str]) -> SpeciesMap:
        """Build the map from the user's ``chemical_species_to_atom_type_map``.

        ``None`` means identity with a warning, ``True`` identity silently, and a
        dict a custom map. A dict naming an unknown element or a type the model
        lacks raises ``ValueError`` here, at construction, not at the first call.
        """
        type_names = list(type_names)
        if mapping is None:
            warnings.warn(
                "chemical_species_to_atom_type_map=None: assuming the model's type "
                f"names {type_names} are chemical symbols. Pass True to confirm this "
                "(and silence the warning) or a dict such as {'Cu': 'Cu_fcc'}.",
                UserWarning,
                stacklevel=3,
            )
            mapping = True
        if mapping is True:
            mapping = {t: t for t in type_names if t in _Z_OF}
            if not mapping:
                raise ValueError(
                    f"identity species map impossible: none of the model's type names "
                    f"{type_names} is a chemical symbol; pass a dict such as "
                    f"{{'Cu': '{type_names[0]}'}}"
                )
        elif not isinstance(mapping, dict):
            raise TypeError(
                "chemical_species_to_atom_type_map must be None, True or a dict "
                f"{{symbol: type_name}}, got {mapping!r}"
            )
        table = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        for symbol, type_name in mapping.items():
            if symbol not in _Z_OF:
                raise ValueError(
                    f"species map key {symbol!r} is not a chemical symbol "
                    "(expected e.g. 'Cu', 'Au')"
                )
            if type_name not in type_names:
                raise ValueError(
                    f"species map sends {symbol!r} to type {type_name!r}, which the "
                    f"model does not have; its types are {type_names}"
                )
            table[_Z_OF[symbol]] = type_names.index(type_name)
        return cls(tuple(type_names), dict(mapping), table)

    def to(self, device: torch.device | str) -> SpeciesMap:
        """Return the same map with its lookup table on ``device``."""
        return SpeciesMap(self.type_names, self.species_to_type, self.table.to(device))

    def atom_types(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atom type index per atom, ``[n_atoms]`` long.

        Raises ``ValueError`` naming every element the map does not cover.
        """
        z = atomic_numbers.long()
        if z.numel() and (z.min() < 1 or z.max() >= self.table.numel()):
            raise ValueError(
                f"atomic numbers must lie in 1..{self.table.numel() - 1}, "
                f"got {sorted(set(z.tolist()))[:10]}"
            )
        types = self.table[z]
        if z.numel() and bool((types < 0).any()):
            missing = sorted({chemical_symbols[i] for i in z[types < 0].unique().tolist()})
            raise ValueError(
                f"element(s) {missing} not covered by the species map "
                f"{self.species_to_type}; the model's types are {list(self.type_names)}. "
                "Pass chemical_species_to_atom_type_map={...} mapping them to one of these."
            )
        return types
