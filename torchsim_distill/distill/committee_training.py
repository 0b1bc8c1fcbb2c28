"""The committee: students trained beside the shipped one, whose disagreement is the uncertainty.

Member 0 is the student that ships; members 1..K-1 differ from it in seed, data order
and (bootstrap) data, so they agree where the training data speaks and drift apart
where it does not (DP-GEN's "model deviation")::

    opts = CommitteeOptions(size=3)                      # the shipped student + 2 members
    members = train_members(opts, model, training, ["labels/train.xyz"], ["labels/val.xyz"],
                            type_names, out_dir / "committee", start_from=[best, best])

Two kinds of member, named in the model card:
- ``"finetune"`` (cheap, the default): a fine-tune of the first student with seed ``k``
  on a bootstrap resample of the training frames, for ``epochs`` epochs;
- ``"scratch"``: a fresh model with seed ``k`` on a bootstrap resample, trained as long as
  the first (K times the training cost, more independent members).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.io import read

from torchsim_distill.distill.training import ModelOptions, TrainingOptions, student_config, train_student
from torchsim_distill.utils.files import write_frames_atomic
from torchsim_distill.utils.options import cli

MODES = ("finetune", "scratch")


@dataclass(frozen=True)
class CommitteeOptions:
    """How many members and how they are trained.

    Attributes:
        size: students in the committee, the shipped one included (1: no committee).
        mode: ``"finetune"`` or ``"scratch"`` (see the module docstring).
        epochs: epochs of a member's training; ``None``: a quarter of the student's
            (at least 5) for fine-tunes, the student's own for fresh members.
        lr: learning rate of a fine-tune (``None``: the student's); a fine-tune restarts
            the optimiser, so a full learning rate moves the member off the student's minimum.
        bootstrap: train each member on a resample (with replacement) of the training frames.
    """

    size: int = field(default=1, metadata=cli(
        "train K students (the shipped one and K-1 fine-tuned members) whose force spread is the uncertainty; 1: none",
        flag="--committee", metavar="K"))
    mode: str = "finetune"
    epochs: int | None = None
    lr: float | None = None
    bootstrap: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a committee has at least 1 member (the student), got size {self.size}")
        if self.mode not in MODES:
            raise ValueError(f"committee mode must be one of {MODES}, got {self.mode!r}")

    def member_epochs(self, student_epochs: int) -> int:
        if self.epochs is not None:
            return self.epochs
        return max(5, student_epochs // 4) if self.mode == "finetune" else student_epochs

    def describe(self) -> str:
        """One sentence for the model card: what the members are."""
        if self.size == 1:
            return "no committee"
        what = "fine-tunes of the student" if self.mode == "finetune" else "students trained from scratch"
        data = "on bootstrap resamples of the training frames" if self.bootstrap else "on the training frames"
        return f"the student and {self.size - 1} members: {what} with seeds 1..{self.size - 1}, {data}"


def bootstrap_resample(files: Sequence[str | Path], out: Path, seed: int) -> Path:
    """Write a resample with replacement of the labelled frames in ``files`` to ``out``
    (as many frames as there are; deterministic in ``seed``); reused if it exists."""
    if out.exists():
        return out
    frames = [a for f in files for a in read(f, index=":")]
    picks = np.random.default_rng(seed).integers(0, len(frames), size=len(frames))
    return write_frames_atomic([frames[i] for i in sorted(picks)], out)


def train_members(
    options: CommitteeOptions,
    model: ModelOptions,
    training: TrainingOptions,
    train_files: Sequence[str | Path],
    val_files: Sequence[str | Path],
    type_names: list[str],
    out_dir: Path,
    *,
    start_from: Sequence[str | Path | None],
    epochs: int,
) -> list[Path]:
    """Train members 1..K-1 into ``out_dir/member_k``; return their best checkpoints.

    Nine parameters: the committee's, model's and training's options, the data (training
    and validation files, types), where the members go, and per call what each starts from
    and for how long (a distillation's first committee and each round's differ in both).

    Args:
        options: the committee.
        model, training: the student's own options (members share its architecture).
        train_files, val_files: labelled frames.
        type_names: atom types.
        out_dir: where the members' runs go (each resumes from its ``last.ckpt``).
        start_from: per member, the checkpoint it fine-tunes from (``None``: a fresh
            model, only for ``"scratch"`` members in their first training).
        epochs: each member's epochs (see :meth:`CommitteeOptions.member_epochs`).
    """
    if len(start_from) != options.size - 1:
        raise ValueError(f"start_from names {len(start_from)} checkpoints for {options.size - 1} members")
    best = []
    for k, init in enumerate(start_from, start=1):
        member_dir = out_dir / f"member_{k}"
        files = [bootstrap_resample(train_files, member_dir / "train_bootstrap.xyz", training.seed + k)] if options.bootstrap else list(train_files)
        fresh = init is None
        member_training = dataclasses.replace(
            training,
            seed=training.seed + k,
            max_epochs=epochs,
            lr=options.lr if options.lr is not None and not fresh else training.lr,
            init_from=None if fresh else str(init),
        )
        cfg = student_config(files, val_files, type_names=type_names, model=model, training=member_training)
        best.append(train_student(cfg, member_dir, progress=False))
    return best
