"""On-policy rounds: the student explores, its committee scores, the teacher labels the doubtful.

A student trained once on a fixed sample meets, in use, structures it was never shown:
the ones its own relaxations and MD lead to. Each round (DAgger's on-policy data,
DP-GEN's trust levels) runs the current student on the user's workloads, keeps the
frames whose committee spread lies between a lower and an upper trust level (below:
already known; above: unphysical or exploded), labels them with the teacher and
fine-tunes the student (and its committee) on everything labelled so far::

    opts = RoundOptions(rounds=2, budget=40)
    candidates = explore(student_calc, seeds, n=opts.candidates, seed=1, options=opts)
    picked = select(candidates, committee_uncertainty(student_calc, candidates)["uncertainty"], options=opts)

:func:`~torchsim_distill.distill.run.distill` chains the rounds; this module holds the
pieces, each a function a notebook can call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import read
from torch_sim.models.interface import ModelInterface

from torchsim_distill.distill.calibration import calibrate_on, committee_uncertainty
from torchsim_distill.distill.committee_training import CommitteeOptions, train_members
from torchsim_distill.distill.evaluation import (
    Gates,
    Metrics,
    check_gates,
    compute_metrics,
    dataset_hash,
    predict,
    reference_labels,
)
from torchsim_distill.distill.labeling import label_frames
from torchsim_distill.distill.sampling import SamplingOptions, read_seeds, sample_configurations
from torchsim_distill.distill.training import ModelOptions, TrainingOptions, student_config, train_student
from torchsim_distill.models.student import compiled_student
from torchsim_distill.utils.files import write_frames_atomic, write_text_atomic
from torchsim_distill.utils.options import cli

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOptions:
    """The on-policy rounds of a distillation.

    Attributes:
        rounds: how many rounds after the first student (0: none, today's pipeline).
        candidates: frames collected along the student's trajectories per round.
        budget: most frames labelled by the teacher per round.
        trust_low, trust_high: the committee's force spread (eV/Å, max over atoms) between
            which a frame is worth labelling; also ``trust_low`` is the threshold at which
            the shipped student flags a structure as uncertain.
        temperatures: MD temperatures of the exploration, K (bulk seeds).
        max_per_trajectory: most frames selected from one trajectory (diversity).
        epochs: fine-tuning epochs of the student and of each member per round.
        lr: fine-tuning learning rate (``None``: half the student's).
        structures: the user's own structure files, explored beside the seeds.
    """

    rounds: int = field(default=0, metadata=cli(
        "on-policy rounds: the student's own MD and relaxations, frames its committee doubts labelled by the "
        "teacher (needs --committee >= 2)", metavar="N"))
    candidates: int = 120
    budget: int = field(default=40, metadata=cli("frames labelled per round at most", flag="--round-budget", metavar="N"))
    trust_low: float = field(default=0.1, metadata=cli(
        "eV/A: committee spread from which a frame is worth labelling (and the run-time warning level)"))
    trust_high: float = field(default=1.5, metadata=cli(
        "eV/A: spread above which a frame counts as unphysical and is not labelled"))
    temperatures: tuple[float, ...] = (300.0, 900.0, 1500.0)
    max_per_trajectory: int = 4
    epochs: int = field(default=20, metadata=cli(
        "fine-tuning epochs of the student and each member per round", flag="--round-epochs", metavar="N"))
    lr: float | None = None
    structures: tuple[str, ...] = field(default=(), metadata=cli(
        "your own structures, explored in each round beside the seeds", flag="--round-structures", nargs="*",
        metavar="FILE"))

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.budget < 1 or self.candidates < 1:
            raise ValueError(f"rounds must be ≥ 0 and budget, candidates ≥ 1; got {self}")
        if not 0 <= self.trust_low < self.trust_high:
            raise ValueError(f"need 0 ≤ trust_low < trust_high (eV/Å), got {self.trust_low}, {self.trust_high}")


def trajectory_of(atoms: Atoms) -> str:
    """The trajectory a frame came from (kind, seed, MD temperature or relaxation run): the
    unit of diversity."""
    info = atoms.info
    return f"{info.get('kind')}:{info.get('seed_id')}:{info.get('temperature', '')}:{info.get('relax_run', '')}"


def explore(
    student: ModelInterface,
    seeds: Sequence[Atoms],
    *,
    n: int,
    seed: int,
    options: RoundOptions,
    sampling: SamplingOptions | None = None,
) -> list[Atoms]:
    """Frames along the student's own runs: NVT MD at ``options.temperatures`` and FIRE
    relaxations (with the cell filter) of rattled, strained seeds, ``n`` in all.

    Each frame keeps ``info["kind"]`` (``md`` or ``relax``), ``seed_id`` and, for MD,
    ``temperature``; its ``frame_id`` is made unique by the caller.
    """
    sampling = (sampling or SamplingOptions()).updated(temperatures=tuple(options.temperatures), relax_cell=True)
    frames = sample_configurations(
        list(seeds), student, n_configs=n, seed=seed, kinds=["md", "relax"], options=sampling, progress=False
    )
    finite = [a for a in frames if np.isfinite(a.positions).all() and np.isfinite(a.cell.array).all()]
    if len(finite) < len(frames):
        logger.warning("exploration: %d of %d frames had non-finite positions (dropped)", len(frames) - len(finite), len(frames))
    return finite


def select(frames: Sequence[Atoms], uncertainty: np.ndarray, *, options: RoundOptions) -> tuple[list[int], dict[str, int]]:
    """Indices of the frames to label, most uncertain first, and the counts behind them.

    A frame qualifies when ``trust_low ≤ u < trust_high`` (NaN never does); qualifying
    frames are taken in order of decreasing ``u``, at most ``max_per_trajectory`` from
    one trajectory (:func:`trajectory_of`) and ``budget`` in all.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != (len(frames),):
        raise ValueError(f"{u.shape[0] if u.ndim else 0} uncertainties for {len(frames)} frames")
    inside = (u >= options.trust_low) & (u < options.trust_high)
    taken: list[int] = []
    per_trajectory: dict[str, int] = {}
    for i in sorted(np.flatnonzero(inside), key=lambda i: (-u[i], i)):
        key = trajectory_of(frames[i])
        if per_trajectory.get(key, 0) < options.max_per_trajectory and len(taken) < options.budget:
            taken.append(int(i))
            per_trajectory[key] = per_trajectory.get(key, 0) + 1
    counts = {
        "proposed": len(frames),
        "below_trust": int((u < options.trust_low).sum()),
        "above_trust": int((u >= options.trust_high).sum() + np.isnan(u).sum()),
        "in_trust": int(inside.sum()),
        "selected": len(taken),
        "trajectories": len(per_trajectory),
    }
    return sorted(taken), counts


class RoundState:
    """A round's files in ``rounds/round_{r}/``, each written once, atomically, so that a
    killed round resumes without exploring, scoring or selecting again."""

    def __init__(self, run_dir: Path, r: int) -> None:
        self.r = r
        self.dir = run_dir / "rounds" / f"round_{r}"
        self.candidates_path = self.dir / "candidates.xyz"
        self.scores_path = self.dir / "scores.json"
        self.labels_path = run_dir / "labels" / f"round_{r}.xyz"

    def candidates(self, make) -> list[Atoms]:
        if not self.candidates_path.exists():
            frames = make()
            for i, atoms in enumerate(frames):
                atoms.calc = None
                atoms.info["frame_id"] = f"round{self.r}-{i:05d}"
                atoms.info["round"] = self.r
            write_frames_atomic(frames, self.candidates_path)
        return read(self.candidates_path, index=":") if self.candidates_path.stat().st_size else []

    def scores(self, make) -> dict[str, Any]:
        if not self.scores_path.exists():
            write_text_atomic(self.scores_path, json.dumps(make(), indent=1))
        return json.loads(self.scores_path.read_text())


@dataclass
class StudentState:
    """The student and its committee between rounds: their best checkpoints, and the
    labelled files they were trained on."""

    checkpoint: Path
    members: list[Path]
    train_files: list[Path]


@dataclass(frozen=True)
class RoundsSetup:
    """What every round reuses: where the rounds write, the teacher, the validation files,
    the student's types and options, its committee, the rounds' options, the gates, the
    device, and how many frames a teacher call labels."""

    run_dir: Path
    teacher: ModelInterface
    val_files: Sequence[Path]
    type_names: list[str]
    model: ModelOptions
    training: TrainingOptions
    committee: CommitteeOptions
    options: RoundOptions
    gates: Gates
    device: str = "cpu"
    label_batch_size: int = 16


def run_rounds(
    student: StudentState,
    setup: RoundsSetup,
    *,
    seeds: Sequence[Atoms],
    test_frames: Sequence[Atoms],
    on_round: Callable[[list[dict[str, Any]]], None] = lambda records: None,
) -> tuple[StudentState, list[dict[str, Any]]]:
    """Run ``setup.options.rounds`` on-policy rounds from ``student``; return the last student and
    one record per round (``on_round`` gets the records after each, e.g. to save them).

    Each round's record: frames proposed, below/in/above the trust window, selected and
    labelled; the errors of the current student on the new frames *before* training on
    them (the honest out-of-sample figure) and how its committee ranked them; and the
    held-out errors after the round's fine-tune. A round whose new frames already meet
    the frame gates, or that finds nothing in the trust window, ends the rounds.
    """
    options, training, device = setup.options, setup.training, setup.device
    records: list[dict[str, Any]] = []
    frame_gates = dataclasses.replace(setup.gates, min_speedup=None)
    held_out = dataset_hash(test_frames)  # recorded per round: the same frames judge every round
    for r in range(1, options.rounds + 1):
        calc = compiled_student(student.checkpoint, student.members, device=device)
        state = RoundState(setup.run_dir, r)
        explored = list(seeds) + read_seeds(list(options.structures)) if options.structures else list(seeds)
        candidates = state.candidates(lambda: explore(calc, explored, n=options.candidates, seed=1000 * training.seed + r, options=options))
        scores = state.scores(lambda: {"uncertainty": _uncertainty(calc, candidates).tolist()})
        picked, counts = select(candidates, np.array(scores["uncertainty"], dtype=np.float64), options=options)
        record: dict[str, Any] = {"round": r, **counts}
        if not picked:
            records.append({**record, "labelled": 0, "stopped": "no candidate frame in the trust window"})
            on_round(records)
            break
        label_frames([candidates[i] for i in picked], setup.teacher, state.labels_path,
                     batch_size=setup.label_batch_size, progress=False)
        new = read(state.labels_path, index=":")
        record["labelled"] = len(new)
        before, calibration = _judge_new_frames(calc, new, threshold=options.trust_low)
        record.update(new_frames_before=before, committee_on_new=calibration)
        if not check_gates(_as_metrics(before), frame_gates):
            records.append({**record, "stopped": "the round's new frames already meet the frame gates"})
            on_round(records)
            break
        student = _fine_tune(student, state, setup)
        after = compiled_student(student.checkpoint, device=device)  # members compile when next needed
        record.update(held_out_after=_errors(after, test_frames), held_out_sha256=held_out)
        records.append(record)
        on_round(records)
        logger.info("round %d: %d frames labelled; held-out after: %s", r, len(new), record["held_out_after"])
    return student, records


def _uncertainty(calc, frames: Sequence[Atoms]) -> np.ndarray:
    return committee_uncertainty(calc, frames)["uncertainty"] if frames else np.zeros(0)


def _errors(calc, frames: Sequence[Atoms]) -> dict[str, float | None]:
    """Energy (meV/atom), force (meV/Å) and stress (GPa) MAE of ``calc`` on labelled frames."""
    m = compute_metrics(reference_labels(frames), predict(calc, frames), frames)
    return {"energy_mae": m.energy_mae, "force_mae": m.force_mae, "stress_mae": m.stress_mae, "n_frames": m.n_frames}


def _judge_new_frames(calc, frames: Sequence[Atoms], *, threshold: float) -> tuple[dict, dict]:
    """The student's errors on freshly labelled frames and its committee's calibration on them."""
    return _errors(calc, frames), calibrate_on(calc, frames, threshold=threshold)


def _as_metrics(errors: dict[str, float | None]) -> Metrics:
    return Metrics(errors["energy_mae"], errors["force_mae"], float("nan"), errors["stress_mae"], errors["n_frames"], 0)


def _fine_tune(student: StudentState, state: RoundState, setup: RoundsSetup) -> StudentState:
    """Fine-tune the student and each member on every frame labelled so far (resumable)."""
    training, options, model, type_names, val_files = (
        setup.training, setup.options, setup.model, setup.type_names, setup.val_files
    )
    train_files = [*student.train_files, state.labels_path]
    tuned = dataclasses.replace(
        training, max_epochs=options.epochs, lr=options.lr if options.lr is not None else training.lr / 2,
        init_from=str(student.checkpoint),
    )
    merged = _merged(train_files, state.dir / "train.xyz")  # nequip trains on one dataset
    cfg = student_config([merged], val_files, type_names=type_names, model=model, training=tuned)
    checkpoint = train_student(cfg, state.dir / "student", progress=False)
    members = train_members(
        setup.committee, model, dataclasses.replace(tuned, init_from=None), [merged], val_files, type_names,
        state.dir / "committee", start_from=student.members, epochs=options.epochs,
    ) if student.members else []
    return StudentState(checkpoint, members, train_files)


def _merged(files: Sequence[Path], out: Path) -> Path:
    """The labelled frames of ``files`` in one file, written once (atomically) per round."""
    if not out.exists():
        write_frames_atomic([a for f in files for a in read(f, index=":")], out)
    return out
