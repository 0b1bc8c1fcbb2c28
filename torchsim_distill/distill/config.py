"""What a distillation run depends on: :class:`DistillConfig`, one options object per concern.

    config = DistillConfig(teacher="emt", structures=["seeds.xyz"], out="runs/cuau", size="medium")
    config.model.size, config.training.max_epochs, config.committee.size   # "medium", 100, 1
    DistillConfig.from_dict(json.loads(Path("runs/cuau/run.json").read_text())["config"], run_dir="runs/cuau")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from torchsim_distill.distill.acceptance import AcceptanceOptions
from torchsim_distill.distill.committee_training import CommitteeOptions
from torchsim_distill.distill.evaluation import Gates
from torchsim_distill.distill.exploration import ExploreOptions
from torchsim_distill.distill.rounds import RoundOptions
from torchsim_distill.distill.sampling import KINDS, SamplingOptions
from torchsim_distill.distill.teachers import TeacherOptions
from torchsim_distill.distill.training import PRECISIONS, ModelOptions, TrainingOptions
from torchsim_distill.utils.durations import parse_duration
from torchsim_distill.utils.options import cli, coerce
from torchsim_distill.utils.run_paths import resolve_in_run

#: The fields of :class:`ModelOptions` and :class:`TrainingOptions` that ``DistillConfig``
#: also takes as flat keywords (its fields before they were grouped; old ``run.json`` files,
#: recipes and notebooks use them): ``DistillConfig(..., size="medium", lr=0.005)``.
FLAT_OPTIONS = {
    **{name: "model" for name in ("student", "size", "r_max", "precision", "energy_shifts")},
    **{name: "training" for name in (
        "max_epochs", "batch_size", "lr", "atomic_energy_weight", "stress_weight", "energy_weight",
        "force_huber_delta", "lr_schedule", "init_from", "stress",
    )},
}


@dataclass(init=False)
class DistillConfig:
    """Everything a distillation run depends on (saved in ``run.json``), one options object
    per concern.

    Every options field takes its object, a dict of some of its fields (as ``run.json``
    holds them) or, where it has one, its count; the model's and the training's fields are
    also taken flat, as before they were grouped (:data:`FLAT_OPTIONS`)::

        DistillConfig(teacher="emt", structures=["seeds.xyz"], out="run", size="medium", lr=0.005)
        DistillConfig(teacher="emt", structures=["seeds.xyz"], out="run",
                      model=ModelOptions(size="medium", r_max=5.0), training=TrainingOptions(lr=0.005))

    A field declared with :func:`~torchsim_distill.utils.options.cli` metadata (here or in
    the options objects) is also a flag of ``torchsim-distill distill`` and of the command
    line the advice prints: a new option is one field.

    Attributes:
        teacher: a teacher's name or file, or ``module:callable``: any form
            :func:`~torchsim_distill.distill.teachers.load_teacher` takes by name.
        structures: seed structure files (any format ASE reads).
        out: run directory.
        teacher_options: how the teacher is run (:class:`~torchsim_distill.distill.teachers.TeacherOptions`):
            with a dispersion correction on top (``--teacher-dispersion d3bj``) or as it is.
            It is part of :attr:`teacher_id`, which keys every cache of the teacher's results.
        model: the student network (:class:`~torchsim_distill.distill.training.ModelOptions`;
            default: its defaults with ``r_max`` 5 Å). ``energy_shifts=None`` fits them to the
            training labels (a fine-tune, ``init_from``, keeps those of the model it starts from).
            ``precision`` is kept by the compiled student;
            :class:`~torchsim_distill.runtime.calculator.DistilledTorchSimCalc` casts its inputs to
            it and returns outputs in the state's dtype.
        training: how it is trained (:class:`~torchsim_distill.distill.training.TrainingOptions`;
            default: its defaults with 100 epochs); its ``seed`` is the run's :attr:`seed`.
        sampling: how the sampler perturbs (:class:`~torchsim_distill.distill.sampling.SamplingOptions`).
        explore: who drives the sample's MD and relaxations
            (:class:`~torchsim_distill.distill.exploration.ExploreOptions`): the teacher, or a
            quick first student trained on the static frames (the teacher then labels only);
            ``auto`` picks the student for an expensive teacher.
        committee: the committee (:class:`~torchsim_distill.distill.committee_training.CommitteeOptions`,
            or its size; 1: none).
        rounds: the on-policy rounds (:class:`~torchsim_distill.distill.rounds.RoundOptions`,
            or their number; 0: none).
        acceptance: how the acceptance suite measures the properties of teacher and student
            (equilibrium, elastic, vacancy, formation, stability, RDF) and gates on them
            (:class:`~torchsim_distill.distill.acceptance.AcceptanceOptions`; ``False`` or ``None``: skipped).
        gates: accuracy thresholds for the held-out frames (:class:`~torchsim_distill.distill.evaluation.Gates`).
        n_configs: frames sampled around the seeds.
        seed: seed of sampling, splitting and training.
        kinds: sampling kinds (None: all that apply).
        fractions: train/val/test shares of the seed structures.
        label_batch_size: systems per teacher call when labeling.
        train_exclude_kinds: sampling kinds kept out of training and validation (the
            held-out split keeps them, so the card still scores them): far-from-equilibrium
            kinds (``"compress"``, ``"large_rattle"``) that a small student cannot fit
            without losing accuracy near equilibrium; its committee flags them instead.
        train_dir: subdirectory of ``out`` for this training run, so that a fine-tune
            reuses the run's frames and labels next to the run it starts from.
        extra_train: labelled frames (files ASE reads, with the teacher's energy, forces
            and, when the run trains on stress, stress) added to the training split of the
            student, its committee and its rounds: data labelled elsewhere (another run's
            seeds, structures near the properties a user computes, DFT of the same level).
            The validation and test splits stay the run's own, so the card still scores
            structures it never trained on. ``train_exclude_kinds`` applies to them too.
        device: where the teacher and the compiled student run.
        property_structures: the structures the acceptance suite measures (files; None: the
            seeds). Its MD and relaxations run the teacher on every one of them, so a few
            small cells (the phases and alloys whose properties matter) keep it affordable
            when the seeds are many or large.
        budget: plan the run to fit this wall time (``"45m"``, ``"1h"``, ``"1.5h"``,
            ``"3600s"``; see :mod:`~torchsim_distill.distill.budget`): the configs, epochs,
            size, committee and rounds not given explicitly are chosen from measured costs,
            and the plan is recorded in ``run.json`` and the card. ``None``: as given.
        ray: label with teacher actors on a Ray cluster (``"local"``, ``"auto"`` or its
            address; see :mod:`~torchsim_distill.distill.ray_labeling`); the other stages
            run in this process. None: everything here.
    """

    teacher: str = field(metadata=cli(
        "a teacher: emt, sevennet-0, a model of the installed sevenn (7net-l3i5, 7net-mf-0:PBE, ...), chgnet, a "
        "student or model file, module:callable, or an entry point ('torchsim-distill teachers' lists them)",
        required=True, always=True))
    structures: list[str] = field(metadata=cli("seed structure files ASE reads", nargs="+", required=True, always=True))
    out: str = field(metadata=cli("run directory (rerun to resume)", required=True, always=True))
    teacher_options: TeacherOptions = field(default_factory=TeacherOptions)
    model: ModelOptions = field(default_factory=lambda: ModelOptions(r_max=5.0))
    training: TrainingOptions = field(default_factory=lambda: TrainingOptions(max_epochs=100))
    n_configs: int = field(default=500, metadata=cli(
        "frames sampled from the seeds and labelled by the teacher", always=True))
    seed: int = field(default=0, metadata=cli("random seed (sampling, split, training)", always=True))
    device: str = field(default="cpu", metadata=cli("cpu or cuda (teacher, training and student)", always=True))
    gates: Gates = field(default_factory=Gates)
    committee: CommitteeOptions = field(default_factory=CommitteeOptions)
    rounds: RoundOptions = field(default_factory=RoundOptions)
    acceptance: AcceptanceOptions | None = field(default_factory=AcceptanceOptions, metadata=cli(
        "skip the property acceptance suite (teacher vs student)", flag="--no-acceptance"))
    property_structures: list[str] | None = field(default=None, metadata=cli(
        "structures the acceptance suite measures (default: the seeds); its teacher MD runs on each, so keep them "
        "few and small", nargs="*", metavar="FILE"))
    budget: str | None = field(default=None, metadata=cli(
        "plan the run to fit this wall time (45m, 1h, 1.5h, 3600s): measures the teacher and the student sizes, "
        "then chooses --n-configs, --max-epochs, --size, --committee and --rounds (those given are kept) and prints "
        "the plan; without it, the options as given", metavar="TIME"))
    ray: str | None = field(default=None, metadata=cli(
        "label with teacher actors on a Ray cluster: local (this machine) or a cluster address (needs the "
        "distributed extra)", metavar="local|ADDRESS"))
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    explore: ExploreOptions = field(default_factory=ExploreOptions)
    kinds: list[str] | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    label_batch_size: int = 16
    train_exclude_kinds: tuple[str, ...] = ()
    train_dir: str = "train"
    extra_train: list[str] = field(default_factory=list, metadata=cli(
        "labelled frames (extxyz with the teacher's energy, forces, stress) added to the training split only; "
        "the held-out frames stay the run's own", nargs="+", metavar="FILE"))

    def __init__(self, teacher: str, structures: Sequence[str], out: str, **options: Any) -> None:
        """Fields by keyword (the options objects coerced: see the class docstring), and the
        model's and training's fields flat (:data:`FLAT_OPTIONS`) on top of ``model`` and
        ``training``. An unknown keyword is a ``TypeError`` naming the known ones."""
        flat = {name: options.pop(name) for name in list(options) if name in FLAT_OPTIONS}
        names = [f.name for f in fields(self)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"DistillConfig got unknown option(s) {unknown}; its fields are {names} and, flat, "
                            f"{sorted(FLAT_OPTIONS)}")
        self.teacher, self.structures, self.out = teacher, list(structures), out
        for f in fields(self)[3:]:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            setattr(self, f.name, options.get(f.name, default))
        self.model = coerce(ModelOptions, self.model)
        self.training = coerce(TrainingOptions, self.training)
        self.sampling = coerce(SamplingOptions, self.sampling)
        self.explore = coerce(ExploreOptions, self.explore)
        self.committee = coerce(CommitteeOptions, self.committee, "size")
        self.rounds = coerce(RoundOptions, self.rounds, "rounds")
        # None is "skipped", as documented (coerce reads None as the defaults): a budget's plan
        # (dataclasses.replace) and a resumed run (run.json) must keep a --no-acceptance run without it
        self.acceptance = None if self.acceptance is None else coerce(AcceptanceOptions, self.acceptance)
        self.gates = coerce(Gates, self.gates)
        self.teacher_options = coerce(TeacherOptions, self.teacher_options)
        for group in ("model", "training"):
            mine = {name: value for name, value in flat.items() if FLAT_OPTIONS[name] == group}
            if mine:
                setattr(self, group, dataclasses.replace(getattr(self, group), **mine))
        if "seed" not in options and self.training.seed != 0:  # a TrainingOptions' seed given alone
            self.seed = self.training.seed
        elif self.training.seed not in (0, self.seed):
            raise ValueError(f"training.seed {self.training.seed} differs from the run's seed {self.seed}; give seed=")
        self.training = dataclasses.replace(self.training, seed=self.seed)
        self.fractions = tuple(self.fractions)
        self.train_exclude_kinds = tuple(self.train_exclude_kinds)
        self.extra_train = [str(path) for path in self.extra_train]

    @classmethod
    def from_dict(cls, data: dict[str, Any], run_dir: str | Path | None = None) -> DistillConfig:
        """A config from ``run.json``'s ``"config"``: nested (this release) or flat (before).

        ``run_dir``: where that ``run.json`` now is. Its paths inside the run are recorded
        relative to the run directory (:mod:`~torchsim_distill.utils.run_paths`), so they are
        resolved against ``run_dir`` (give it unless the working directory is the run's
        parent and the records are older)."""
        if run_dir is None:
            return cls(**data)
        data = dict(data)
        for name in ("out", "teacher"):
            if name in data and (name == "out" or (Path(run_dir) / data[name]).exists()):
                data[name] = resolve_in_run(data[name], run_dir)
        for name in ("structures", "property_structures", "extra_train"):
            if data.get(name) is not None:
                data[name] = [resolve_in_run(p, run_dir) for p in data[name]]
        for group, name in (("training", "init_from"), ("rounds", "structures")):
            options = data.get(group)
            if isinstance(options, dict) and options.get(name) is not None:
                value = options[name]
                resolved = [resolve_in_run(p, run_dir) for p in value] if isinstance(value, list) else resolve_in_run(value, run_dir)
                data[group] = {**options, name: resolved}
        return cls(**data)

    @classmethod
    def cli_defaults(cls) -> DistillConfig:
        """The defaults of ``torchsim-distill distill``'s flags (teacher, structures and out blank)."""
        return cls(teacher="", structures=[], out="")

    # the flat names, read-only, for code written before the options were grouped
    student = property(lambda self: self.model.student)
    size = property(lambda self: self.model.size)
    r_max = property(lambda self: self.model.r_max)
    precision = property(lambda self: self.model.precision)
    max_epochs = property(lambda self: self.training.max_epochs)
    batch_size = property(lambda self: self.training.batch_size)
    lr = property(lambda self: self.training.lr)
    lr_schedule = property(lambda self: self.training.lr_schedule)
    init_from = property(lambda self: self.training.init_from)
    atomic_energy_weight = property(lambda self: self.training.atomic_energy_weight)
    stress_weight = property(lambda self: self.training.stress_weight)
    energy_weight = property(lambda self: self.training.energy_weight)
    force_huber_delta = property(lambda self: self.training.force_huber_delta)

    @property
    def teacher_id(self) -> str:
        """The teacher in the keys of its caches (the acceptance suite's teacher properties):
        its name or path, with the dispersion correction when there is one."""
        return self.teacher_options.teacher_id(self.teacher)

    def load_teacher(self) -> Any:
        """The teacher as the run uses it (on :attr:`device`, with :attr:`teacher_options`)."""
        return self.teacher_options.load(self.teacher, device=self.device)

    def committee_options(self) -> CommitteeOptions:
        """``self.committee`` (kept for code written when the field took ints and dicts)."""
        return self.committee

    def round_options(self) -> RoundOptions:
        """``self.rounds`` (kept for code written when the field took ints and dicts)."""
        return self.rounds

    def check(self) -> None:
        """Refuse settings that cannot work before any stage runs (``ValueError`` saying why)."""
        if self.rounds.rounds > 0 and self.committee.size < 2:
            raise ValueError(
                f"{self.rounds.rounds} on-policy rounds need a committee (its disagreement selects the frames "
                f"to label), got committee size {self.committee.size}; pass --committee 2 or more"
            )
        if self.model.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)} (nequip's model_dtype), got {self.model.precision!r}")
        unknown = sorted(set(self.train_exclude_kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"train_exclude_kinds {unknown} are not sampling kinds; the kinds are {list(KINDS)}")
        missing = [f for f in self.property_structures or [] if not Path(f).is_file()]
        if missing:  # read at the end of the run: say so now, not after hours of training
            raise ValueError(f"property structure file(s) {missing} do not exist (files ASE reads, e.g. .xyz)")
        missing = [f for f in self.extra_train if not Path(f).is_file()]
        if missing:  # read after sampling and labelling: say so before the teacher runs
            raise ValueError(f"extra_train file(s) {missing} do not exist (labelled frames ASE reads, e.g. .xyz)")
        self.teacher_options.check()  # an unknown functional, or D3 without the d3 extra
        if self.teacher_options.dispersion is not None:
            if self.training.atomic_energy_weight:
                raise ValueError(
                    "atomic_energy_weight needs the teacher's per-atom energies, which a teacher with "
                    f"--teacher-dispersion {self.teacher_options.dispersion} does not have (D3 gives energies per "
                    "system only); leave atomic_energy_weight unset"
                )
            if self.ray is not None:
                raise ValueError("--teacher-dispersion is not supported with --ray (the teacher actors load the "
                                 "plain teacher); label in this process, or add D3 at run time (dispersion=)")
        if self.budget is not None:
            parse_duration(self.budget)
        if self.ray is not None:  # Ray installed, and a teacher its actors can load by name
            from torchsim_distill.distill.ray_labeling import check_ray_teacher

            check_ray_teacher(self.teacher)
