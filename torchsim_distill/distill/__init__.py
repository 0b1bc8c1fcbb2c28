"""Distillation: teacher → sampled frames → labels → trained student → evaluation.

One module per stage (``teachers``, ``sampling``, ``splitting``, ``labeling``
(``ray_labeling`` on a cluster), ``training``, ``committee_training``, ``rounds``,
``packaging``, ``evaluation``, ``acceptance``, ``model_card``), ``config`` (what a run
depends on) and ``run``, which chains them in a resumable run directory. ``calibration``
scores the committee, ``properties`` measures one model, ``sections`` and ``advice``
write the card's parts beyond the frame errors. Uses the runtime and the compile step;
nothing below imports it::

    from torchsim_distill.distill import DistillConfig, distill
    result = distill(DistillConfig(teacher="emt", structures=["seeds.xyz"], out="runs/cuau"))

The names below load on first use (PEP 562), so that importing one stage (``packaging``,
``committee_training``) does not import them all (training's and sampling's dependencies take seconds).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# torch-sim's, nequip's and Warp's first imports, with their known notices silenced (see
# torchsim_distill.utils.quiet): every stage imports them, and the runtime does it quietly
import torchsim_distill.runtime  # noqa: F401

if TYPE_CHECKING:
    from torchsim_distill.distill.acceptance import AcceptanceGates, AcceptanceOptions, acceptance_suite
    from torchsim_distill.distill.committee_training import CommitteeOptions
    from torchsim_distill.distill.rounds import RoundOptions
    from torchsim_distill.distill.run import (
        DistillConfig,
        DistillResult,
        distill,
        label_stage,
        package_stage,
        read_distill_metadata,
        sample_stage,
        split_stage,
        train_stage,
        type_names_of,
    )
    from torchsim_distill.distill.sampling import SamplingOptions
    from torchsim_distill.distill.splitting import split_frames
    from torchsim_distill.distill.training import ModelOptions, TrainingOptions

_EXPORTS = {
    **dict.fromkeys(
        ["DistillConfig", "DistillResult", "distill", "label_stage", "package_stage", "read_distill_metadata",
         "sample_stage", "split_stage", "train_stage", "type_names_of"],
        "torchsim_distill.distill.run",
    ),
    **dict.fromkeys(["AcceptanceGates", "AcceptanceOptions", "acceptance_suite"], "torchsim_distill.distill.acceptance"),
    "CommitteeOptions": "torchsim_distill.distill.committee_training",
    "RoundOptions": "torchsim_distill.distill.rounds",
    "SamplingOptions": "torchsim_distill.distill.sampling",
    "split_frames": "torchsim_distill.distill.splitting",
    "ModelOptions": "torchsim_distill.distill.training",
    "TrainingOptions": "torchsim_distill.distill.training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchsim_distill.distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
