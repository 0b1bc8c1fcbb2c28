"""Load a compiled student (an AOTInductor ``.nequip.pt2``) and read its metadata.

The one loader behind every integration. It checks the file before handing it to
nequip's loader (which imports the custom-op libraries the archive names, sets
nequip's TF32 state from its metadata and runs torch's C++ loader), so that a wrong
file fails with a message saying what to do::

    art = load_artifact("student.nequip.pt2", device="cpu", target="batch")
    outputs = art.model(inputs)  # list of tensors in art.input_keys order
"""

from __future__ import annotations

import json
import random
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchsim_distill.utils.quiet import known_notices_silenced

#: Extra entry we add to each ``.pt2`` we compile: versions, target, probe check.
BUILD_INFO_ENTRY = "torchsim_distill_build.json"

#: nequip loads compiled models only from files with this ending.
SUFFIX = ".nequip.pt2"

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ArtifactError(ValueError):
    """A compiled model file that cannot be used as asked (with the fix in the text)."""


@dataclass
class CompiledArtifact:
    """A loaded compiled student.

    Attributes:
        model: the AOTInductor runner, called with a list of tensors.
        path: where it was loaded from.
        device: the device it was compiled for and runs on.
        target: nequip compile target (``"batch"`` or ``"ase"``).
        r_max: cutoff in Å.
        type_names: atom type names, in type-index order.
        model_dtype: dtype of the model's float inputs.
        per_edge_type_cutoff: ``{center_type: {neighbor_type: cutoff}}`` or None.
        input_keys, output_keys: the order of the runner's inputs and outputs.
        metadata: the raw AOTI metadata strings.
        build_info: what ``torchsim_distill.compile`` recorded, if it built the file.
    """

    model: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    path: Path
    device: torch.device
    target: str
    r_max: float
    type_names: list[str]
    model_dtype: torch.dtype
    per_edge_type_cutoff: dict[str, dict[str, float]] | None
    input_keys: list[str]
    output_keys: list[str]
    metadata: dict[str, str]
    build_info: dict[str, Any] = field(default_factory=dict)

    def per_edge_type_cutoff_matrix(self) -> torch.Tensor | None:
        """Per-edge-type cutoffs as an ``[n_types, n_types]`` tensor, or None."""
        if self.per_edge_type_cutoff is None:
            return None
        n = len(self.type_names)
        m = torch.full((n, n), self.r_max, dtype=torch.float64)
        for a, row in self.per_edge_type_cutoff.items():
            for b, rc in row.items():
                m[self.type_names.index(a), self.type_names.index(b)] = float(rc)
        return m


def _targets() -> dict[str, dict[str, Any]]:
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT

    return COMPILE_TARGET_DICT


def target_of(input_keys: list[str], output_keys: list[str]) -> str:
    """Name the nequip compile target whose inputs and outputs match, or ``"custom"``."""
    for name, spec in _targets().items():
        if list(spec["input"]) == input_keys and list(spec["output"]) == output_keys:
            return name
    return "custom"


def read_metadata(path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Read AOTI metadata and our build info from the archive without loading code.

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: not a ``.pt2`` archive, or one without AOTI metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"compiled model {str(path)!r} does not exist; build one with "
            "`torchsim-distill compile SRC OUT.nequip.pt2 --device cpu --target batch`"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            meta_names = [n for n in names if n.endswith("wrapper_metadata.json")]
            if not meta_names:
                raise ArtifactError(
                    f"{str(path)!r} is a zip archive but not an AOTInductor package "
                    "(no wrapper_metadata.json); recompile it with `torchsim-distill compile`"
                )
            metadata = json.loads(zf.read(meta_names[0]))
            info_names = [n for n in names if n.endswith(BUILD_INFO_ENTRY)]
            build_info = json.loads(zf.read(info_names[0])) if info_names else {}
    except zipfile.BadZipFile as err:
        raise ArtifactError(
            f"{str(path)!r} is not a valid AOTInductor .pt2 archive (corrupt or "
            f"truncated: {err}); recompile it with `torchsim-distill compile`"
        ) from err
    except (json.JSONDecodeError, KeyError, zipfile.LargeZipFile) as err:
        raise ArtifactError(f"{str(path)!r} has unreadable metadata ({err}); recompile it") from err
    return metadata, build_info


def load_artifact(
    path: str | Path,
    device: str | torch.device = "cpu",
    target: str | None = "batch",
) -> CompiledArtifact:
    """Load a compiled student through nequip's loader, checking target, device and torch version first.

    Args:
        path: the ``.nequip.pt2`` file.
        device: where to run it; must be the device it was compiled for.
        target: the nequip compile target the caller needs (None: any).

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: a file that cannot run here as asked (the message says why
            and how to fix it).
    """
    path, device = Path(path), torch.device(device)
    metadata, build_info = read_metadata(path)
    # nequip's imports and one-time global setup; its loader imports torch's extension
    # builder, which logs a known notice on a machine without CUDA
    with _caller_state_kept(), known_notices_silenced():
        from nequip.nn import graph_model

        input_keys, output_keys, found_target = _check_metadata(path, metadata, target)
        _check_device(path, metadata, device)
        runner, loaded = _load_with_nequip(path, metadata, device, input_keys, output_keys, build_info)
    built_with = build_info.get("torch_version")
    if built_with and built_with != torch.__version__:
        warnings.warn(
            f"{path.name} was compiled with torch {built_with} and runs under "
            f"{torch.__version__}; recompile if results look wrong",
            stacklevel=2,
        )
    return CompiledArtifact(
        model=runner,
        path=path,
        device=device,
        target=found_target,
        r_max=float(loaded[graph_model.R_MAX_KEY]),
        type_names=list(loaded[graph_model.TYPE_NAMES_KEY]),
        model_dtype=_DTYPES[metadata.get(graph_model.MODEL_DTYPE_KEY, "float64")],
        per_edge_type_cutoff=loaded[graph_model.PER_EDGE_TYPE_CUTOFF_KEY],
        input_keys=input_keys,
        output_keys=output_keys,
        metadata=metadata,
        build_info=build_info,
    )


def _check_metadata(path: Path, metadata: dict[str, str], target: str | None) -> tuple[list[str], list[str], str]:
    """Input keys, output keys and target of the archive, refusing one nequip cannot load or the wrong target."""
    from nequip.nn import graph_model
    from nequip.utils.aoti_metadata import (
        NEQUIP_AOTI_INPUTS_KEY,
        NEQUIP_AOTI_OUTPUTS_KEY,
        parse_aoti_keys,
    )
    from nequip.utils.global_state import TF32_KEY

    if not path.name.endswith(SUFFIX):
        raise ArtifactError(
            f"{str(path)!r} does not end with {SUFFIX!r}, and nequip loads compiled models only "
            f"from files named *{SUFFIX}: rename it"
        )
    required = (graph_model.R_MAX_KEY, graph_model.TYPE_NAMES_KEY, NEQUIP_AOTI_INPUTS_KEY, NEQUIP_AOTI_OUTPUTS_KEY, TF32_KEY)
    for key in required:
        if key not in metadata:
            raise ArtifactError(
                f"{str(path)!r} lacks nequip metadata {key!r}: it was not made by "
                "nequip-compile (>= 0.17); recompile it with `torchsim-distill compile`"
            )
    input_keys = parse_aoti_keys(metadata[NEQUIP_AOTI_INPUTS_KEY])
    output_keys = parse_aoti_keys(metadata[NEQUIP_AOTI_OUTPUTS_KEY])
    found_target = target_of(input_keys, output_keys)
    if target is not None and found_target != target:
        raise ArtifactError(
            f"{str(path)!r} was compiled for target {found_target!r}, but this needs "
            f"target {target!r}; recompile with `torchsim-distill compile SRC OUT "
            f"--target {target}`"
        )
    return input_keys, output_keys, found_target


def _compiled_for(metadata: dict[str, str]) -> str:
    """The device type the archive was compiled for, as torch records it."""
    return metadata.get("AOTI_DEVICE_KEY", "cpu")


def _check_device(path: Path, metadata: dict[str, str], device: torch.device) -> None:
    """Refuse a device the archive was not compiled for, or CUDA where there is none."""
    compiled_for = torch.device(_compiled_for(metadata))
    if compiled_for.type != device.type:
        raise ArtifactError(
            f"{str(path)!r} was compiled for device {compiled_for.type!r} and cannot run "
            f"on {device.type!r}; load it with device={compiled_for.type!r} or recompile "
            f"with `--device {device.type}`"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"{str(path)!r} needs CUDA, but torch sees no CUDA device here")


def _load_with_nequip(
    path: Path,
    metadata: dict[str, str],
    device: torch.device,
    input_keys: list[str],
    output_keys: list[str],
    build_info: dict[str, Any],
) -> tuple[Callable[[list[torch.Tensor]], list[torch.Tensor]], dict[str, Any]]:
    """nequip's loader, its failures as ArtifactErrors: the list-in/list-out runner and nequip's parsed metadata.

    nequip's loader imports the custom-op libraries recorded in the archive before
    torch's C++ loader runs (a student compiled with custom ops does not load
    without them), checks the input and output keys, and sets nequip's global TF32
    state from the metadata. It compares devices by type only (``"cuda"``), so a
    device index is chosen by making it the current CUDA device while loading.
    """
    from nequip.model.inference_models import load_compiled_model

    on_index = torch.cuda.device(device.index) if device.type == "cuda" and device.index is not None else nullcontext()
    try:
        with on_index:
            wrapper, loaded = load_compiled_model(str(path), _compiled_for(metadata), input_keys, output_keys)
    except ImportError as err:
        raise ArtifactError(
            f"{str(path)!r} needs the custom-op library {err.name or str(err)!r}, which cannot be "
            f"imported here ({err}); install it, or recompile the model without custom ops"
        ) from err
    except Exception as err:  # the C++ loader raises RuntimeError or worse on a mismatch
        built_with = build_info.get("torch_version")
        versions = (
            f"it was built with torch {built_with}; this is torch {torch.__version__}"
            if built_with
            else f"this is torch {torch.__version__}"
        )
        raise ArtifactError(
            f"torch cannot load {str(path)!r} ({versions}): {str(err).splitlines()[0][:300]}. "
            "Compiled models are tied to the torch version and machine that built them: "
            "recompile it here with `torchsim-distill compile`"
        ) from err
    # nequip's DictInputOutputWrapper turns dicts into lists around this runner: we
    # call the runner with lists directly (no per-call dict round trip)
    return wrapper.model, loaded


@contextmanager
def _caller_state_kept() -> Iterator[None]:
    """Keep the caller's default dtype and random streams through nequip's imports and loader.

    The first nequip global-state call in a process (inside its loader) also sets
    torch's default dtype to float64 and seeds Python's, NumPy's and torch's RNGs
    with 123, and importing nequip draws from Python's RNG. A loader must not change
    the numerics or the random numbers of the code around it; the TF32 setting,
    which the archive's metadata decides, is kept.
    """
    dtype = torch.get_default_dtype()
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)
            random.setstate(py_state)
            np.random.set_state(np_state)
