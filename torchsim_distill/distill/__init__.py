"""Distillation: teacher → sampled frames → labels → trained student → evaluation.

One module per stage (``teachers``, ``sampling``, ``labeling``, ``training``,
``evaluation``, ``report``) and ``run``, which chains them in a resumable run directory.
Uses the runtime and the compile step; nothing below imports it::

    from torchsim_distill.distill import DistillConfig, distill
    result = distill(DistillConfig(teacher="emt", structures=["seeds.xyz"], out="runs/cuau"))
"""

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
from torchsim_distill.distill.training import ModelOptions, TrainingOptions

__all__ = [
    "DistillConfig", "DistillResult", "ModelOptions", "SamplingOptions", "TrainingOptions", "distill",
    "label_stage", "package_stage", "read_distill_metadata", "sample_stage", "split_stage", "train_stage",
    "type_names_of",
]
