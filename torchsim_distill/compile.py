"""Compile a student with nequip's AOTInductor compiler, check it, and cache the result.

This wraps ``nequip-compile`` (it is reused, not reimplemented): we feed it a probe
batch built from the model's own cutoff and types (so the training data need not be
readable), record our build info inside the ``.pt2``, and check the compiled model
against the eager one on a fresh probe batch before anyone uses it::

    report = compile_model("best.ckpt", "student.nequip.pt2", device="cpu", target="batch")
    print(report.max_abs_energy_error, report.max_abs_force_error)
    path = cached_compile("best.ckpt", device="cpu")  # compiled once per (source, torch, device, target)

The cache also knows each artifact's *model* (its weights and settings, :func:`model_fingerprint`):
a checkpoint and the package written from it, or a package rewritten with new metadata, hold
the same model in different bytes, and the second is built by copying the first's artifact
and checking the copy against its own eager model, not by another nequip-compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from torchsim_distill.runtime.artifact import BUILD_INFO_ENTRY, load_artifact
from torchsim_distill.runtime.neighbors import BatchedNeighborList
from torchsim_distill.utils.files import cache_dir, replace_atomic, sha256_file, write_text_atomic
from torchsim_distill.utils.scripts import run_nequip

TARGETS = ("batch", "ase")
CHECK_ENTRY = "torchsim_distill_check.json"
#: Default eager-vs-compiled tolerances (eV for energies, eV/Å for forces) by the artifact's
#: arithmetic. The two models run the same operations in another order (fused kernels), so they
#: differ by round-off of the probe's values (energies of ~10 eV before nequip's float64 shift,
#: forces of ~1 eV/Å): ~1e-13 in float64, ~1e-6 in float32 (eps 1.2e-7). Each tolerance is 10-100x
#: that round-off, and well below a student's own error (meV, tens of meV/Å), so a wrong kernel
#: still fails. TF32 matmuls round to 10 mantissa bits (~1e-3 relative): 5e-3.
FLOAT64_TOL, FLOAT32_TOL, TF32_TOL = 1e-5, 1e-4, 5e-3

logger = logging.getLogger(__name__)


class CompileError(RuntimeError):
    """nequip-compile failed, or the compiled model disagrees with the eager one."""


@dataclass(frozen=True)
class CompileOptions:
    """The nequip-compile options that change the compiled code (and so the cache key).

    Attributes:
        tf32: allow TF32 matmuls on NVIDIA GPUs (faster, ~1e-3 relative error).
        constant_fold: fold constants at compile time.
        inductor_configs: extra ``torch._inductor`` settings, as ``(name, value)`` pairs.
    """

    tf32: bool = False
    constant_fold: bool = False
    inductor_configs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        options: CompileOptions | None = None,
        *,
        tf32: bool | None = None,
        constant_fold: bool | None = None,
        inductor_configs: dict[str, str] | None = None,
    ) -> CompileOptions:
        """``options`` (default: the defaults) with the fields given as keywords on top;
        ``inductor_configs`` as a dict."""
        base = options if options is not None else cls()
        changes: dict[str, Any] = {}
        if tf32 is not None:
            changes["tf32"] = tf32
        if constant_fold is not None:
            changes["constant_fold"] = constant_fold
        if inductor_configs is not None:
            changes["inductor_configs"] = tuple(inductor_configs.items())
        return replace(base, **changes) if changes else base

    def as_dict(self) -> dict[str, Any]:
        """As recorded in build info, reports and cache keys."""
        return {"tf32": self.tf32, "constant_fold": self.constant_fold, "inductor_configs": dict(self.inductor_configs)}

    def argv(self) -> list[str]:
        """nequip-compile's flags for these options."""
        args = ["--tf32" if self.tf32 else "--no-tf32"]
        if self.constant_fold:
            args.append("--constant-fold")
        if self.inductor_configs:
            args += ["--inductor-configs", *[f"{k}={v}" for k, v in self.inductor_configs]]
        return args


@dataclass
class CompileReport:
    """What a compile produced and how well it agrees with the eager model."""

    output: str
    source: str
    device: str
    target: str
    max_abs_energy_error: float  # eV, over the probe systems
    max_abs_force_error: float  # eV/Å
    energy_tol: float
    force_tol: float
    n_probe_systems: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_energy_error <= self.energy_tol and self.max_abs_force_error <= self.force_tol


def _require_source(source: str | Path) -> Path:
    """The source file, which must exist (names of shipped students are resolved above this layer)."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"source model {str(source)!r} does not exist (expected a nequip .ckpt or .nequip.zip)")
    return source


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"torch_version": torch.__version__, "nequip_version": version("nequip")}


def load_eager_model(source: str | Path) -> torch.nn.Module:
    """Load the eager (uncompiled) student from a nequip checkpoint or package file."""
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)  # nequip refuses to build a model before this
    model = load_saved_model(str(source), compile_mode="eager")
    model.eval()
    return model


def probe_batch(
    type_names: list[str], r_max: float, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    """A small batch of periodic systems in atom-type space, for export and checking.

    Three rattled, triclinic fcc-like cells of 4, 8 and 12 atoms with random types,
    nearest-neighbour distance ~r_max/1.8 so each atom has a realistic neighbour count.
    Keys are nequip's: pos, cell, pbc, atom_types, batch, num_atoms (no edges yet).
    """
    from nequip.data import AtomicDataDict as K

    rng = np.random.default_rng(seed)
    a = 1.414 * r_max / 1.8
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    pos, cells, types, batch = [], [], [], []
    for k, reps in enumerate([(1, 1, 1), (2, 1, 1), (3, 1, 1)]):
        frac = np.concatenate([base + np.array(s) for s in np.ndindex(*reps)]) / np.array(reps)
        cell = a * np.diag(reps) @ (np.eye(3) + rng.normal(0, 0.05, (3, 3)))
        xyz = frac @ cell + rng.normal(0, 0.05 * a, frac.shape)
        pos.append(xyz)
        cells.append(cell)
        types.append(rng.integers(0, len(type_names), len(xyz)))
        batch.append(np.full(len(xyz), k))
    return {
        K.POSITIONS_KEY: torch.tensor(np.concatenate(pos), dtype=dtype),
        K.CELL_KEY: torch.tensor(np.stack(cells), dtype=dtype),
        K.PBC_KEY: torch.ones(len(cells), 3, dtype=torch.bool),
        K.ATOM_TYPE_KEY: torch.tensor(np.concatenate(types), dtype=torch.long),
        K.BATCH_KEY: torch.tensor(np.concatenate(batch), dtype=torch.long),
        K.NUM_NODES_KEY: torch.tensor([len(p) for p in pos], dtype=torch.long),
    }


def with_edges(data: dict[str, torch.Tensor], r_max: float) -> dict[str, torch.Tensor]:
    """Add ``edge_index`` and ``edge_cell_shift`` to a probe batch."""
    from nequip.data import AtomicDataDict as K

    pos = data[K.POSITIONS_KEY]
    ei, shift = BatchedNeighborList(r_max)(
        pos, data[K.CELL_KEY], data[K.PBC_KEY], data[K.BATCH_KEY], data[K.ATOM_TYPE_KEY]
    )
    return {**data, K.EDGE_INDEX_KEY: ei, K.EDGE_CELL_SHIFT_KEY: shift.to(pos.dtype)}


def _frame(data: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """System ``k`` of a batch, as nequip's single-frame dict (with batch keys)."""
    from nequip.data import AtomicDataDict as K

    mask = data[K.BATCH_KEY] == k
    offset = int(torch.nonzero(mask)[0])
    emask = mask[data[K.EDGE_INDEX_KEY][0]]
    return {
        K.POSITIONS_KEY: data[K.POSITIONS_KEY][mask],
        K.CELL_KEY: data[K.CELL_KEY][k : k + 1],
        K.PBC_KEY: data[K.PBC_KEY][k : k + 1],
        K.ATOM_TYPE_KEY: data[K.ATOM_TYPE_KEY][mask],
        K.BATCH_KEY: torch.zeros(int(mask.sum()), dtype=torch.long),
        K.NUM_NODES_KEY: data[K.NUM_NODES_KEY][k : k + 1],
        K.EDGE_INDEX_KEY: data[K.EDGE_INDEX_KEY][:, emask] - offset,
        K.EDGE_CELL_SHIFT_KEY: data[K.EDGE_CELL_SHIFT_KEY][emask],
    }


def _write_example_data(data: dict[str, torch.Tensor], path: Path) -> None:
    """Save data the way ``nequip-compile --data-path`` reads it (a TorchScript state dict)."""

    class _Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for k, v in data.items():
                self.register_buffer(k, v.contiguous())

    torch.jit.save(torch.jit.script(_Holder()), str(path))


def _add_entry(path: Path, name: str, payload: dict[str, Any]) -> None:
    """Append a JSON entry inside the archive's top folder (where the AOTI loader ignores it)."""
    with zipfile.ZipFile(path, "a") as zf:
        prefix = next(n for n in zf.namelist() if "/" in n).split("/")[0]
        zf.writestr(f"{prefix}/{name}", json.dumps(payload, indent=1))


def check_against_eager(
    compiled_path: str | Path, eager: torch.nn.Module, *, device: str = "cpu", seed: int = 1
) -> tuple[float, float, int]:
    """Max |ΔE| (eV) and |ΔF| (eV/Å) between compiled and eager on a probe batch."""
    from nequip.data import AtomicDataDict as K

    art = load_artifact(compiled_path, device=device, target=None)
    data = with_edges(probe_batch(art.type_names, art.r_max, seed=seed, dtype=art.model_dtype), art.r_max)
    data = {k: v.to(device) for k, v in data.items()}
    eager = eager.to(device)
    n = int(data[K.NUM_NODES_KEY].numel())
    frames = [data] if art.target == "batch" else [_frame(data, k) for k in range(n)]
    de = df = 0.0
    for fr in frames:
        ref = eager({k: v.clone() for k, v in fr.items()})
        inputs = [fr[k].contiguous() for k in art.input_keys]
        with torch.no_grad():
            out = dict(zip(art.output_keys, art.model(inputs), strict=True))
        energy_error = out[K.TOTAL_ENERGY_KEY].reshape(-1) - ref[K.TOTAL_ENERGY_KEY].reshape(-1).detach()
        de = max(de, float(energy_error.abs().max()))
        df = max(df, float((out[K.FORCE_KEY] - ref[K.FORCE_KEY].detach()).abs().max()))
    return de, df, n


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of what a compile of ``model`` depends on: every parameter and buffer (names,
    dtypes, shapes, bytes), each submodule's class name and plain settings (numbers, strings,
    flags), and the model's metadata. Equal for a checkpoint and the package made from it
    (class names, not the packaged modules' mangled paths, are hashed)."""
    digest = hashlib.sha256(json.dumps(getattr(model, "metadata", {}), sort_keys=True, default=str).encode())
    for name, module in model.named_modules():
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and _plain(v)}
        digest.update(json.dumps([name, type(module).__qualname__, settings], sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> bool:
    """A setting JSON writes the same way every time: numbers, strings, flags, and lists/dicts of them."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def _copy_compiled(artifact: Path, staged: Path) -> None:
    """Copy a compiled model without the entries :func:`compile_model` adds (they are per source)."""
    with zipfile.ZipFile(artifact) as zin, zipfile.ZipFile(staged, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith((BUILD_INFO_ENTRY, CHECK_ENTRY)):
                zout.writestr(item, zin.read(item.filename))


def _same_model_artifact(index: Path) -> Path | None:
    """The artifact an index entry of :func:`cached_compile` points to, if it is still there."""
    if not index.is_file():
        return None
    artifact = index.parent.parent / index.read_text().strip()
    return artifact if artifact.is_file() else None


def compile_model(
    source: str | Path,
    output: str | Path,
    *,
    options: CompileOptions | None = None,
    device: str = "cpu",
    target: str = "batch",
    check: bool = True,
    energy_tol: float | None = None,
    force_tol: float | None = None,
    verbose: bool = True,
    models: Path | None = None,
    **loose: Any,
) -> CompileReport:
    """Compile a nequip checkpoint/package into an AOTInductor ``.nequip.pt2``.

    Ten parameters, each a separate decision: what and where (``source``, ``output``), for
    which machine and caller (``device``, ``target``), the compiler's options
    (``options``), the check (``check``, ``energy_tol``, ``force_tol``), the log
    (``verbose``) and the cache's index (``models``).

    Args:
        source: nequip checkpoint (``.ckpt``) or package (``.nequip.zip``).
        output: where to write; must end with ``.nequip.pt2`` (nequip's rule).
        options: passed to nequip-compile (:class:`CompileOptions`; default: its defaults).
        device: ``"cpu"`` or ``"cuda"``.
        target: ``"batch"`` (torch-sim, many systems) or ``"ase"`` (one system).
        check: compare with the eager model on a probe batch and fail above tolerance.
        energy_tol, force_tol: eV and eV/Å; default by the model's dtype (which the compiled
            model keeps): :data:`FLOAT64_TOL` (1e-5) for float64, :data:`FLOAT32_TOL` (1e-4) for
            float32, :data:`TF32_TOL` (5e-3) with TF32.
        verbose: log progress (what is compiled, and the check) at INFO level.
        models: a folder indexing compiled artifacts by model (:func:`model_fingerprint`, with
            the versions, device, target and options): an artifact of the same model found
            there is copied instead of compiled (and checked, as a compile is), and what is
            compiled is indexed there. :func:`cached_compile` passes its cache's index. A
            compile of a model holds that model's lock in the folder (across processes): a
            second caller with the same model in other bytes waits for it and copies its artifact.
        loose: ``tf32``, ``constant_fold``, ``inductor_configs`` as keywords, the way this
            function took them before ``options`` (deprecated: they warn).

    Raises:
        CompileError: nequip-compile failed, or the check failed (the file is removed).
    """
    source, output = _check_request(source, output, device, target)
    options = _options(options, loose, "compile_model")
    with _IN_PROCESS:
        eager = load_eager_model(source)
    index = None
    model_lock: contextlib.AbstractContextManager = contextlib.nullcontext()
    if models is not None:
        key = {"model": model_fingerprint(eager), **_versions(), "device": device, "target": target, "options": options.as_dict()}
        index = models / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.txt"
        models.mkdir(parents=True, exist_ok=True)
        # one compile per model at a time: a caller compiling this model from other bytes (a
        # checkpoint and its package, two runs training the same student) waits, then copies
        model_lock = FileLock(f"{index}.lock")
    output.parent.mkdir(parents=True, exist_ok=True)
    with model_lock:
        request = _Request(source, output, device, target, options, check, energy_tol, force_tol, verbose)
        return _compile_or_copy(request, eager, index)


def _options(options: CompileOptions | None, loose: dict[str, Any], caller: str) -> CompileOptions:
    """``options`` with the loose keywords of older calls on top (each warns once per call)."""
    unknown = sorted(set(loose) - {"tf32", "constant_fold", "inductor_configs"})
    if unknown:
        raise TypeError(f"{caller}() got unknown keyword(s) {unknown}")
    if loose:
        warnings.warn(f"{caller}({', '.join(f'{k}=' for k in loose)}...) is deprecated: pass "
                      "options=CompileOptions(...) (CompileOptions.of(tf32=..., inductor_configs={...}))",
                      DeprecationWarning, stacklevel=3)
    return CompileOptions.of(options, **loose)


@dataclass(frozen=True)
class _Request:
    """One :func:`compile_model` call's settings, as its body passes them on."""

    source: Path
    output: Path
    device: str
    target: str
    options: CompileOptions
    check: bool
    energy_tol: float | None
    force_tol: float | None
    verbose: bool


def _compile_or_copy(request: _Request, eager: torch.nn.Module, index: Path | None) -> CompileReport:
    """The body of :func:`compile_model`: copy the artifact ``index`` points to, else run
    nequip-compile; check, record, move into place, and index what was compiled."""
    source, output, device, target, options = request.source, request.output, request.device, request.target, request.options
    verbose = request.verbose
    same = _same_model_artifact(index) if index is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / output.name
        if same is not None:
            if verbose:
                logger.info("%s holds the model already compiled as %s: copying it -> %s ...", source, same, output)
            _copy_compiled(same, staged)
            _add_entry(staged, BUILD_INFO_ENTRY, _build_info(source, device, target, options))
        else:
            if verbose:
                logger.info("compiling %s -> %s (%s, target %s) ...", source, output, device, target)
            _run_nequip_compile(source, staged, eager, device=device, target=target, options=options)
        e_tol, f_tol = _tolerances(eager, options.tf32, request.energy_tol, request.force_tol)
        nan = float("nan")
        report = CompileReport(str(output), str(source), device, target, nan, nan, e_tol, f_tol, 0, options.as_dict())
        if request.check:
            with _IN_PROCESS:
                report = _checked(report, staged, eager, verbose=verbose)
        # write the report into the archive too, then move it into place atomically
        _add_entry(staged, CHECK_ENTRY, asdict(report))
        with replace_atomic(output) as tmp_out:
            shutil.copyfile(staged, tmp_out)
    if index is not None and same is None and output.parent == index.parent.parent:
        write_text_atomic(index, output.name)  # relative to the cache, so the cache can move
    return report


def _check_request(source: str | Path, output: str | Path, device: str, target: str) -> tuple[Path, Path]:
    """The source and output paths, refusing a request nequip-compile would fail on."""
    source, output = _require_source(source), Path(output)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not output.name.endswith(".nequip.pt2"):
        raise ValueError(f"output must end with '.nequip.pt2' (nequip's convention), got {output.name!r}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise CompileError("--device cuda asked for, but torch sees no CUDA device on this machine")
    return source, output


def _model_dtype(eager: torch.nn.Module) -> torch.dtype:
    from nequip.nn.graph_model import MODEL_DTYPE_KEY

    return {"float32": torch.float32, "float64": torch.float64}[str(eager.metadata.get(MODEL_DTYPE_KEY, "float64"))]


def _nequip_compile_argv(
    source: Path, staged: Path, example: Path, *, device: str, target: str, options: CompileOptions
) -> list[str | Path]:
    """The arguments of ``nequip-compile`` that build ``staged`` from ``source`` (example data at ``example``)."""
    return [
        source, staged, "--mode", "aotinductor", "--device", device, "--target", target,
        "--data-path", example, *options.argv(),
    ]


def _run_nequip_compile(
    source: Path, staged: Path, eager: torch.nn.Module, *, device: str, target: str, options: CompileOptions
) -> None:
    """Run nequip-compile on a probe batch of the model's own types and cutoff; record our build info."""
    from nequip.nn.graph_model import R_MAX_KEY, TYPE_NAMES_KEY

    r_max, type_names = float(eager.metadata[R_MAX_KEY]), str(eager.metadata[TYPE_NAMES_KEY]).split()
    example = staged.with_name("example_data.pt")
    example_data = with_edges(probe_batch(type_names, r_max, seed=0, dtype=_model_dtype(eager)), r_max)
    if target == "ase":  # single-system target: export traces one frame
        example_data = _frame(example_data, 2)
    _write_example_data(example_data, example)
    argv = _nequip_compile_argv(source, staged, example, device=device, target=target, options=options)
    with _inductor_slot() as folder:
        proc = run_nequip("compile", argv, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder)})
    if proc.returncode != 0:
        log = (proc.stdout + proc.stderr)[-4000:]
        raise CompileError(f"nequip-compile failed (exit {proc.returncode}):\n{log}")
    _add_entry(staged, BUILD_INFO_ENTRY, _build_info(source, device, target, options))


def _build_info(source: Path, device: str, target: str, options: CompileOptions) -> dict[str, Any]:
    """What :func:`compile_model` records inside the archive about how it was built, and from what."""
    return {**_versions(), "device": device, "target": target, "source_sha256": sha256_file(source), "options": options.as_dict()}


def _tolerances(
    eager: torch.nn.Module, tf32: bool, energy_tol: float | None, force_tol: float | None
) -> tuple[float, float]:
    """Energy (eV) and force (eV/Å) tolerances, unless given: by the model's arithmetic (see :data:`FLOAT32_TOL`)."""
    default = TF32_TOL if tf32 else FLOAT64_TOL if _model_dtype(eager) == torch.float64 else FLOAT32_TOL
    return (energy_tol if energy_tol is not None else default, force_tol if force_tol is not None else default)


def _checked(report: CompileReport, staged: Path, eager: torch.nn.Module, *, verbose: bool) -> CompileReport:
    """``report`` with the staged artifact's errors against the eager model; CompileError above tolerance."""
    de, df, n = check_against_eager(staged, eager, device=report.device)
    report = replace(report, max_abs_energy_error=de, max_abs_force_error=df, n_probe_systems=n)
    if verbose:
        logger.info("check vs eager on %d probe systems: max |dE| = %.3e eV, max |dF| = %.3e eV/A", n, de, df)
    if not report.passed:
        raise CompileError(
            f"compiled model disagrees with the eager model: max |dE| = {de:.3e} eV "
            f"(tol {report.energy_tol:g}), max |dF| = {df:.3e} eV/A (tol {report.force_tol:g}); "
            f"not written to {report.output}"
        )
    return report


def stored_check_report(compiled_path: str | Path) -> dict[str, Any]:
    """The eager-vs-compiled check that :func:`compile_model` stored inside the archive."""
    with zipfile.ZipFile(compiled_path) as zf:
        names = [n for n in zf.namelist() if n.endswith(CHECK_ENTRY)]
        if not names:
            raise ValueError(f"{str(compiled_path)!r} holds no check report: it was not built by torchsim_distill")
        return json.loads(zf.read(names[0]))


#: Held while a compile loads or runs models in this process; nequip-compile itself runs in a
#: subprocess outside it, so :func:`cached_compile_all` overlaps only the subprocesses.
_IN_PROCESS = threading.Lock()


def cache_key(
    source: str | Path, *, device: str, target: str, options: CompileOptions | None = None, **loose: Any
) -> str:
    """Key of a compiled artifact: (source hash, torch and nequip versions, device, target, options)."""
    options = _options(options, loose, "cache_key")
    payload = json.dumps(
        {"source": sha256_file(Path(source)), **_versions(), "device": device, "target": target, "options": options.as_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cached_compile(
    source: str | Path,
    *,
    device: str = "cpu",
    target: str = "batch",
    options: CompileOptions | None = None,
    verbose: bool = True,
    **loose: Any,
) -> Path:
    """Return a compiled artifact for ``source``, compiling only on a cache miss
    (``options`` and the deprecated loose keywords as for :func:`compile_model`)."""
    options = _options(options, loose, "cached_compile")
    key = cache_key(_require_source(source), device=device, target=target, options=options)
    path = cache_dir() / "compiled" / f"{key}.nequip.pt2"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # another process compiling this key (a test worker, a notebook): wait for it
        if not path.exists():
            logger.info(
                "first use of %s on %s: compiling it for this machine (nequip-compile: about a minute per "
                "model on a CPU, less on a GPU; once, later runs reuse %s)", Path(source).name, device, path.parent,
            )
            compile_model(source, path, options=options, device=device, target=target, verbose=verbose,
                          models=path.parent / "models")
    return path


def cached_compile_all(sources: Sequence[str | Path], *, workers: int | None = None, **options) -> list[Path]:
    """:func:`cached_compile` for several sources (a student and its committee), their
    nequip-compile runs side by side on up to ``workers`` cores (default: one per core);
    ``options`` as for :func:`cached_compile`. Returns the artifacts in ``sources`` order."""
    workers = max(1, min(len(sources), workers or os.cpu_count() or 1))
    if workers == 1:
        return [cached_compile(s, **options) for s in sources]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda source: cached_compile(source, **options), sources))


@contextlib.contextmanager
def _inductor_slot() -> Iterator[Path]:
    """A TorchInductor cache folder that no other compile, in this process or another, is
    using now. Compiles of one architecture (a student and its committee) write the same
    cache entries, and a nequip-compile reading an entry another is still writing fails
    (seen here as a JSON parse error in ``aoti_load_package``); a folder per running compile,
    reused by later compiles, keeps the cache's speed-up without that race."""
    root = cache_dir() / "inductor"
    root.mkdir(parents=True, exist_ok=True)
    for k in itertools.count():
        lock = FileLock(str(root / f"slot_{k}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # in use: try the next slot
        try:
            yield root / f"slot_{k}"
        finally:
            lock.release()
        return
