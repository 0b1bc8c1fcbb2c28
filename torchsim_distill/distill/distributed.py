"""Deprecated name of :mod:`torchsim_distill.distill.ray_labeling` (its old basename was also jobs/distributed.py's):
importing it still works for one release, with a DeprecationWarning."""

import warnings

from torchsim_distill.distill.ray_labeling import *  # noqa: F403

warnings.warn("torchsim_distill.distill.distributed is now torchsim_distill.distill.ray_labeling", DeprecationWarning, stacklevel=2)
