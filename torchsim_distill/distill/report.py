"""Deprecated name of :mod:`torchsim_distill.distill.model_card` (its old basename was also bench/report.py's):
importing it still works for one release, with a DeprecationWarning."""

import warnings

from torchsim_distill.distill.model_card import *  # noqa: F403

warnings.warn("torchsim_distill.distill.report is now torchsim_distill.distill.model_card", DeprecationWarning, stacklevel=2)
