"""Deprecated name of :mod:`torchsim_distill.bench.runner` (its old basename was also distill/run.py's):
importing it still works for one release, with a DeprecationWarning."""

import warnings

from torchsim_distill.bench.runner import *  # noqa: F403

warnings.warn("torchsim_distill.bench.run is now torchsim_distill.bench.runner", DeprecationWarning, stacklevel=2)
