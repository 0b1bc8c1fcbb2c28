"""What to try when a student fails its gates, read from what the run measured.

A failed card that says only FAILED leaves the user guessing. :func:`advise` looks at the
held-out errors by kind of frame, the gap between training and held-out errors, whether
the validation loss was still improving when training stopped, and the committee's
flags, and turns them into a few sentences, each with the command that tries the cure::

    lines = advise(Diagnosis(test=report.metrics, train=train_metrics, gates=gates,
                             best_epoch=41, max_epochs=50, ...), argv=["torchsim-distill", ...])

The rules are rules of thumb, ordered by how cheap the cure is:

- the best checkpoint is among the last tenth of the epochs: the loss was still falling,
  so **more epochs** (training resumes from ``last.ckpt``);
- training errors far below the held-out ones (held-out force MAE > 2× training): the
  student memorised its sample, so **more data**: on-policy rounds when a committee
  exists, else more sampled configurations;
- training errors close to the held-out ones and above the gate: the student cannot fit
  even its own data, so **a larger size** (or a larger cutoff);
- kinds of frames whose force error is more than twice the overall one are named, since
  more configurations of those kinds (``kinds`` / ``sampling``) are the targeted cure.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from torchsim_distill.distill.evaluation import Gates, Metrics
from torchsim_distill.utils.options import to_flags

#: held-out / training force error above which the student counts as over-fitted
GAP_RATIO = 2.0
#: a kind whose force error exceeds this multiple of the overall one is named
WORST_KIND_RATIO = 2.0
SIZES = ("tiny", "small", "medium", "large")


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


def advise(d: Diagnosis, argv: Sequence[str]) -> list[str]:
    """Sentences of advice (empty when the frame gates pass); ``argv`` is the command that
    ran (or would rerun) this distillation, to which each cure adds or changes a flag."""
    failing = [
        name for name in ("energy_mae", "force_mae", "stress_mae")
        if getattr(d.test, name) is not None and not getattr(d.test, name) <= getattr(d.gates, name)
    ]
    if not failing:
        return []
    lines = []
    worst = _worst_kinds(d.test)
    if worst:
        named = ", ".join(f"{k} ({f:.0f} meV/Å)" for k, f in worst)
        lines.append(
            f"The worst held-out frames are {named}, against {d.test.force_mae:.0f} meV/Å overall: "
            "sample more of those kinds (DistillConfig.kinds / sampling) or let on-policy rounds find them."
        )
    if d.best_epoch is not None and d.best_epoch >= 0.9 * (d.max_epochs - 1):
        more = max(2 * d.max_epochs, d.max_epochs + 20)
        lines.append(
            f"The validation loss was still improving at the end (best epoch {d.best_epoch + 1} of {d.max_epochs}): "
            f"train longer; this resumes from the last checkpoint: {_command(argv, max_epochs=more)}"
        )
    gap = d.train is not None and d.train.force_mae > 0 and d.test.force_mae > GAP_RATIO * d.train.force_mae
    if gap:
        assert d.train is not None
        what = (
            f"Held-out force error {d.test.force_mae:.0f} meV/Å is {d.test.force_mae / d.train.force_mae:.1f}× the "
            f"training error ({d.train.force_mae:.0f} meV/Å): the student needs more varied data, not more capacity."
        )
        if d.committee >= 2:
            lines.append(f"{what} Run more on-policy rounds: {_command(argv, rounds=d.rounds + 2)}")
        else:
            lines.append(
                f"{what} Add a committee and on-policy rounds: {_command(argv, committee=3, rounds=2)}; "
                f"or sample more configurations in a new run directory: "
                f"{_command(argv, n_configs=2 * d.n_configs, out=_new_out(argv, 'more-configs'))}"
            )
    elif d.train is not None and d.size != SIZES[-1]:
        bigger = SIZES[SIZES.index(d.size) + 1] if d.size in SIZES else "medium"
        lines.append(
            f"The training error ({d.train.force_mae:.0f} meV/Å, {d.train.energy_mae:.1f} meV/atom) is close to the "
            f"held-out one: the student cannot fit its own data. Try a larger student in a new run directory "
            f"(labels are reused only within one): {_command(argv, size=bigger, out=_new_out(argv, bigger))}"
        )
    if d.flagged_fraction is not None and d.flagged_fraction > 0.2:
        lines.append(
            f"The committee flags {100 * d.flagged_fraction:.0f} % of the held-out frames as uncertain: "
            "the sample does not cover them yet."
        )
    return lines


def _worst_kinds(m: Metrics) -> list[tuple[str, float]]:
    out = [(k, km.force_mae) for k, km in m.per_kind.items() if km.force_mae > WORST_KIND_RATIO * m.force_mae]
    return sorted(out, key=lambda kf: -kf[1])[:3]


def _command(argv: Sequence[str], **changes: object) -> str:
    """``argv`` with ``--flag value`` set for each change (``max_epochs`` → ``--max-epochs``)."""
    args = list(argv)
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if flag in args:
            i = args.index(flag)
            args[i + 1] = str(value)
        else:
            args += [flag, str(value)]
    return shlex.join(args)


def _new_out(argv: Sequence[str], suffix: str) -> str:
    out = argv[argv.index("--out") + 1] if "--out" in argv else "run"
    return f"{out.rstrip('/')}-{suffix}"


def distill_argv(config) -> list[str]:
    """The ``torchsim-distill distill`` command line of a :class:`~torchsim_distill.distill.config.DistillConfig`:
    the flags generated from its fields (:func:`~torchsim_distill.utils.options.to_flags`), those
    that differ from the command's defaults and those always shown; other settings are the Python API's."""
    return ["torchsim-distill", "distill", *to_flags(config, type(config).cli_defaults())]
