"""A distillation planned from a time budget: ``distill --budget 1h``.

Knobs (configs, epochs, size, committee, rounds) are what a user should not have to guess.
Given a budget, :func:`plan_run` measures what this teacher and this machine cost (a few
teacher calls on the seeds; one training step of each candidate student size, timed in a
process of its own: :mod:`.budget_probe`), estimates every stage from those costs, and
chooses the settings that fit, in this order of what a first student lacks: data and
converged training first (a cosine schedule needs its planned epochs), a committee and an
on-policy round when the budget leaves room, a larger size only when the small one would
train past :data:`MAX_EPOCHS`. Settings given explicitly are kept and planned around::

    plan = plan_run(config, teacher, keep={"size"})      # measures (seconds), then plans
    print(plan.describe())                               # per stage: estimate, and why
    config = plan.apply(config)

The plan is written into ``run.json`` (stage ``"plan"``) before any stage starts, and a
rerun (resume) reuses it, so the frames and epochs of a resumed run do not move; the card
shows it beside the seconds each stage took. The training also gets a wall-time cap
(:attr:`~torchsim_distill.distill.training.TrainingOptions.max_time`), so that an estimate
that was too low costs accuracy, not the budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import write

from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.crystals import same_crystal_groups
from torchsim_distill.distill.exploration import CHEAP_TEACHERS
from torchsim_distill.distill.properties import is_bulk, supercell_factor
from torchsim_distill.distill.sampling import (
    TEACHER_KINDS,
    defect_seeds,
    kind_quotas,
    read_seeds,
    resolve_kinds,
)
from torchsim_distill.distill.teacher_cost import time_per_atom
from torchsim_distill.utils.durations import DURATION_FORMS, parse_duration

#: the budget forms ``--budget`` takes (:func:`parse_budget`)
BUDGET_FORMS = DURATION_FORMS
parse_budget = parse_duration
#: the knobs a plan sets, as :class:`DistillConfig` paths
PLANNED = ("n_configs", "max_epochs", "size", "committee", "rounds")
#: the command-line flags of the planned knobs: given on the command line, a knob is kept
KNOB_FLAGS = {"n_configs": "--n-configs", "max_epochs": "--max-epochs", "size": "--size", "committee": "--committee",
              "rounds": "--rounds"}
#: frames sampled, the choices (the plan takes the largest that fits)
N_CONFIGS = (50, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400)
#: the epochs a cosine schedule needs to converge a first student, and past which more
#: epochs buy little (the plan then buys size instead)
MIN_EPOCHS, MAX_EPOCHS = 40, 150
#: a committee and rounds only beside a first student of at least this many configs: with
#: fewer, the time they take buys more by sampling and labelling more
MIN_CONFIGS_FOR_ROUNDS = 300
#: the share of the planned stages' time that sampling and labelling may take
DATA_SHARE = 0.4
#: a Lightning step costs this many times the bare forward+backward+Adam step the probe
#: times (loss and metrics, EMA weights, data loading, logging)
STEP_OVERHEAD = 2.2
#: seconds a ``nequip-train`` run spends beyond importing nequip (hydra, data statistics,
#: Lightning set-up, checkpoints)
TRAIN_SETUP_S = 15.0
#: compiling a student with AOTInductor (C++ code generation and a compiler run, one core)
#: costs this many times the probe's import of nequip, by size: both are single-threaded CPU
#: work, so the ratio holds on a loaded machine too (measured: 154 s against a 21 s import
#: for a small student on a 2-core VM at load 6; 65 s against 9 s unloaded)
COMPILE_PER_IMPORT = {"tiny": 6.5, "small": 7.2, "medium": 8.0, "large": 10.0}
#: ... but at least this (seconds; 107 s were measured for a small student beside a 5 s
#: import): the estimate until this machine has compiled a student (:func:`record_compile`)
COMPILE_MIN_S = {"tiny": 90.0, "small": 100.0, "medium": 120.0, "large": 150.0}
#: seconds per labelled frame beyond the teacher's call (the label files, the batching), and
#: per torch-sim MD or relaxation step of the sampler (state updates, its trajectory files)
LABEL_FRAME_S, SAMPLE_STEP_S = 0.005, 0.025
#: seconds per system of an eager student's call beyond its forward pass (the neighbour
#: list and nequip's transforms): what a first student driving the sample pays per step
STUDENT_SYSTEM_S = 0.002
#: the training's wall-time cap: its planned epochs' estimate times this
TRAIN_CAP = 1.1
#: the compiled student's cost per call in the acceptance suite (torch-sim steps of a few
#: small cells: the call overhead dominates), as a multiple of the probe's import time, and
#: the calls the suite makes (relaxations, EOS, strains, vacancy, NVE, hot MD: batched)
STUDENT_CALL_PER_IMPORT, ACCEPTANCE_CALLS = 0.0004, 2500
#: FIRE steps a sampling relaxation takes, as a share of its step limit
RELAX_STEP_SHARE = 0.5
#: the same for a defect relaxation (fixed cell, from a rattled vacancy or interstitial; a
#: converged one leaves the batch): 40–45 of the 200 steps for SevenNet-0's Si vacancies and
#: interstitials in 8-, 16- and 64-atom diamond cells, 35–80 for EMT's Cu in an 8-atom cell
DEFECT_STEP_SHARE = 0.25
#: teacher evaluations of the acceptance suite per atom of a measured crystal, and per atom
#: of its vacancy cell and of its phonon supercells, with the default options (relaxations
#: stop well before their 500-step limit near a minimum)
ACCEPTANCE_STEPS = {"cell": 1100, "vacancy": 150, "phonon": 6}


@dataclass(frozen=True)
class Costs:
    """What this teacher and this machine cost, measured by :func:`measure_costs`.

    Attributes:
        teacher_system_s, teacher_atom_s: a teacher call costs ``teacher_system_s`` per
            system plus ``teacher_atom_s`` per atom (least squares on two calls).
        step_s: seconds of one training step (a batch of ``batch_size`` seed-sized frames)
            per candidate size, and ``forward_s`` of one forward pass with forces.
        import_s: seconds a fresh process takes to import nequip (every training run pays it).
        atoms_per_frame: mean atoms of the seeds' frames.
        seconds: what measuring took.
    """

    teacher_system_s: float
    teacher_atom_s: float
    step_s: dict[str, float]
    forward_s: dict[str, float]
    import_s: float
    atoms_per_frame: float
    seconds: float

    def teacher(self, n_systems: float, n_atoms: float) -> float:
        """Seconds of one teacher call on ``n_systems`` systems of ``n_atoms`` atoms in all."""
        return self.teacher_system_s * n_systems + self.teacher_atom_s * n_atoms


def measure_costs(
    teacher: Any, seeds: Sequence[Atoms], config: DistillConfig, sizes: Sequence[str]
) -> Costs:
    """A few teacher calls on the smallest seed and its 2×2×2 supercell (rattled), and one
    training step of each of ``sizes`` on seed-sized frames (:mod:`.budget_probe`)."""
    t0 = time.perf_counter()
    per_system, per_atom = time_per_atom(teacher, list(seeds))
    type_names = sorted({s for a in seeds for s in a.get_chemical_symbols()})
    frames = []
    for k in range(config.training.batch_size):
        atoms = seeds[k % len(seeds)].copy()
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    with tempfile.TemporaryDirectory(prefix="tsd-budget-") as tmp:
        path = Path(tmp) / "frames.xyz"
        write(path, frames, format="extxyz")
        request = {"frames": str(path), "type_names": type_names, "r_max": config.model.r_max,
                   "precision": config.model.precision, "sizes": list(sizes),
                   "batch_size": config.training.batch_size, "steps": 3}
        proc = subprocess.run([sys.executable, "-m", "torchsim_distill.distill.budget_probe"], input=json.dumps(request),
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"timing the student sizes failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    return Costs(per_system, per_atom, probe["step_s"], probe["forward_s"], probe["import_s"],
                 float(np.mean([len(a) for a in seeds])), time.perf_counter() - t0)


@dataclass
class Plan:
    """What a budget buys: the settings, each stage's estimated seconds, and why.

    Attributes:
        budget_s: the budget, seconds.
        settings: the planned knobs (:data:`PLANNED`), those kept as given included.
        kept: the knobs given explicitly (kept, planned around).
        estimates: seconds per stage (``measure``, ``sample``, ``label``, ``train``,
            ``committee``, ``rounds``, ``compile``, ``evaluate``, ``acceptance``).
        reasons: one sentence per choice.
        costs: the measurements the estimates rest on.
        train_time_s: the training's wall-time cap.
    """

    budget_s: float
    settings: dict[str, Any]
    kept: list[str]
    estimates: dict[str, float]
    reasons: list[str]
    costs: dict[str, Any]
    train_time_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return float(sum(self.estimates.values()))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_s": self.total_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def describe(self) -> str:
        """The plan as the command prints it and the card shows it."""
        s = self.settings
        lines = [
            f"plan for a budget of {_clock(self.budget_s)}: {s['n_configs']} configs, size {s['size']}, "
            f"{s['max_epochs']} epochs, committee {s['committee']}, rounds {s['rounds']}"
            f"{', explored by a first student' if s.get('explore') == 'student' else ''} "
            f"(estimated {_clock(self.total_s)})",
        ]
        lines += [f"  {stage:<11} {_clock(sec):>8}" for stage, sec in self.estimates.items() if sec > 0]
        lines += [f"  why: {r}" for r in self.reasons + self.notes]
        return "\n".join(lines)

    def apply(self, config: DistillConfig) -> DistillConfig:
        """``config`` with the planned settings and the training's wall-time cap."""
        s = self.settings
        training = dataclasses.replace(config.training, max_epochs=int(s["max_epochs"]), max_time=self.train_time_s)
        if "explore" in s:  # a plan made before the first student drove leaves it as given
            config = dataclasses.replace(config, explore=dataclasses.replace(config.explore, driver=s["explore"]))
        return dataclasses.replace(
            config, n_configs=int(s["n_configs"]), model=dataclasses.replace(config.model, size=s["size"]),
            training=training, committee=dataclasses.replace(config.committee, size=int(s["committee"])),
            rounds=dataclasses.replace(config.rounds, rounds=int(s["rounds"])),
        )


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class _Estimator:
    """Stage seconds of a candidate plan, from :class:`Costs` and the config."""

    def __init__(self, costs: Costs, config: DistillConfig, seeds: Sequence[Atoms], teacher: Any) -> None:
        self.c, self.config, self.seeds = costs, config, list(seeds)
        o = config.sampling
        self.kinds = resolve_kinds(self.seeds, teacher, config.kinds, far=o.far_kinds, defect_min_atoms=o.defect_min_atoms)
        self.crystals = [self.seeds[g[0]] for g in same_crystal_groups(self.seeds) if all(self.seeds[g[0]].pbc)]

    def data(self, n: int) -> tuple[float, float]:
        """(sample, label) seconds for ``n`` configs; the sampling includes the training of
        the first student when one drives it (:meth:`sampling`)."""
        s = self.sampling(n)
        return s["sample"] + s["explore"], self.c.teacher(n, self.frame_atoms(n)) + n * LABEL_FRAME_S

    def frame_atoms(self, n: int) -> float:
        """Atoms in ``n`` configs: the vacancies and defect paths in the acceptance suite's
        vacancy cells (:func:`~torchsim_distill.distill.defects.defect_cell`: an 8-atom seed's
        are 63–65 atoms), the other kinds at the seeds' mean size."""
        c, o = self.c, self.config.sampling
        quota = kind_quotas(self.kinds, n, o.far_share, weights=o.weights())
        defects = quota.get("vacancy", 0) + quota.get("defect_relax", 0)
        cells = [len(a) * supercell_factor(len(a)) ** 3 if is_bulk(a) else len(a) for a in self.seeds if len(a) >= 4]
        return (n - defects) * c.atoms_per_frame + defects * (float(np.mean(cells)) if cells else c.atoms_per_frame)

    def sampling(self, n: int) -> dict[str, Any]:
        """How ``n`` configs are sampled and what it costs: ``driver`` (``"teacher"`` or
        ``"student"``), ``sample`` (making the frames: the MD and relaxation steps of the
        driver), ``explore`` (the first student's training; 0 when the teacher drives) and
        ``teacher_sample`` (the sampling had the teacher driven), seconds. ``auto`` takes the
        first student when it costs less (never for :data:`~.exploration.CHEAP_TEACHERS`)."""
        c, o, x = self.c, self.config.sampling, self.config.explore
        quota = kind_quotas(self.kinds, n, o.far_share, weights=o.weights())
        teacher = self._steps(quota, c.teacher)
        n_static = sum(v for k, v in quota.items() if k not in TEACHER_KINDS)
        can = x.driver != "teacher" and n_static >= x.min_frames and any(quota.get(k) for k in TEACHER_KINDS)
        if not can or (x.driver == "auto" and str(self.config.teacher).lower() in CHEAP_TEACHERS):
            return {"driver": "teacher", "sample": teacher, "explore": 0.0, "teacher_sample": teacher}
        step, forward = self._student(x.size)
        per_atom = forward / (self.config.training.batch_size * c.atoms_per_frame)
        student = self._steps(quota, lambda systems, atoms: STUDENT_SYSTEM_S * systems + per_atom * atoms)
        batch, n_static = self.config.training.batch_size, min(n_static, x.max_frames)
        epoch = (math.ceil(0.9 * n_static / batch) * step + math.ceil(0.1 * n_static / batch) * forward) * STEP_OVERHEAD
        explore = self.start() + x.max_epochs * epoch
        if x.driver == "auto" and student + explore >= teacher:
            return {"driver": "teacher", "sample": teacher, "explore": 0.0, "teacher_sample": teacher,
                    "student_sample": student + explore}
        return {"driver": "student", "sample": student, "explore": explore, "teacher_sample": teacher}

    def _steps(self, quota: dict[str, int], call: Any) -> float:
        """Seconds of the MD and relaxation steps of ``quota``, with ``call(n_systems, n_atoms)``
        the driver's seconds per call."""
        c, o = self.c, self.config.sampling
        atoms = sum(len(s) for s in self.seeds)
        sample = 0.0
        if quota.get("md"):
            runs = len(self.seeds) * len(o.temperatures)
            steps = math.ceil(quota["md"] / min(runs, quota["md"])) * o.md_stride
            sample += len(o.temperatures) * steps * (call(len(self.seeds), atoms) + SAMPLE_STEP_S)
        if quota.get("relax"):
            n_runs = math.ceil(quota["relax"] / o.relax_frames)
            steps = RELAX_STEP_SHARE * o.relax_max_steps
            sample += steps * (call(n_runs, n_runs * c.atoms_per_frame) + SAMPLE_STEP_S)
        if quota.get("defect_relax"):  # the crystals relaxed, then one batch of defect cells (± one atom)
            seeds = [len(self.seeds[i]) for i in defect_seeds(self.seeds, o.defect_min_atoms)]
            cells = [n * supercell_factor(n) ** 3 for n in seeds]  # the suite's vacancy cells (defects.defect_cell)
            n_runs = math.ceil(quota["defect_relax"] / o.defect_frames)
            crystals = seeds[:n_runs]
            atoms_runs = sum(cells[r % len(cells)] for r in range(n_runs))
            steps = DEFECT_STEP_SHARE * o.relax_max_steps
            sample += steps * (call(len(crystals), sum(crystals)) + call(n_runs, atoms_runs) + 2 * SAMPLE_STEP_S)
        return sample

    def _student(self, size: str) -> tuple[float, float]:
        """(training step, forward pass) seconds of a ``size`` student: measured, or the
        costliest size measured when this one was not (an estimate on the safe side)."""
        c = self.c
        if size in c.step_s:
            return c.step_s[size], c.forward_s[size]
        worst = max(c.step_s, key=c.step_s.get)
        return c.step_s[worst], c.forward_s[worst]

    def epoch(self, size: str, n: int, members: int = 1) -> float:
        """Seconds of one epoch of ``members`` students on ``n`` configs (validation included:
        three forward passes over its tenth, whole, near and far). The steps are those timed
        on batches of the seeds: a few-atom seed's step is mostly overhead, so the defect
        frames' larger cells (:meth:`frame_atoms`) are not scaled in (the killed and resumed
        budget test keeps to its budget with them)."""
        f = self.config.fractions
        batch = self.config.training.batch_size
        train = math.ceil(f[0] * n / batch) * self.c.step_s[size] * STEP_OVERHEAD
        val = 3 * math.ceil(f[1] * n / batch) * self.c.forward_s[size] * STEP_OVERHEAD
        return members * (train + val)

    def start(self) -> float:
        """Seconds a ``nequip-train`` run spends before its first step."""
        return self.c.import_s + TRAIN_SETUP_S

    def fixed(self, size: str, committee: int) -> dict[str, float]:
        """Compile, evaluation and acceptance seconds (they do not depend on the data)."""
        c = self.c
        n_test = 0.1 * 400
        evaluate = c.teacher(n_test, n_test * c.atoms_per_frame) + 10.0
        acceptance = 0.0
        if self.config.acceptance is not None:
            evals = 0.0
            for crystal in self.crystals:
                n = len(crystal)
                evals += ACCEPTANCE_STEPS["cell"] * c.teacher(1, n)
                evals += ACCEPTANCE_STEPS["vacancy"] * c.teacher(1, max(n, self.config.acceptance.vacancy_min_atoms))
                if self.config.acceptance.phonons and n <= 8:
                    evals += ACCEPTANCE_STEPS["phonon"] * c.teacher(1, 64 * n)
            # the student's side: its forward pass per atom, as timed on a training batch, and its calls
            per_atom = c.forward_s[size] / (self.config.training.batch_size * c.atoms_per_frame)
            student = sum(ACCEPTANCE_STEPS["cell"] * len(x) * per_atom for x in self.crystals)
            student += ACCEPTANCE_CALLS * STUDENT_CALL_PER_IMPORT * c.import_s
            acceptance = evals + committee * student
        compile_s = committee * compile_seconds(size, c.import_s)  # the members compile too
        return {"compile": compile_s, "evaluate": evaluate, "acceptance": acceptance}

    def stages(self, s: dict[str, Any]) -> dict[str, float]:
        """Every stage's seconds for the settings ``s``."""
        n, size, epochs, committee, rounds = s["n_configs"], s["size"], s["max_epochs"], s["committee"], s["rounds"]
        sampling = self.sampling(n)
        out = {"sample": sampling["sample"], **({"explore": sampling["explore"]} if sampling["explore"] else {}),
               "label": self.data(n)[1], "train": self.start() + epochs * self.epoch(size, n)}
        if committee > 1:
            member_epochs = self.config.committee.member_epochs(epochs)
            out["committee"] = (committee - 1) * (self.start() + member_epochs * self.epoch(size, n))
        if rounds:
            r = self.config.rounds
            per_round = (self.c.teacher(r.budget, r.budget * self.c.atoms_per_frame)
                         + committee * (self.start() + r.epochs * self.epoch(size, n + r.budget)))
            out["rounds"] = rounds * per_round
        return {**out, **self.fixed(size, committee)}


def plan_run(
    config: DistillConfig, teacher: Any, *, budget_s: float | None = None, keep: Collection[str] = (),
    costs: Costs | None = None,
) -> Plan:
    """Measure (unless ``costs`` are given) and choose the settings that fit the budget.

    Args:
        config: the run's config (``config.budget`` unless ``budget_s``).
        teacher: the loaded teacher (its calls are timed).
        keep: the knobs of :data:`PLANNED` given explicitly: kept as ``config`` has them.
    """
    budget = budget_s if budget_s is not None else parse_budget(config.budget)
    seeds = read_seeds(config.structures)
    keep = [k for k in PLANNED if k in set(keep)]
    given = {"n_configs": config.n_configs, "max_epochs": config.training.max_epochs, "size": config.model.size,
             "committee": config.committee.size, "rounds": config.rounds.rounds}
    sizes = [given["size"]] if "size" in keep else ["small", "medium"] if budget >= 20 * 60 else ["small"]
    explore = config.explore.driver == "student" or (
        config.explore.driver == "auto" and str(config.teacher).lower() not in CHEAP_TEACHERS)
    if explore and config.explore.size not in sizes:  # a first student may drive: its training is timed too
        sizes.append(config.explore.size)
    spent = process_seconds() if costs is None else 0.0  # the command's start-up (imports) counts
    costs = costs or measure_costs(teacher, seeds, config, sizes)
    est = _Estimator(costs, config, seeds, teacher)
    room = budget - costs.seconds - spent
    reasons: list[str] = []

    def fits(s: dict[str, Any]) -> bool:
        return sum(est.stages(s).values()) <= room

    def with_epochs(s: dict[str, Any]) -> dict[str, Any]:
        """``s`` with the most epochs that fit (at most MAX_EPOCHS), or as given."""
        if "max_epochs" in keep:
            return s
        base = {**s, "max_epochs": 0}
        spare = room - sum(est.stages(base).values())
        per_epoch = est.stages({**s, "max_epochs": 1})["train"] - est.stages(base)["train"]
        if s["committee"] > 1:  # the members' epochs grow with the student's
            per_epoch += (s["committee"] - 1) * est.epoch(s["size"], s["n_configs"]) / 4
        return {**s, "max_epochs": int(max(1, min(MAX_EPOCHS, spare // max(per_epoch, 1e-9))))}

    # committee and rounds: when the budget leaves room for them, the loop that finds the
    # frames the first student gets wrong (decided first: they take a share of the time)
    committee, rounds = given["committee"], given["rounds"]
    if "committee" not in keep and "rounds" not in keep:
        committee, rounds = (3, 1) if budget >= 40 * 60 else (1, 0)
        reasons.append("a committee of 3 and one on-policy round: the budget leaves room for the loop that finds "
                       "the frames the first student gets wrong" if rounds else
                       "no committee or rounds: under 40 minutes, the first student's data and epochs come first")
    elif "rounds" in keep and rounds and committee < 2 and "committee" not in keep:
        committee = 2
    size = given["size"] if "size" in keep else "small"
    candidates = [given["n_configs"]] if "n_configs" in keep else list(N_CONFIGS)
    chosen = None
    for n in sorted(candidates, reverse=True):
        s = with_epochs({"n_configs": n, "size": size, "committee": committee, "rounds": rounds, "max_epochs": 0})
        sample, label = est.data(n)
        if (len(candidates) == 1 or (sample + label) <= DATA_SHARE * room) and s["max_epochs"] >= MIN_EPOCHS and fits(s):
            chosen = s
            break
    thin = chosen is not None and "n_configs" not in keep and chosen["n_configs"] < MIN_CONFIGS_FOR_ROUNDS
    if (chosen is None or thin) and (committee > 1 or rounds) and not {"committee", "rounds"} & set(keep):
        committee, rounds = 1, 0
        reasons[-1:] = [f"no committee or rounds: the budget does not hold them beside a converged first student "
                        f"on {MIN_CONFIGS_FOR_ROUNDS}+ configs (data first)"]
        chosen = None
        for n in sorted(candidates, reverse=True):
            s = with_epochs({"n_configs": n, "size": size, "committee": 1, "rounds": 0, "max_epochs": 0})
            if (len(candidates) == 1 or sum(est.data(n)) <= DATA_SHARE * room) and s["max_epochs"] >= MIN_EPOCHS and fits(s):
                chosen = s
                break
    notes = []
    if chosen is None:
        n = min(candidates)
        chosen = with_epochs({"n_configs": n, "size": size, "committee": committee, "rounds": rounds, "max_epochs": 0})
        notes.append(f"the budget is too small for {MIN_EPOCHS} epochs on {n} configs: this plan is the least "
                     f"that runs, estimated {_clock(sum(est.stages(chosen).values()) + costs.seconds)}")
    reasons.append(f"{chosen['n_configs']} configs: the most whose sampling and labelling ({_clock(sum(est.data(chosen['n_configs'])))}) "
                   f"stay within {DATA_SHARE:.0%} of the budget and leave {MIN_EPOCHS}+ epochs"
                   if "n_configs" not in keep else f"{chosen['n_configs']} configs, as given")
    # size: a larger student only when the small one would have epochs to spare
    if "size" not in keep and "medium" in costs.step_s and chosen["max_epochs"] >= MAX_EPOCHS:
        bigger = with_epochs({**chosen, "size": "medium"})
        if bigger["max_epochs"] >= 2 * MIN_EPOCHS and fits(bigger):
            chosen = bigger
            reasons.append(f"size medium: the small student would train past {MAX_EPOCHS} epochs; the budget buys "
                           f"capacity with {bigger['max_epochs']} epochs")
    if chosen["size"] == "small" and "size" not in keep:
        reasons.append("size small: a first student lacks data and converged training before capacity")
    if "max_epochs" not in keep:
        reasons.append(f"{chosen['max_epochs']} epochs of a cosine schedule: what the rest of the budget trains "
                       f"({_clock(est.epoch(chosen['size'], chosen['n_configs']))} per epoch)")
    reasons += _explore_reasons(est, chosen)
    estimates = {**({"start": spent} if spent else {}), "measure": costs.seconds, **est.stages(chosen)}
    fit = estimates["train"] - est.start()  # the cap counts the trainer's fit, not its start
    train_cap = None if "max_epochs" in keep else TRAIN_CAP * fit
    return Plan(budget, chosen, keep, {k: round(v, 1) for k, v in estimates.items()}, reasons,
                dataclasses.asdict(costs), train_cap, notes)


def _explore_reasons(est: _Estimator, chosen: dict[str, Any]) -> list[str]:
    """``chosen["explore"]``, who drives the MD and relaxations, set; and why, a sentence
    (none when there are no MD or relaxation frames or the teacher drives as asked)."""
    sampling = est.sampling(chosen["n_configs"])
    chosen["explore"] = sampling["driver"]
    x = est.config.explore
    if sampling["driver"] == "student":
        return [f"the MD and relaxations driven by a first student ({x.size}, {x.max_epochs} epochs on the static "
                f"frames; the teacher labels only): {_clock(sampling['sample'] + sampling['explore'])} with its "
                f"training, against {_clock(sampling['teacher_sample'])} with the teacher driving"]
    if "student_sample" in sampling:
        return [f"the teacher drives the MD and relaxations: a first student would cost "
                f"{_clock(sampling['student_sample'])} with its training, the teacher {_clock(sampling['teacher_sample'])}"]
    return []


def _history_path() -> Path:
    from torchsim_distill.compile import cache_dir

    return cache_dir() / "budget_costs.json"


def record_compile(size: str, seconds: float) -> None:
    """Remember how long compiling a student of ``size`` took on this machine (beside the
    compile cache): the next plan's compile estimate. A cache hit (seconds) is not a compile."""
    if seconds < 10:
        return
    path = _history_path()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("compile_s", {})[size] = round(float(seconds), 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    except (OSError, ValueError):  # a shared cache we cannot write: the constants stay the estimate
        pass


def compile_seconds(size: str, import_s: float) -> float:
    """The estimate of compiling a student of ``size``: the last compile on this machine
    (:func:`record_compile`) when there was one, else :data:`COMPILE_PER_IMPORT` times the
    probe's import, at least :data:`COMPILE_MIN_S`."""
    try:
        known = json.loads(_history_path().read_text()).get("compile_s", {}).get(size)
    except (OSError, ValueError):
        known = None
    if known:
        return float(known)
    return max(COMPILE_PER_IMPORT.get(size, 10.0) * import_s, COMPILE_MIN_S.get(size, 120.0))


def process_seconds() -> float:
    """Seconds since this process started (its imports are part of what a budget pays);
    0 where ``/proc`` does not say (not Linux)."""
    import os

    try:
        start_ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def knobs_on_command_line(argv: Sequence[str]) -> set[str]:
    """The :data:`PLANNED` knobs whose flag ``argv`` gives (``--size medium``, ``--size=medium``)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {k for k, flag in KNOB_FLAGS.items() if flag in given}


def explicit_knobs(config: DistillConfig) -> set[str]:
    """The :data:`PLANNED` knobs of ``config`` that differ from the command's defaults:
    what a library caller (who has no command line) gave explicitly."""
    defaults = DistillConfig.cli_defaults()
    now = {"n_configs": config.n_configs, "max_epochs": config.training.max_epochs, "size": config.model.size,
           "committee": config.committee.size, "rounds": config.rounds.rounds}
    was = {"n_configs": defaults.n_configs, "max_epochs": defaults.training.max_epochs, "size": defaults.model.size,
           "committee": defaults.committee.size, "rounds": defaults.rounds.rounds}
    return {k for k in PLANNED if now[k] != was[k]}
