"""Teachers by name: what a ``--teacher`` string means, resolved without loading any model.

A teacher is named in one of these forms (:func:`resolve_teacher` turns each into a
:class:`TeacherSpec`; :func:`~torchsim_distill.distill.teachers.load_teacher` builds it)::

    resolve_teacher("7net-l3i5")            # a model the installed sevenn wheel ships, by sevenn's name
    resolve_teacher("7net-mf-0:PBE")        # a multi-fidelity one with its modal (fidelity)
    resolve_teacher("emt"), resolve_teacher("chgnet")   # ASE's EMT; CHGNet when installed
    resolve_teacher("run/student.nequip.zip")           # a file: nequip .nequip.zip/.ckpt/.nequip.pt2,
                                                        # SevenNet .pth, MACE .model
    resolve_teacher("my_pkg.teachers:make")  # a callable returning a torch-sim model or an ASE calculator

and other packages add names through the ``torchsim_distill.teachers`` entry-point group::

    [project.entry-points."torchsim_distill.teachers"]
    my-teacher = "my_pkg.teachers:make"     # the same kind of callable

It lives beside the students' registry, below the distillation, because it reads only
files and package metadata: ``torchsim-distill teachers`` lists them without importing
torch (seconds), and a run's model card records the teacher's package version and file
hash from it. Nothing here downloads: a sevenn model whose checkpoint is not on this
machine is listed as missing, with where to put it.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import logging
import re
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from pathlib import Path
from typing import Any

from torchsim_distill.models.registry import PATH_SUFFIXES, UnknownStudentError, resolve_student, students
from torchsim_distill.utils.files import cache_dir, sha256_file

logger = logging.getLogger(__name__)

#: The entry-point group through which installed packages register teachers.
ENTRY_POINT_GROUP = "torchsim_distill.teachers"

#: The models sevenn knows by name (``sevenn.util.get_available_pretrained_models``), with the
#: ``sevenn._const`` constant holding each checkpoint's path and that path under sevenn's
#: ``pretrained_potentials`` folder (read here without importing sevenn, which imports torch;
#: a test checks the table against the installed sevenn). sevenn looks for a checkpoint
#: there, then under ``~/.cache/sevennet``; only a few ship inside its wheel.
SEVENN_MODELS = {
    "7net-0": ("SEVENNET_0_11Jul2024", "SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth"),
    "7net-0_22may2024": ("SEVENNET_0_22May2024", "SevenNet_0__22May2024/checkpoint_sevennet_0.pth"),
    "7net-l3i5": ("SEVENNET_l3i5", "SevenNet_l3i5/checkpoint_l3i5.pth"),
    "7net-mf-0": ("SEVENNET_MF_0", "SevenNet_MF_0/checkpoint_sevennet_mf_0.pth"),
    "7net-mf-ompa": ("SEVENNET_MF_ompa", "SevenNet_MF_ompa/checkpoint_sevennet_mf_ompa.pth"),
    "7net-omat": ("SEVENNET_omat", "SevenNet_omat/checkpoint_sevennet_omat.pth"),
    "7net-omni": ("SEVENNET_omni", "SevenNet_omni/checkpoint_sevennet_omni.pth"),
    "7net-omni-i8": ("SEVENNET_omni_i8", "SevenNet_omni_i8/checkpoint_sevennet_omni_i8.pth"),
    "7net-omni-i12": ("SEVENNET_omni_i12", "SevenNet_omni_i12/checkpoint_sevennet_omni_i12.pth"),
}
#: Other spellings sevenn accepts for its models (its ``pretrained_name_to_path``).
SEVENN_ALIASES = {"7net-0_11jul2024": "7net-0", "7net-0_11july2024": "7net-0"}
#: The name this package used first for SevenNet-0 (11Jul2024): the same model as ``7net-0``,
#: kept as its own name so that runs, caches and cards that say ``sevennet-0`` stay valid.
SEVENNET_0 = "sevennet-0"

#: Files a teacher may be given as, by suffix, and the family they load with.
FILE_KINDS = {**dict.fromkeys(PATH_SUFFIXES, "nequip"), ".pth": "sevenn", ".model": "mace"}
#: The distribution whose version describes each family's models.
PACKAGES = {"ase": "ase", "sevenn": "sevenn", "chgnet": "chgnet", "nequip": "nequip", "mace": "mace-torch"}
#: What to install for a family whose package is missing.
INSTALL = {"chgnet": "pip install chgnet", "mace": "pip install mace-torch", "sevenn": "pip install sevenn"}
#: ``module:callable`` (dotted names on both sides).
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class UnknownTeacherError(ValueError):
    """A teacher given in none of the forms :func:`resolve_teacher` knows."""


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as named, before it is loaded: its family, its weights, its package.

    Attributes:
        name: its canonical name (``"7net-mf-0:PBE"``, ``"emt"``, a file path, ``"mod:fn"``).
        kind: how it loads: ``"ase"`` (EMT), ``"sevenn"``, ``"chgnet"``, ``"nequip"`` (a
            student), ``"mace"``, ``"callable"`` (``module:callable``) or ``"entry point"``.
        package: the distribution whose version the card records (None: not known).
        file: its weights (checkpoint or model file), when it has its own.
        modal: the fidelity of a multi-fidelity SevenNet model.
        target: the ``module:callable`` it is made by (callables and entry points).
        elements: chemical symbols it covers, when known without loading it.
    """

    name: str
    kind: str
    package: str | None = None
    file: Path | None = None
    modal: str | None = None
    target: str | None = None
    elements: tuple[str, ...] | None = None

    def missing(self) -> str | None:
        """Why it cannot be loaded on this machine (package or weights missing); None: it can."""
        family = "sevenn" if self.kind == "sevenn" else self.kind
        if family in INSTALL and importlib.util.find_spec(family) is None:
            return f"not installed: {INSTALL[family]}"
        if self.file is not None and not self.file.is_file():
            return (f"weights not on this machine: {self.file} is missing, and torchsim_distill never "
                    "downloads: put the file there yourself, or give its path as the teacher")
        return None

    def version(self) -> str | None:
        """The installed version of its package (None: not installed or not known)."""
        if self.package is None:
            return None
        try:
            return version(self.package)
        except PackageNotFoundError:
            return None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these weights cheaply (package version, file size and time): a cached
        measurement of the teacher is reused only while its fingerprint is unchanged."""
        stat = self.file.stat() if self.file is not None and self.file.is_file() else None
        return {"version": self.version(), "file": str(self.file) if self.file else None,
                "size": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None}

    def provenance(self) -> dict[str, Any]:
        """Name, family, package version and file hash, as the model card records them.

        ``file`` is shown from its package's folder when it ships in one; ``sha256`` is the
        hash of its weights file (for ``module:callable``, of the module's
        source file); None when it has none (EMT, CHGNet's packaged weights)."""
        file = self.file
        if file is None and self.target is not None:
            file = _module_file(self.target.split(":", 1)[0])
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "package": self.package,
                                "version": self.version(), "file": _shown(file) if file else None,
                                "sha256": sha256_file(file) if file is not None and file.is_file() else None}
        if self.modal is not None:
            info["modal"] = self.modal
        return info


def _shown(file: Path) -> str:
    """``file`` as a card shows it: inside an installed package (weights in a wheel), from the
    package's folder (``sevenn/pretrained_potentials/...``), not from this machine's
    site-packages; any other path as given (the card shortens the home and working folders)."""
    for entry in sys.path:
        if entry and Path(entry).name in ("site-packages", "dist-packages") and file.is_relative_to(entry):
            return str(file.relative_to(entry))
    return str(file)


def resolve_teacher(name: str | Path, *, modal: str | None = None) -> TeacherSpec:
    """The teacher a name or path stands for, without loading it.

    Args:
        name: any form of the module docstring; names are case-insensitive. ``NAME:MODAL``
            gives a multi-fidelity SevenNet model's modal (``7net-mf-0:PBE``).
        modal: the modal, when not given after the name.

    Raises:
        UnknownTeacherError: a name in none of the forms; the message lists the known
            names and suggests the closest.
        FileNotFoundError: a path with a teacher file's suffix that does not exist.
    """
    text = str(name).strip()
    base, sep, after = text.rpartition(":")
    spec = None
    if isinstance(name, str) and sep and not Path(text).is_file():
        spec = _named(base.lower()) or _file(base)  # NAME:MODAL or FILE.pth:MODAL
        if spec is not None:
            modal = _one_modal(after, modal, text)
        elif _CALLABLE.match(text):
            spec = _callable(text)
    elif isinstance(name, str):
        spec = _named(text.lower())
    if spec is None and not (isinstance(name, str) and sep and _CALLABLE.match(text)):
        spec = _file(text)
    if spec is None:
        raise UnknownTeacherError(_unknown(text))
    if modal is not None:
        if spec.kind != "sevenn":
            raise ValueError(f"teacher {spec.name!r} has no modals (fidelities); only multi-fidelity SevenNet "
                             f"models take one, as in '7net-mf-0:PBE'")
        spec = TeacherSpec(f"{spec.name}:{modal}", "sevenn", "sevenn", spec.file, modal)
    return spec


def teacher_specs() -> dict[str, TeacherSpec]:
    """Every teacher known by name (not files): built-in, sevenn's models, CHGNet, entry points."""
    known = {"emt": _named("emt"), SEVENNET_0: _named(SEVENNET_0)}
    known |= {name: _named(name) for name in SEVENN_MODELS}
    known["chgnet"] = _named("chgnet")
    for ep in teacher_entry_points():
        if ep.name.lower() in known:
            logger.warning("teacher %r of %s is ignored: that name is taken", ep.name, ep.value)
            continue
        known[ep.name.lower()] = _entry_point_spec(ep)
    return known


def _named(key: str) -> TeacherSpec | None:
    """The built-in teacher or entry point named ``key`` (lower case); None: no such name."""
    if key == "emt":
        from ase.calculators.emt import parameters

        return TeacherSpec("emt", "ase", "ase", elements=tuple(sorted(parameters)))
    if key == "chgnet":
        return TeacherSpec("chgnet", "chgnet", "chgnet")
    sevenn_name = SEVENN_ALIASES.get(key, key)
    if sevenn_name.startswith("sevennet-") and key != SEVENNET_0:
        sevenn_name = SEVENN_ALIASES.get("7net-" + key.removeprefix("sevennet-"), "7net-" + key.removeprefix("sevennet-"))
    if key == SEVENNET_0 or sevenn_name in SEVENN_MODELS:
        file = _sevenn_checkpoint("7net-0" if key == SEVENNET_0 else sevenn_name)
        return TeacherSpec(SEVENNET_0 if key == SEVENNET_0 else sevenn_name, "sevenn", "sevenn", file)
    for ep in teacher_entry_points():
        if ep.name.lower() == key:
            return _entry_point_spec(ep)
    try:  # a registered student ("default", those of installed packages)
        path = resolve_student(key) if key in {*students(), "default"} else None
    except (FileNotFoundError, UnknownStudentError):
        path = None
    return TeacherSpec(key, "nequip", "nequip", path) if path is not None else None


def _file(text: str) -> TeacherSpec | None:
    """A teacher given as a file, by its suffix; None: not a teacher file's name."""
    path = Path(text).expanduser()
    kind = next((k for suffix, k in FILE_KINDS.items() if path.name.endswith(suffix)), None)
    if kind is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"teacher file not found: {path}")
    return TeacherSpec(str(path), kind, PACKAGES[kind], path)


def _callable(text: str) -> TeacherSpec:
    module = text.split(":", 1)[0]
    return TeacherSpec(text, "callable", _distribution_of(module), target=text)


def _sevenn_checkpoint(name: str) -> Path:
    """Where sevenn keeps ``name``'s checkpoint: in its wheel, else ``~/.cache/sevennet`` (the
    wheel's place when it is in neither)."""
    relative = SEVENN_MODELS[name][1]
    spec = importlib.util.find_spec("sevenn")
    root = Path(spec.submodule_search_locations[0]) / "pretrained_potentials" if spec else None
    candidates = ([root / relative] if root else []) + [Path.home() / ".cache" / "sevennet" / relative]
    return next((c for c in candidates if c.is_file()), candidates[0])


def sevenn_download_url(name: str) -> str | None:
    """The address sevenn would fetch ``name``'s checkpoint from (to tell a user where to get
    it; never fetched here). Imports sevenn, hence torch."""
    from sevenn import _const

    return _const.CHECKPOINT_DOWNLOAD_LINKS.get(getattr(_const, SEVENN_MODELS[name][0], None))


def _one_modal(after: str, modal: str | None, text: str) -> str:
    if modal is not None and modal != after:
        raise ValueError(f"teacher {text!r} names the modal {after!r} but modal={modal!r} was also given")
    if not after:
        raise ValueError(f"teacher {text!r} ends with ':' but names no modal")
    return after


def teacher_entry_points() -> list[Any]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_spec(ep: Any) -> TeacherSpec:
    dist = getattr(ep, "dist", None)
    package = dist.name if dist is not None else _distribution_of(ep.value.split(":", 1)[0])
    return TeacherSpec(ep.name.lower(), "entry point", package, target=ep.value)


@functools.cache
def _distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module``'s top-level package, if any
    (cached: reading every installed distribution's file list takes a moment)."""
    dists = packages_distributions().get(module.split(".", 1)[0])
    return dists[0] if dists else None


def _module_file(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin not in (None, "built-in", "frozen") else None


def _unknown(text: str) -> str:
    names = sorted({*teacher_specs(), *SEVENN_ALIASES})
    close = difflib.get_close_matches(text.lower(), names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    suffixes = ", ".join(FILE_KINDS)
    return (f"unknown teacher {text!r}{hint}; known names: {', '.join(names)}; or a student's name "
            f"('torchsim-distill models'), a file ({suffixes}), 'module:callable' returning a torch-sim model "
            f"or an ASE calculator, or a torch-sim model or ASE calculator object")


# --- measured costs, cached per machine -----------------------------------------------------


def measurements_file() -> Path:
    """Where ``torchsim-distill teachers --measure`` keeps what it measured on this machine."""
    return cache_dir() / "teachers" / "measured.json"


def cached_measurement(spec: TeacherSpec, device: str = "cpu") -> dict[str, Any] | None:
    """The measurement of ``spec`` on ``device`` cached on this machine, if its weights are unchanged."""
    path = measurements_file()
    try:
        record = json.loads(path.read_text()).get(f"{spec.name}|{device}")
    except (OSError, ValueError):
        return None
    return record if record and record.get("fingerprint") == spec.fingerprint() else None


def record_measurement(spec: TeacherSpec, device: str, record: dict[str, Any]) -> None:
    """Cache ``record`` (what was measured of ``spec`` on ``device``), with its fingerprint."""
    from torchsim_distill.utils.files import write_text_atomic

    path = measurements_file()
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        records = {}
    records[f"{spec.name}|{device}"] = {**record, "fingerprint": spec.fingerprint()}
    write_text_atomic(path, json.dumps(records, indent=1, sort_keys=True) + "\n")
