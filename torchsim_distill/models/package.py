"""The student as a file, read side: a nequip package's distillation metadata and committee.

A ``.nequip.zip`` written by the distillation (:mod:`torchsim_distill.distill.packaging`
writes it) carries two things nequip ignores: an entry with what the student was
distilled from, and the committee members as nested ``.nequip.zip`` entries. Inference
reads both from here, so loading a student never imports the training code (the metadata itself is read by
:mod:`torchsim_distill.utils.package_metadata`, with ``zipfile`` alone: the student
listing needs no torch)::

    read_distill_metadata("student.nequip.zip")["teacher"]
    members = committee_of("student.nequip.zip")   # extracted into the compile cache
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from torchsim_distill.compile import cache_dir
from torchsim_distill.utils.files import replace_atomic, sha256_file
from torchsim_distill.utils.package_metadata import DISTILL_METADATA_ENTRY as DISTILL_METADATA_ENTRY
from torchsim_distill.utils.package_metadata import read_distill_metadata as read_distill_metadata

#: Folder (inside the package's top folder) holding the committee members' packages.
COMMITTEE_FOLDER = "torchsim_distill_committee"


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
                with replace_atomic(path) as tmp:
                    tmp.write_bytes(data)
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
