"""What to try when a student fails its gates, read from what the run measured, and what it costs.

A failed card that says only FAILED leaves the user guessing, and advice that guesses wrong
costs an hour. :func:`advise` reads the frame gates *and* the property gates, the gap between
training and held-out errors, the validation curve, the errors by kind of frame and the
committee, and turns them into a few sentences, each with the command that tries the cure
and an estimate of what it would cost, from this run's own measured stage times
(:class:`RunCosts`)::

    lines = advise(Diagnosis(test=report.metrics, train=train_metrics, gates=gates, best_epoch=41,
                             max_epochs=50, size="small", n_configs=600,
                             failed_properties=("C44", "vacancy formation energy"),
                             costs=RunCosts.from_run(run_json)), argv=["torchsim-distill", ...])

The rules, and why:

- **A failed property gate names the frames that cover it** (:data:`PROPERTY_KINDS`):
  C11/C12 come from non-isotropic axial strains (kind ``axial_strain``), C44 from shears
  (``shear_strain``), the vacancy formation energy from vacancies and relaxed defect paths
  (``vacancy``, ``defect_relax``), phonons from small rattles (``rattle``; smaller
  ``rattle_amplitudes``), the RDF and hot MD from ``md``. The cure is more frames of those
  kinds (``--kind-weights``), in a new run directory (a run's frames are sampled once).
  A property is a curvature or a difference of energies of frames like these: the frame
  errors can pass while the property fails, so the property gates are read on their own.
- **More epochs** when the validation loss was still falling: the best of the second half
  of the epochs improved on the best of the first half by more than :data:`CONVERGED_GAIN`
  (without the curve: the best checkpoint among the last tenth). Training resumes from
  ``last.ckpt``, its cosine schedule stretched to the new length. With a cosine schedule
  the best epoch is nearly always the last, and the last epochs are flat because the rate
  has decayed, not because the student has learnt all it can: so neither the best epoch nor
  the last few epochs say "converged"; the halves do (the Si run's 71 epochs: 9 % better
  in the second half, so it advises more epochs).
- **More data** (on-policy rounds with a committee, else more configurations) when held-out
  errors are far above the training ones (> :data:`GAP_RATIO` ×): the student memorised.
- **Capacity** (a larger size) only when every sign says capacity: the training force error
  is close to the held-out one (within :data:`GAP_RATIO`) and above the gate, the training
  had converged (above), and the data are not the limit — the held-out force error on the
  *well-sampled near-equilibrium kinds* (each at least :data:`WELL_SAMPLED_SHARE` of an even
  share of the training frames) is itself above the gate. A student that fits the kinds it
  saw plenty of, and fails on the far or rare ones, lacks frames of those, not parameters:
  the Si student distilled from SevenNet-0 (issue 26) had training ≈ held-out errors, yet
  a medium student was no better on unseen frames and failed more properties. Forces decide
  (3N labels a frame); an energy or stress error on well-fitted forces is a data (frames,
  strains) question first. Otherwise the same situation is advised as data.
- **Far-from-equilibrium kinds** whose force error is more than :data:`WORST_KIND_RATIO` × the
  overall one are named, with the held-out near-equilibrium errors when they pass the gates.

Costs are estimates: seconds per configuration sampled and labelled, per epoch (scaled by the
configurations), the committee's and the rounds' measured seconds, the compile and the
acceptance suite, all from ``run.json`` (falling back on the budget plan's estimates), so
they are this machine's and this teacher's. :func:`next_hour` says which of the advised
steps fit one more hour.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchsim_distill.distill.evaluation import Gates, Metrics
from torchsim_distill.distill.sampling import FAR_KINDS, KINDS
from torchsim_distill.utils.options import to_flags

#: held-out / training force error above which the student counts as over-fitted
GAP_RATIO = 2.0
#: a kind whose force error exceeds this multiple of the overall one is named
WORST_KIND_RATIO = 2.0
#: relative improvement of the best validation loss of the second half of the epochs on
#: that of the first half below which the training counts as converged
CONVERGED_GAIN = 0.05
#: a near-equilibrium kind with at least this fraction of an even share of the training
#: frames counts as well sampled
WELL_SAMPLED_SHARE = 0.5
#: the weight advised for the kinds that cover a failed property (the others keep 1)
ADVISED_WEIGHT = 3
SIZES = ("tiny", "small", "medium", "large")
#: training step cost of the next size up, relative (the budget probe's small/medium ratio
#: when the plan measured it; else this)
SIZE_STEP_RATIO = 4.0
#: the planned knobs: dropped from a command that keeps ``--budget``, so that the plan
#: chooses them again (a knob on the command line is kept as given)
PLANNED_FLAGS = ("--n-configs", "--max-epochs", "--size", "--committee", "--rounds")

#: a failed property (the start of its acceptance-row label) → the sampling kinds whose
#: frames determine it; kinds not in this version's :data:`KINDS` are named but not weighted
PROPERTY_KINDS: dict[str, tuple[str, ...]] = {
    "C11": ("axial_strain",),
    "C12": ("axial_strain",),
    "C44": ("shear_strain",),
    "bulk modulus": ("iso_strain",),
    "volume per atom": ("iso_strain", "relax"),
    "energy per atom": ("relax",),
    "vacancy formation energy": ("vacancy", "defect_relax"),
    "phonon": ("rattle",),
    "highest phonon": ("rattle",),
    "lowest phonon": ("rattle",),
    "RDF": ("md",),
    "hot-MD": ("md",),
    "NVE": ("md",),
}


@dataclass(frozen=True)
class RunCosts:
    """What this run's stages cost, seconds (measured; estimates where a stage did not run).

    Attributes:
        config_s: sampling and labelling, per configuration.
        epoch_s: one training epoch on ``n_configs`` configurations.
        start_s: a training run's start (import, set-up).
        committee_s, rounds_s: the committee's members and the on-policy rounds, as run.
        compile_s, acceptance_s: compiling the student (and members), the property suite.
        n_configs, epochs: what the run had.
        size_step_ratio: a training step of the next size up, relative to this one's.
    """

    config_s: float
    epoch_s: float
    n_configs: int
    epochs: int
    start_s: float = 20.0
    committee_s: float = 0.0
    rounds_s: float = 0.0
    compile_s: float = 100.0
    acceptance_s: float = 0.0
    size_step_ratio: float = SIZE_STEP_RATIO

    @classmethod
    def from_run(cls, run: Mapping[str, Any], epochs: int | None = None) -> RunCosts | None:
        """From ``run.json`` (``{"config", "stages"}``); None without the sample, label and
        train times. ``epochs``: the epochs trained, when known (default: ``max_epochs``)."""
        stages, config = run.get("stages", {}), run.get("config", {})
        plan = stages.get("plan", {}).get("plan") or {}
        est = plan.get("estimates", {})

        def took(name: str) -> float | None:
            s = stages.get(name, {}).get("seconds")
            return float(s) if s is not None else (float(est[name]) if name in est else None)

        n = int(config.get("n_configs") or 0)
        epochs = int(epochs or (config.get("training") or {}).get("max_epochs") or config.get("max_epochs") or 0)
        sample, label, train = took("sample"), took("label"), took("train")
        if not n or not epochs or sample is None or label is None or train is None:
            return None
        step = (plan.get("costs") or {}).get("step_s") or {}
        size = (config.get("model") or {}).get("size", "small")
        bigger = SIZES[min(SIZES.index(size) + 1, len(SIZES) - 1)] if size in SIZES else "medium"
        ratio = step[bigger] / step[size] if step.get(size) and step.get(bigger) else SIZE_STEP_RATIO
        start = (plan.get("costs") or {}).get("import_s")
        start_s = float(start) + 15.0 if start else 20.0
        return cls(config_s=(sample + label) / n, epoch_s=max(train - start_s, 0.5 * train) / epochs,
                   n_configs=n, epochs=epochs, start_s=start_s, committee_s=took("committee") or 0.0,
                   rounds_s=took("rounds") or 0.0, compile_s=took("compile") or 100.0,
                   acceptance_s=took("acceptance") or 0.0, size_step_ratio=ratio)

    def finish(self) -> float:
        """Compile and acceptance: every cure ends with them."""
        return self.compile_s + self.acceptance_s

    def more_epochs(self, extra: int) -> float:
        """Resume ``extra`` epochs, the committee's and rounds' fine-tunes again in proportion."""
        share = extra / max(self.epochs, 1)
        return self.start_s + extra * self.epoch_s + share * self.committee_s + self.rounds_s + self.finish()

    def new_run(self, n_configs: int, *, step_ratio: float = 1.0) -> float:
        """A new run directory of ``n_configs`` configurations and the same epochs."""
        scale = n_configs / max(self.n_configs, 1)
        return (n_configs * self.config_s + self.start_s + self.epochs * self.epoch_s * scale * step_ratio
                + self.committee_s * scale * step_ratio + self.rounds_s * step_ratio + self.finish())

    def more_rounds(self, n: int, rounds_run: int) -> float:
        per_round = self.rounds_s / rounds_run if rounds_run and self.rounds_s else 3 * (self.start_s + 20 * self.epoch_s)
        return n * per_round + self.finish()


@dataclass(frozen=True)
class Diagnosis:
    """What the run measured that the advice rests on.

    Attributes:
        test: held-out metrics (with ``per_kind``).
        train: the same student's metrics on (a sample of) its training frames.
        gates: the frame gates.
        best_epoch, max_epochs: epoch of the best checkpoint (0-based) and the epochs trained.
        size: the student's size preset.
        n_configs: frames sampled.
        rounds: on-policy rounds run; committee: its size (1: none).
        flagged_fraction: share of held-out frames the committee flags (None without one).
        failed_properties: labels of the failed property gates (acceptance rows: ``"C11"``,
            ``"vacancy formation energy"``, ``"phonon frequency MAE (q-grid)"``), with the
            system after `` of `` if wanted (``"C44 of Si"``).
        validation: the first training's validation loss per epoch (to judge convergence).
        train_kinds: training frames per kind (which kinds are well sampled).
        costs: this run's stage costs (None: advice without costs).
        budget: the run's ``--budget`` (the advised commands keep it, re-planning).
        sampling_kinds: the kinds this version can sample (default :data:`KINDS`).
        kind_weights: the run's ``--kind-weights`` (kept and raised by the advice).
    """

    test: Metrics
    train: Metrics | None
    gates: Gates
    best_epoch: int | None
    max_epochs: int
    size: str
    n_configs: int
    rounds: int = 0
    committee: int = 1
    flagged_fraction: float | None = None
    failed_properties: tuple[str, ...] = ()
    validation: tuple[float, ...] = ()
    train_kinds: Mapping[str, int] = field(default_factory=dict)
    costs: RunCosts | None = None
    budget: str | None = None
    sampling_kinds: tuple[str, ...] = KINDS
    kind_weights: tuple[str, ...] = ()

    def failing_frame_gates(self) -> list[str]:
        return [name for name in ("energy_mae", "force_mae", "stress_mae")
                if getattr(self.test, name) is not None and not getattr(self.test, name) <= getattr(self.gates, name)]

    def converged(self) -> bool | None:
        """Whether the validation loss had stopped falling (None: nothing says)."""
        v = [x for x in self.validation if math.isfinite(x)]
        if len(v) >= 4:
            half = len(v) // 2
            return not min(v[half:]) < (1 - CONVERGED_GAIN) * min(v[:half])
        if self.best_epoch is not None:
            return self.best_epoch < 0.9 * (self.max_epochs - 1)
        return None

    def well_sampled_force(self) -> float | None:
        """Held-out force MAE over the well-sampled near-equilibrium kinds (frame-weighted);
        None when none is known."""
        if not self.train_kinds:
            return None
        near = {k: n for k, n in self.train_kinds.items() if k not in FAR_KINDS}
        if not near:
            return None
        even = sum(self.train_kinds.values()) / len(self.train_kinds)
        well = [k for k, n in near.items() if n >= WELL_SAMPLED_SHARE * even and k in self.test.per_kind]
        frames = sum(self.test.per_kind[k].n_frames for k in well)
        if not frames:
            return None
        return sum(self.test.per_kind[k].force_mae * self.test.per_kind[k].n_frames for k in well) / frames


@dataclass(frozen=True)
class Advice:
    """One cure: what was found, the command, its estimated seconds (None: unknown)."""

    kind: str
    text: str
    seconds: float | None = None

    def line(self) -> str:
        cost = f" (estimate: ~{_minutes(self.seconds)} on this machine)" if self.seconds is not None else ""
        return self.text + cost


def diagnose(d: Diagnosis, argv: Sequence[str]) -> list[Advice]:
    """The cures :func:`advise` words, as :class:`Advice` (``kind``: ``properties``,
    ``properties_unmapped``, ``properties_weighted``, ``far_kinds``, ``epochs``, ``data``, ``capacity``, ``committee``)."""
    failing = d.failing_frame_gates()
    if not failing and not d.failed_properties:
        return []
    c, out = d.costs, []
    new_dir_argv = _budgeted(argv, d.budget)
    # properties: the frames that cover them
    wanted: dict[str, list[str]] = {}
    unmapped = []
    for prop in d.failed_properties:
        for key, kinds in PROPERTY_KINDS.items():
            if prop.startswith(key):
                for k in kinds:
                    wanted.setdefault(k, []).append(prop.split(" of ")[0])
                break
        else:
            unmapped.append(prop)
    if unmapped:
        out.append(Advice("properties_unmapped", f"No sampling kind targets {', '.join(unmapped)} yet: give structures "
                                                 "like those measured as seeds (--structures) or --round-structures."))
    given = _weights(d.kind_weights)
    weighted = [k for k in wanted if k in d.sampling_kinds and given.get(k, 1.0) >= ADVISED_WEIGHT]
    named = "; ".join(f"{k} ({', '.join(dict.fromkeys(props))})" for k, props in wanted.items())
    if wanted and len(weighted) == len(wanted):
        # this run sampled them 3x already (an earlier card's advice, followed): the same advice
        # again would cost a new run for frames that did not close these gates
        out.append(Advice("properties_weighted", f"The kinds behind the failed property gates ({named}) were already "
                          f"sampled ≥ {ADVISED_WEIGHT}× in this run (--kind-weights {' '.join(d.kind_weights)}): "
                          "more of the same is not advised; see the other advice."))
    elif wanted:
        weights = dict(given)
        weights.update({k: max(weights.get(k, 1.0), ADVISED_WEIGHT) for k in wanted if k in d.sampling_kinds})
        missing = [k for k in wanted if k not in d.sampling_kinds]
        near = [k for k in d.train_kinds if k not in FAR_KINDS] or [k for k in wanted if k in d.sampling_kinds]
        added = sum(weights.get(k, 1.0) - 1.0 for k in near if k in weights)
        n = int(math.ceil(d.n_configs * (1 + added / max(len(near), 1)) / 10) * 10)
        flags = " ".join(f"{k}={w:g}" for k, w in weights.items())
        command = _command(new_dir_argv, kind_weights=flags, **({} if d.budget else {"n_configs": n}),
                           out=_new_out(argv, "more-property-frames"))
        text = (f"Failed property gates need more frames of the kinds that determine them: {named}. "
                f"Sample those kinds {ADVISED_WEIGHT}× as much (--kind-weights; a new run directory, frames are sampled "
                f"once per run): {command}")
        if missing:
            text += f" (kind{'s' if len(missing) > 1 else ''} {', '.join(missing)}: not in this version, weighted once it is)"
        if weighted:
            text += f" (already ≥ {ADVISED_WEIGHT}× in this run: {', '.join(weighted)}; the new one(s) are the rest)"
        if "rattle" in wanted:
            text += ("; phonons need small displacements: DistillConfig(sampling={'rattle_amplitudes': "
                     "(0.01, 0.02, 0.05)}) in Python (no flag)")
        cost = _budget_s(d.budget) if d.budget else None if c is None else c.new_run(n)
        out.append(Advice("properties", text, cost))
    if not failing:
        return out
    far = _worst_kinds(d.test)
    if far:
        named = ", ".join(f"{k} ({f:.0f} meV/Å)" for k, f in far)
        well = d.well_sampled_force()
        text = f"The worst held-out frames are {named}, against {d.test.force_mae:.0f} meV/Å overall"
        if well is not None:
            text += f" ({well:.0f} meV/Å on the well-sampled near-equilibrium kinds)"
        text += ("; these kinds carry the failed frame gate. Sample more of them (--kind-weights "
                 + " ".join(f"{k}={ADVISED_WEIGHT}" for k, _ in far)
                 + "; for the far kinds, at some cost to a small student's accuracy near equilibrium) or let "
                   "on-policy rounds find them.")
        out.append(Advice("far_kinds", text))
    converged = d.converged()
    if converged is False:
        more = max(2 * d.max_epochs, d.max_epochs + 20)
        where = (f"best epoch {d.best_epoch + 1} of {d.max_epochs}" if len(d.validation) < 4 and d.best_epoch is not None
                 else f"the second half of its {d.max_epochs} epochs improved the best validation loss by more "
                      f"than {100 * CONVERGED_GAIN:.0f} %")
        out.append(Advice(
            "epochs",
            f"The validation loss was still improving at the end ({where}): train longer; this resumes from the last "
            f"checkpoint on a cosine stretched to {more} epochs (without --budget: a budgeted rerun keeps its plan): "
            f"{_command(_unbudgeted(argv), max_epochs=more)}",
            None if c is None else c.more_epochs(more - d.max_epochs)))
    # the same-directory cures below build on the longer training when it is advised: run one after the other
    in_place = _unbudgeted(argv) if converged is not False else _with(_unbudgeted(argv), max_epochs=more)
    train = d.train
    gap = train is not None and train.force_mae > 0 and d.test.force_mae > GAP_RATIO * train.force_mae
    if gap:
        assert train is not None
        what = (f"Held-out force error {d.test.force_mae:.0f} meV/Å is {d.test.force_mae / train.force_mae:.1f}× the "
                f"training error ({train.force_mae:.0f} meV/Å): the student needs more varied data, not more capacity.")
        if d.committee >= 2:
            out.append(Advice("data", f"{what} Run more on-policy rounds: {_command(in_place, rounds=d.rounds + 2)}",
                              None if c is None else c.more_rounds(2, d.rounds)))
        else:
            out.append(Advice(
                "data",
                f"{what} Add a committee and on-policy rounds: {_command(in_place, committee=3, rounds=2)}; or sample more "
                f"configurations in a new run directory: "
                f"{_command(argv, n_configs=2 * d.n_configs, out=_new_out(argv, 'more-configs'))}",
                None if c is None else c.new_run(2 * d.n_configs)))
    elif train is not None and train.force_mae > d.gates.force_mae:
        well = d.well_sampled_force()
        data_limit = well is not None and well <= d.gates.force_mae
        if converged and not data_limit and d.size in SIZES[:-1] and well is not None:
            bigger = SIZES[SIZES.index(d.size) + 1]
            out.append(Advice(
                "capacity",
                f"The student cannot fit even the kinds it saw most of: training force error {train.force_mae:.0f} "
                f"meV/Å ≈ held-out {d.test.force_mae:.0f}, {well:.0f} meV/Å on the well-sampled near-equilibrium kinds "
                f"(gate {d.gates.force_mae:g}), training converged. Try a larger student in a new run directory (labels "
                f"are reused only within one): {_command(new_dir_argv, size=bigger, out=_new_out(argv, bigger))}",
                _budget_s(d.budget) if d.budget else None if c is None else c.new_run(c.n_configs, step_ratio=c.size_step_ratio)))
        else:
            why = ("the training had not converged" if not converged else
                   f"the well-sampled near-equilibrium kinds pass the force gate ({well:.0f} meV/Å)" if data_limit
                   else "nothing says the data are not the limit")
            out.append(Advice(
                "data",
                f"The training error ({train.force_mae:.0f} meV/Å) is close to the held-out one, but {why}: a larger "
                f"student is not advised (issue 26: a medium Si student was no better on unseen frames). More frames "
                f"of the failing kinds and rounds come first: {_command(in_place, rounds=d.rounds + 1, committee=max(d.committee, 3))}"
                if d.committee < 2 else
                f"The training error ({train.force_mae:.0f} meV/Å) is close to the held-out one, but {why}: a larger "
                f"student is not advised (issue 26: a medium Si student was no better on unseen frames). More frames "
                f"of the failing kinds and rounds come first: {_command(in_place, rounds=d.rounds + 2)}",
                None if c is None else c.more_rounds(2 if d.committee >= 2 else 1, d.rounds)))
    if d.flagged_fraction is not None and d.flagged_fraction > 0.2:
        out.append(Advice("committee", f"The committee flags {100 * d.flagged_fraction:.0f} % of the held-out frames as "
                                       "uncertain: the sample does not cover them yet."))
    return out


def advise(d: Diagnosis, argv: Sequence[str]) -> list[str]:
    """Sentences of advice (empty when the frame and property gates pass); ``argv`` is the
    command that ran (or would rerun) this distillation, to which each cure adds or changes
    a flag. With costs, each cure says its estimated time and the last line what one more
    hour would buy (:func:`next_hour`)."""
    cures = diagnose(d, argv)
    lines = [a.line() for a in cures]
    if d.costs is not None and any(a.seconds is not None for a in cures):
        lines.append(next_hour(cures))
    return lines


def next_hour(cures: Sequence[Advice], hour_s: float = 3600.0) -> str:
    """Which of the costed cures fit one more hour, cheapest first (estimates); a new run
    that would take the hour or more is named as the alternative (``--budget 1h`` plans it
    into the hour)."""
    costed = sorted((a for a in cures if a.seconds is not None), key=lambda a: a.seconds)
    fit, left, spent = [], [], 0.0
    for a in costed:
        if spent + a.seconds <= hour_s:
            fit.append(a)
            spent += a.seconds
        else:
            left.append(a)
    text = "What the next hour would buy (estimate): "
    text += (" + ".join(f"{_LABEL[a.kind]} (~{_minutes(a.seconds)})" for a in fit) if fit else "none of the steps above")
    new_runs = [a for a in left if a.kind in ("properties", "capacity")]
    rest = [a for a in left if a not in new_runs]
    if new_runs:
        text += "; or instead " + " or ".join(f"{_LABEL[a.kind]} with --budget 1h (~{_minutes(min(a.seconds, hour_s))}, "
                                              "its plan keeps to the hour with fewer configurations or epochs)"
                                              for a in new_runs)
    if rest:
        text += "; beyond it: " + "; ".join(f"{_LABEL[a.kind]} (~{_minutes(a.seconds)})" for a in rest)
    return text + "."


def _budget_s(budget: str) -> float:
    from torchsim_distill.utils.durations import parse_duration

    return float(parse_duration(budget))


_LABEL = {"properties": "the property frames (new run)", "epochs": "the longer training (resumed)",
          "data": "more data or rounds", "capacity": "a larger student (new run)", "far_kinds": "the far kinds",
          "committee": "the committee's gaps", "properties_unmapped": "seeds for the other properties"}


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def _weights(entries: Sequence[str]) -> dict[str, float]:
    out = {}
    for entry in entries:
        kind, _, value = str(entry).partition("=")
        out[kind] = float(value)
    return out


def _worst_kinds(m: Metrics) -> list[tuple[str, float]]:
    out = [(k, km.force_mae) for k, km in m.per_kind.items() if km.force_mae > WORST_KIND_RATIO * m.force_mae]
    return sorted(out, key=lambda kf: -kf[1])[:3]


def _budgeted(argv: Sequence[str], budget: str | None) -> list[str]:
    """``argv`` for a new run: with a budget, without the planned knobs (the plan chooses them)."""
    if not budget:
        return list(argv)
    return _without(argv, PLANNED_FLAGS)


def _unbudgeted(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--budget``: a rerun in the same directory would reuse its plan."""
    return _without(argv, ("--budget",))


def _without(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    args, out, i = list(argv), [], 0
    while i < len(args):
        if args[i] in flags:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def _command(argv: Sequence[str], **changes: object) -> str:
    """``argv`` with ``--flag value`` set for each change (``max_epochs`` → ``--max-epochs``;
    a value with spaces, such as ``kind_weights``, is several arguments)."""
    return shlex.join(_with(argv, **changes))


def _with(argv: Sequence[str], **changes: object) -> list[str]:
    """:func:`_command`'s arguments, as a list."""
    args = list(argv)
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        values = str(value).split(" ") if name == "kind_weights" else [str(value)]
        if flag in args:
            i = args.index(flag)
            j = i + 1
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            args[i + 1:j] = values
        else:
            args += [flag, *values]
    return args


def _new_out(argv: Sequence[str], suffix: str) -> str:
    out = argv[argv.index("--out") + 1] if "--out" in argv else "run"
    return f"{out.rstrip('/')}-{suffix}"


def distill_argv(config) -> list[str]:
    """The ``torchsim-distill distill`` command line of a :class:`~torchsim_distill.distill.config.DistillConfig`:
    the flags generated from its fields (:func:`~torchsim_distill.utils.options.to_flags`), those
    that differ from the command's defaults and those always shown; other settings are the Python API's."""
    return ["torchsim-distill", "distill", *to_flags(config, type(config).cli_defaults())]
