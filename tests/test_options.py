"""One options object per concern: coerced one way, built from old flat forms, and the
command line generated from the fields (a new option is one field)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import warnings
from dataclasses import asdict, dataclass, field

import pytest

from torchsim_distill.distill.acceptance import AcceptanceOptions
from torchsim_distill.distill.advice import distill_argv
from torchsim_distill.distill.committee_training import CommitteeOptions
from torchsim_distill.distill.config import DistillConfig
from torchsim_distill.distill.evaluation import Gates
from torchsim_distill.distill.rounds import RoundOptions
from torchsim_distill.distill.sampling import SamplingOptions
from torchsim_distill.distill.training import ModelOptions, TrainingOptions
from torchsim_distill.jobs.relax import RelaxOptions
from torchsim_distill.utils.jsonable import jsonable
from torchsim_distill.utils.options import add_flags, cli, coerce, from_flags, to_flags

#: run.json's "config" as runs before the options were grouped wrote it (flat)
FLAT_RUN_JSON = {
    "teacher": "emt", "structures": ["s.xyz"], "out": "o", "student": "nequip", "size": "medium",
    "precision": "float32", "n_configs": 200, "seed": 3, "r_max": 4.5, "max_epochs": 60, "batch_size": 8,
    "lr": 0.005, "kinds": None, "fractions": [0.75, 0.1, 0.15], "label_batch_size": 8,
    "atomic_energy_weight": 0.1, "stress_weight": 1000.0, "energy_weight": 10.0, "force_huber_delta": 0.5,
    "lr_schedule": "cosine", "init_from": None, "train_exclude_kinds": ["compress"], "train_dir": "train",
    "gates": None, "device": "cpu", "sampling": {"max_strain": 0.05, "temperatures": [300.0, 900.0]},
    "committee": {"size": 3, "epochs": 5, "lr": 0.002}, "rounds": {"rounds": 1, "budget": 100, "epochs": 5},
    "acceptance": {"hot_factor": 1.0}, "property_structures": None, "ray": None,
}


def test_an_old_flat_run_json_loads_into_the_grouped_options():
    config = DistillConfig.from_dict(FLAT_RUN_JSON)
    assert config.model == ModelOptions(size="medium", r_max=4.5, precision="float32")
    assert config.training == TrainingOptions(
        max_epochs=60, batch_size=8, lr=0.005, seed=3, atomic_energy_weight=0.1, stress_weight=1000.0,
        energy_weight=10.0, force_huber_delta=0.5, lr_schedule="cosine",
    )
    assert config.sampling == SamplingOptions(max_strain=0.05, temperatures=(300.0, 900.0))
    assert config.committee == CommitteeOptions(size=3, epochs=5, lr=0.002)
    assert config.rounds == RoundOptions(rounds=1, budget=100, epochs=5)
    assert config.acceptance == AcceptanceOptions(hot_factor=1.0) and config.gates == Gates()
    assert config.fractions == (0.75, 0.1, 0.15) and config.train_exclude_kinds == ("compress",)
    # the flat names still read (code written before the grouping)
    assert (config.size, config.lr, config.max_epochs, config.precision) == ("medium", 0.005, 60, "float32")
    # and the nested form it now writes reads back equal
    again = DistillConfig.from_dict(json.loads(json.dumps(jsonable(asdict(config)))))
    assert again == config


def test_flat_keywords_nested_objects_and_replace_agree():
    flat = DistillConfig(teacher="emt", structures=["s.xyz"], out="o", size="medium", lr=0.005, seed=2)
    nested = DistillConfig(teacher="emt", structures=["s.xyz"], out="o", seed=2,
                           model=ModelOptions(size="medium", r_max=5.0), training=TrainingOptions(max_epochs=100, lr=0.005))
    assert flat == nested and flat.training.seed == 2
    tuned = dataclasses.replace(flat, lr=0.001, train_dir="refine")  # as recipes/cu_au_sevennet0.py does
    assert tuned.training.lr == 0.001 and tuned.model.size == "medium" and tuned.train_dir == "refine"
    assert DistillConfig(teacher="emt", structures=[], out="o", committee=3).committee.size == 3
    assert DistillConfig(teacher="emt", structures=[], out="o", acceptance=False).acceptance is None
    off = DistillConfig(teacher="emt", structures=[], out="o", acceptance=None)
    # skipped stays skipped through a budget's plan (replace) and a resumed run's run.json
    assert off.acceptance is None and dataclasses.replace(off, n_configs=5).acceptance is None
    assert DistillConfig.from_dict(jsonable(asdict(off))).acceptance is None
    explored = DistillConfig(teacher="emt", structures=[], out="o", explore={"driver": "student", "max_epochs": 5})
    assert DistillConfig.from_dict(json.loads(json.dumps(jsonable(asdict(explored))))).explore == explored.explore
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['sise'\]"):
        DistillConfig(teacher="emt", structures=[], out="o", sise="medium")
    with pytest.raises(TypeError, match="unknown CommitteeOptions option"):
        DistillConfig(teacher="emt", structures=[], out="o", committee={"members": 3})
    with pytest.raises(ValueError, match="seed"):
        DistillConfig(teacher="emt", structures=[], out="o", seed=1, training=TrainingOptions(seed=2))


def test_coerce_is_the_one_conversion():
    assert coerce(RoundOptions, 2, "rounds") == RoundOptions(rounds=2)
    assert coerce(RoundOptions, None) == RoundOptions() and coerce(AcceptanceOptions, False) is None
    opts = RoundOptions(budget=3)
    assert coerce(RoundOptions, opts) is opts
    assert coerce(RoundOptions, {"structures": ["a.xyz"]}).structures == ("a.xyz",)


def _distill_parser() -> argparse.ArgumentParser:
    from torchsim_distill.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)).choices["distill"]


def test_the_command_line_round_trips_through_the_config():
    config = DistillConfig.from_dict(FLAT_RUN_JSON)
    argv = distill_argv(config)
    assert argv[:2] == ["torchsim-distill", "distill"]
    back = DistillConfig(**from_flags(_distill_parser().parse_args(argv[2:]), DistillConfig.cli_defaults()))
    # what the command line carries comes back; the rest is the Python API's (defaults there)
    assert back.model == config.model and back.committee.size == 3 and back.rounds == RoundOptions(rounds=1, budget=100, epochs=5)
    assert (back.teacher, back.structures, back.out, back.seed, back.n_configs) == ("emt", ["s.xyz"], "o", 3, 200)
    assert back.training.max_epochs == 60 and back.acceptance == AcceptanceOptions()
    explored = distill_argv(DistillConfig(teacher="emt", structures=["s.xyz"], out="o", explore={"driver": "student"}))
    assert explored[explored.index("--explore-driver") + 1] == "student"
    back = DistillConfig(**from_flags(_distill_parser().parse_args(explored[2:]), DistillConfig.cli_defaults()))
    assert back.explore.driver == "student"
    off = distill_argv(DistillConfig(teacher="emt", structures=["s.xyz"], out="o", acceptance=False))
    assert "--no-acceptance" in off
    assert DistillConfig(**from_flags(_distill_parser().parse_args(off[2:]), DistillConfig.cli_defaults())).acceptance is None


def test_a_new_option_is_one_field():
    """The mechanism the distill and relax commands use, on a new options class: one field
    with ``cli`` metadata is a flag with its default and type, and comes back in the argv."""

    @dataclass(frozen=True)
    class Inner:
        warmup_epochs: int = field(default=0, metadata=cli("epochs of linear warm-up"))
        plain: float = 1.0  # no metadata: not on the command line

    @dataclass(frozen=True)
    class Outer:
        name: str = field(default="x", metadata=cli("a name", always=True))
        inner: Inner = field(default_factory=Inner)

    parser = argparse.ArgumentParser()
    add_flags(parser, Outer())
    args = parser.parse_args(["--warmup-epochs", "5"])
    assert args.warmup_epochs == 5 and args.name == "x"
    built = Outer(**from_flags(args, Outer()))
    assert built == Outer(inner=Inner(warmup_epochs=5))
    assert to_flags(built, Outer()) == ["--name", "x", "--warmup-epochs", "5"]
    assert "--plain" not in parser.format_help()


def test_relax_options_are_one_object_for_every_entry_point():
    from torchsim_distill.cli import build_parser

    args = build_parser().parse_args(["relax", "a.xyz", "--out", "o", "--cell-filter", "none", "--fmax", "0.01"])
    assert RelaxOptions(**from_flags(args, RelaxOptions())) == RelaxOptions(fmax=0.01, cell_filter=None)
    assert RelaxOptions.of({"max_steps": 3}, fmax=0.2) == RelaxOptions(max_steps=3, fmax=0.2)
    with pytest.raises(ValueError, match="fmax must be positive"):
        RelaxOptions(fmax=0)
    with pytest.raises(ValueError, match="cell_filter"):
        RelaxOptions.of(cell_filter="exp")


@pytest.mark.parametrize(("old", "name"), [
    ("torchsim_distill.distill.committee", "CommitteeOptions"),
    ("torchsim_distill.distill.distributed", "teacher_outputs"),
    ("torchsim_distill.distill.report", "CardSection"),
    ("torchsim_distill.bench.run", "run_benchmarks"),
    ("torchsim_distill.bench.timing", "STAGES"),
])
def test_old_module_paths_still_import_with_a_warning(old, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert hasattr(module, name)


@pytest.mark.parametrize(("module", "name", "new"), [
    ("torchsim_distill.distill.packaging", "committee_of", "torchsim_distill.models.package"),
    ("torchsim_distill.distill.evaluation", "evaluate", "torchsim_distill.distill.evaluation"),
])
def test_moved_names_still_import_with_a_warning(module, name, new):
    with pytest.warns(DeprecationWarning):
        value = getattr(importlib.import_module(module), name)
    assert callable(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module(new)  # the new home imports without a warning
