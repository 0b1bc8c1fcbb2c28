"""The student as a file: a nequip package holding what it was distilled from, and its committee.

A package is built once, complete, and never rewritten: its hash is what a compiled
student records as its source and what the compile cache keys on::

    package_student("best.ckpt", "student.nequip.zip", {"teacher": "emt", ...}, committee=["m1.ckpt"])
    read_distill_metadata("student.nequip.zip")["teacher"]
    members = extract_committee("student.nequip.zip", "committee/")  # [member_1.nequip.zip, ...]

The committee members (students trained beside the shipped one, whose disagreement is
the uncertainty) travel inside the package as nested ``.nequip.zip`` entries; nequip
ignores entries it does not know, so the package loads and compiles as any other.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchsim_distill.compile import cache_dir
from torchsim_distill.utils.files import sha256_file
from torchsim_distill.utils.jsonable import jsonable
from torchsim_distill.utils.package_metadata import DISTILL_METADATA_ENTRY, read_distill_metadata
from torchsim_distill.utils.scripts import run_nequip

#: Folder (inside the package's top folder) holding the committee members' packages.
COMMITTEE_FOLDER = "torchsim_distill_committee"


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
        os.replace(staged, out)
    return out


def _finish(package: Path, metadata: dict[str, Any], members: Sequence[Path]) -> None:
    """Add the metadata entry and the members to a package being built (rewritten in place)."""
    tmp = package.with_name(package.name + ".tmp")
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(tmp, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            if not item.filename.endswith(DISTILL_METADATA_ENTRY) and f"/{COMMITTEE_FOLDER}/" not in item.filename:
                zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/{DISTILL_METADATA_ENTRY}", json.dumps(jsonable(metadata), indent=1))
        for k, member in enumerate(members, start=1):
            zout.write(member, f"{prefix}/{COMMITTEE_FOLDER}/member_{k}.nequip.zip")
    os.replace(tmp, package)


def update_distill_metadata(package: str | Path, **fields: Any) -> None:
    """Add or replace ``fields`` in a packaged student's metadata; every other entry (the
    model, its committee) is copied as it is. The package is replaced atomically."""
    package = Path(package)
    metadata = {**read_distill_metadata(package), **fields}
    tmp = package.with_name(package.name + ".tmp")
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(tmp, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            if not item.filename.endswith(DISTILL_METADATA_ENTRY):
                zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/{DISTILL_METADATA_ENTRY}", json.dumps(jsonable(metadata), indent=1))
    os.replace(tmp, package)


def committee_entries(package: str | Path) -> list[str]:
    """Names of the committee members' entries inside ``package``, in member order."""
    with zipfile.ZipFile(package) as zf:
        names = [n for n in zf.namelist() if f"/{COMMITTEE_FOLDER}/" in n and n.endswith(".nequip.zip")]
    return sorted(names, key=lambda n: int(Path(n).name.split("_")[1].split(".")[0]))


def extract_committee(package: str | Path, dest: str | Path) -> list[Path]:
    """Write the committee members of ``package`` into ``dest``; return their paths
    (empty for a student packaged without a committee). Existing identical files are kept."""
    dest = Path(dest)
    paths = []
    with zipfile.ZipFile(package) as zf:
        for name in committee_entries(package):
            data = zf.read(name)
            path = dest / Path(name).name
            if not (path.is_file() and path.read_bytes() == data):
                dest.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".partial")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            paths.append(path)
    return paths


def committee_of(package: str | Path) -> list[Path]:
    """The committee members' packages inside ``package`` (empty when it has none), extracted
    into the compile cache in a folder named by the package's hash (so their compiled forms
    are cache hits for every later load of the same package)."""
    package = Path(package)
    if not package.name.endswith(".nequip.zip") or not committee_entries(package):
        return []
    return extract_committee(package, cache_dir() / "committees" / sha256_file(package)[:16])
