"""How structures are relaxed: :class:`RelaxOptions`, in a module of its own so that the
command line builds its ``relax`` flags from it without importing torch::

    RelaxOptions(fmax=0.02, cell_filter=None)        # positions only
    RelaxOptions.of({"max_steps": 100}, fmax=0.01)   # a dict of some fields, keywords on top
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torchsim_distill.utils.options import cli, coerce

#: Default uncertainty (eV/Å, max over atoms of the committee's force spread) above
#: which a relaxed structure is reported as unreliable: DP-GEN's customary upper trust
#: level for its model deviation (``model_devi_f_trust_hi``). Measure what it catches
#: for a given committee with :func:`torchsim_distill.distill.calibration.calibrate`.
UNCERTAINTY_THRESHOLD = 0.15
#: Structures per chunk by default: a few CPU batches of small cells (or a GPU's several
#: times over), so in-flight batching stays full inside a chunk, while a kill loses at
#: most one chunk's work and memory holds one chunk's structures.
DEFAULT_CHUNK_SIZE = 512
#: What a structure that cannot be relaxed does to the run (see ``relax_structures``).
ON_ERROR = ("skip", "stop")



def _show_filter(cell_filter: str | None) -> str:
    return "none" if cell_filter is None else cell_filter


@dataclass(frozen=True)
class RelaxOptions:
    """How structures are relaxed: the one options object of :func:`relax_structures`, its
    Ray twin :func:`~torchsim_distill.jobs.distributed.relax_structures_on_ray`,
    :func:`checked_input` and ``torchsim-distill relax`` (whose flags are these fields).

    Attributes:
        fmax: force convergence threshold, eV/Å.
        max_steps: FIRE steps at most per structure.
        cell_filter: ``"frechet"`` (relax cell and positions), ``"unit"`` or None
            (positions only, fixed cell).
        max_memory_scaler: batch size limit in torch-sim's ``n_atoms_x_density``
            metric. Default: :data:`CPU_MAX_MEMORY_SCALER` on CPU (raised to the
            largest structure if needed); estimated by torch-sim on CUDA.
        uncertainty_threshold: eV/Å; with a calculator that has ``uncertainty`` on,
            relaxed structures above it are named in a warning. Their uncertainty is
            computed at the end of their chunk; the relaxation itself runs the main student only.
        on_error: ``"skip"``: a structure that fails a check (unreadable frame, unknown
            element, no cell volume with a cell filter, overlapping atoms, non-finite
            positions) or whose relaxation fails goes to ``errors.csv`` and the rest run;
            ``"stop"``: every structure is checked before any work and the first bad one
            raises, writing nothing (all or nothing).
        chunk_size: structures per chunk (single process): the unit of memory, of storing
            and of resuming.
        progress_every: seconds between progress lines when not on a terminal.
        dispersion, functional: a correction on top of a student loaded here (``"d3bj"``
            with the teacher's functional; see :func:`~torchsim_distill.jobs.relax.load_model`);
            a given calculator keeps its own.

    Raises:
        ValueError: a non-positive ``fmax``, negative ``max_steps`` or unknown ``cell_filter``.
    """

    fmax: float = field(default=0.05, metadata=cli("force convergence threshold, eV/A"))
    max_steps: int = field(default=500, metadata=cli("FIRE steps at most per structure"))
    cell_filter: str | None = field(default="frechet", metadata=cli(
        "none: fixed cell", choices=["frechet", "unit", "none"], parse=lambda v: None if v == "none" else v,
        show=_show_filter))
    max_memory_scaler: float | None = field(default=None, metadata=cli(
        "batch limit in torch-sim's n_atoms_x_density metric (default: 2e5 on CPU; estimated by torch-sim on CUDA)",
        type=float))
    uncertainty_threshold: float = UNCERTAINTY_THRESHOLD
    on_error: str = field(default="skip", metadata=cli(
        "skip: a structure that cannot be relaxed goes to errors.csv and the rest run (exit 2 at the end); "
        "stop: check every structure first, the first bad one stops the run and nothing is written (exit 1)",
        choices=list(ON_ERROR)))
    chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, metadata=cli(
        "structures per chunk: relaxed, stored and resumed as a unit (memory holds one chunk; with --ray: see --shard-size)"))
    dispersion: str | None = field(default=None, metadata=cli(
        "add a dispersion correction on top of the student: d3bj (two-body D3 with Becke-Johnson damping; "
        "needs the d3 extra)", choices=["d3bj"]))
    functional: str = field(default="pbe", metadata=cli(
        "with --dispersion: the teacher's functional, whose D3(BJ) parameters are used"))
    progress_every: float = field(default=30.0, metadata=cli(
        "seconds between progress lines when stderr is not a terminal (a batch job's log)"))

    def __post_init__(self) -> None:
        if self.fmax <= 0:
            raise ValueError(f"fmax must be positive (eV/Å), got {self.fmax}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.cell_filter is not None and self.cell_filter not in ("frechet", "unit"):
            raise ValueError(f"cell_filter must be 'frechet', 'unit' or None, got {self.cell_filter!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {self.on_error!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @classmethod
    def of(cls, options: RelaxOptions | dict[str, Any] | None = None, **overrides: Any) -> RelaxOptions:
        """``options`` (an object, a dict of some fields, or None: the defaults) with
        ``overrides`` (fields given as keywords, as the functions took them before) on top."""
        base = coerce(cls, options)
        return replace(base, **overrides) if overrides else base

    def relaxation(self) -> dict[str, Any]:
        """The fields that decide a relaxed structure (what a resumed Ray run keys its shards on)."""
        return {"fmax": self.fmax, "max_steps": self.max_steps, "cell_filter": self.cell_filter,
                "max_memory_scaler": self.max_memory_scaler}
