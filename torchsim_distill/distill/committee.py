"""Deprecated name of :mod:`torchsim_distill.distill.committee_training` (its old basename was also runtime/committee.py's):
importing it still works for one release, with a DeprecationWarning."""

import warnings

from torchsim_distill.distill.committee_training import *  # noqa: F403

warnings.warn("torchsim_distill.distill.committee is now torchsim_distill.distill.committee_training", DeprecationWarning, stacklevel=2)


def __getattr__(name: str):
    """``compiled_student`` lived here too; it is :func:`torchsim_distill.models.student.compiled_student`."""
    if name == "compiled_student":
        from torchsim_distill.models import student

        warnings.warn("torchsim_distill.distill.committee.compiled_student is now "
                      "torchsim_distill.models.student.compiled_student", DeprecationWarning, stacklevel=2)
        return student.compiled_student
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
