"""Load a compiled student (an AOTInductor ``.nequip.pt2``) and read its metadata.

The one loader behind every integration. It checks the file before handing it to
torch's C++ loader, so that a wrong file fails with a message saying what to do::

    art = load_artifact("student.nequip.pt2", device="cpu", target="batch")
    outputs = art.model(inputs)  # list of tensors in art.input_keys order
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

#: Extra entry we add to each ``.pt2`` we compile: versions, target, probe check.
BUILD_INFO_ENTRY = "torchsim_distill_build.json"

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
    """Load a compiled student, checking target, device and torch version first.

    Args:
        path: the ``.nequip.pt2`` file.
        device: where to run it; must be the device it was compiled for.
        target: the nequip compile target the caller needs (None: any).
    """
    path = Path(path)
    device = torch.device(device)
    metadata, build_info = read_metadata(path)
    for key in ("r_max", "type_names", "nequip_aoti_inputs", "nequip_aoti_outputs"):
        if key not in metadata:
            raise ArtifactError(
                f"{str(path)!r} lacks nequip metadata {key!r}: it was not made by "
                "nequip-compile (>= 0.17); recompile it with `torchsim-distill compile`"
            )
    input_keys = metadata["nequip_aoti_inputs"].split()
    output_keys = metadata["nequip_aoti_outputs"].split()
    found_target = target_of(input_keys, output_keys)
    if target is not None and found_target != target:
        raise ArtifactError(
            f"{str(path)!r} was compiled for target {found_target!r}, but this needs "
            f"target {target!r}; recompile with `torchsim-distill compile SRC OUT "
            f"--target {target}`"
        )
    compiled_for = torch.device(metadata.get("AOTI_DEVICE_KEY", "cpu"))
    if compiled_for.type != device.type:
        raise ArtifactError(
            f"{str(path)!r} was compiled for device {compiled_for.type!r} and cannot run "
            f"on {device.type!r}; load it with device={compiled_for.type!r} or recompile "
            f"with `--device {device.type}`"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"{str(path)!r} needs CUDA, but torch sees no CUDA device here")
    built_with = build_info.get("torch_version")
    try:
        model = torch._inductor.aoti_load_package(str(path), device_index=device.index if device.index is not None else -1)
    except Exception as err:  # the C++ loader raises RuntimeError or worse on a mismatch
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
    if built_with and built_with != torch.__version__:
        warnings.warn(
            f"{path.name} was compiled with torch {built_with} and runs under "
            f"{torch.__version__}; recompile if results look wrong",
            stacklevel=2,
        )
    per_edge = None
    if metadata.get("per_edge_type_cutoff"):
        from nequip.nn.embedding.utils import cutoff_str_to_fulldict

        per_edge = cutoff_str_to_fulldict(metadata["per_edge_type_cutoff"], metadata["type_names"].split())
    return CompiledArtifact(
        model=model,
        path=path,
        device=device,
        target=found_target,
        r_max=float(metadata["r_max"]),
        type_names=metadata["type_names"].split(),
        model_dtype=_DTYPES[metadata.get("model_dtype", "float64")],
        per_edge_type_cutoff=per_edge,
        input_keys=input_keys,
        output_keys=output_keys,
        metadata=metadata,
        build_info=build_info,
    )
