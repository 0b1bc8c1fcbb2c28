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
"""

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

__all__ = [
    "AcceptanceGates", "AcceptanceOptions", "CommitteeOptions", "DistillConfig", "DistillResult", "ModelOptions",
    "RoundOptions", "SamplingOptions", "TrainingOptions", "acceptance_suite", "distill", "label_stage",
    "package_stage", "read_distill_metadata", "sample_stage", "split_frames", "split_stage", "train_stage",
    "type_names_of",
]
