"""Deprecated name of :mod:`torchsim_distill.bench.call_split` (its old basename was also utils/timing.py's):
importing it still works for one release, with a DeprecationWarning."""

import warnings

from torchsim_distill.bench.call_split import *  # noqa: F403

warnings.warn("torchsim_distill.bench.timing is now torchsim_distill.bench.call_split", DeprecationWarning, stacklevel=2)
