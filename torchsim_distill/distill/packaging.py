"""The student as a file, write side: a nequip package holding what it was distilled from, and its committee.

A package is built once, complete, and never rewritten: its hash is what a compiled
student records as its source and what the compile cache keys on::

    package_student("best.ckpt", "student.nequip.zip", {"teacher": "emt", ...}, committee=["m1.ckpt"])
    update_distill_metadata("student.nequip.zip", gates={...})

The committee members (students trained beside the shipped one, whose disagreement is
the uncertainty) travel inside the package as nested ``.nequip.zip`` entries; nequip
ignores entries it does not know, so the package loads and compiles as any other.
The read side (metadata, committee) lives below, in :mod:`torchsim_distill.models.package`,
so that inference reads a package without importing the training code.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchsim_distill.models import package as _read_side
from torchsim_distill.models.package import COMMITTEE_FOLDER
from torchsim_distill.utils.files import replace_atomic
from torchsim_distill.utils.jsonable import jsonable
from torchsim_distill.utils.package_metadata import DISTILL_METADATA_ENTRY, read_distill_metadata
from torchsim_distill.utils.scripts import run_nequip

#: Names that moved to :mod:`torchsim_distill.models.package`; importing them from here
#: still works for one release, with a DeprecationWarning.
_MOVED = ("committee_entries", "committee_of", "extract_committee")


def nequip_package(checkpoint: str | Path, out: str | Path) -> Path:
    """``nequip-package build checkpoint out`` (the plain nequip package, nothing added)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = run_nequip("package", ["build", checkpoint, out])
    if proc.returncode != 0:
        raise RuntimeError(f"nequip-package failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out


def package_student(
    checkpoint: str | Path,
    out: str | Path,
    metadata: dict[str, Any],
    *,
    committee: Sequence[str | Path] = (),
) -> Path:
    """Package ``checkpoint`` as ``out`` (a ``.nequip.zip``) with ``metadata`` and its committee.

    Args:
        checkpoint: the student's nequip checkpoint.
        out: the package to write (appears only when complete).
        metadata: JSON-able description (teacher, data, gates, what the committee members are, ...),
            stored as given.
        committee: checkpoints or ``.nequip.zip`` packages of the other committee members
            (the student itself is member 0 and is not repeated).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".package-", dir=out.parent) as tmp:
        staged = nequip_package(checkpoint, Path(tmp) / out.name)
        members = []
        for k, member in enumerate(committee, start=1):
            member = Path(member)
            members.append(member if member.name.endswith(".nequip.zip") else nequip_package(member, Path(tmp) / f"member_{k}.nequip.zip"))
        _finish(staged, metadata, members)
        os.replace(staged, out)  # staged beside ``out``: the rename is atomic
    return out


def _finish(package: Path, metadata: dict[str, Any], members: Sequence[Path]) -> None:
    """Add the metadata entry and the members to a package being built (rewritten in place)."""
    with replace_atomic(package, suffix=".tmp") as tmp, zipfile.ZipFile(package) as zin, zipfile.ZipFile(tmp, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            if not item.filename.endswith(DISTILL_METADATA_ENTRY) and f"/{COMMITTEE_FOLDER}/" not in item.filename:
                zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/{DISTILL_METADATA_ENTRY}", json.dumps(jsonable(metadata), indent=1))
        for k, member in enumerate(members, start=1):
            zout.write(member, f"{prefix}/{COMMITTEE_FOLDER}/member_{k}.nequip.zip")


def update_distill_metadata(package: str | Path, **fields: Any) -> None:
    """Add or replace ``fields`` in a packaged student's metadata; every other entry (the
    model, its committee) is copied as it is. The package is replaced atomically."""
    package = Path(package)
    metadata = {**read_distill_metadata(package), **fields}
    with replace_atomic(package, suffix=".tmp") as tmp, zipfile.ZipFile(package) as zin, zipfile.ZipFile(tmp, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            if not item.filename.endswith(DISTILL_METADATA_ENTRY):
                zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/{DISTILL_METADATA_ENTRY}", json.dumps(jsonable(metadata), indent=1))


def __getattr__(name: str) -> Any:
    """The read side's old home: ``from torchsim_distill.distill.packaging import committee_of``
    keeps working for one release, with a DeprecationWarning."""
    if name in _MOVED:
        warnings.warn(
            f"torchsim_distill.distill.packaging.{name} moved to torchsim_distill.models.package.{name}",
            DeprecationWarning, stacklevel=2,
        )
        return getattr(_read_side, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
