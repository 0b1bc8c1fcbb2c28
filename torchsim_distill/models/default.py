"""The shipped default student: SevenNet-0 distilled into a small NequIP model for Cu–Au.

Its package, model card and parity plots live in ``models/cu_au_sevennet0/``; the recipe
that rebuilds them (and its training run) lives outside the wheel, in ``recipes/``::

    calc = default_calc()          # compiled once per machine and device, then cached
    path = default_package()       # the package file (the registry's "cu-au-sevennet0")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry lists this student without importing torch
    from torchsim_distill.runtime.calculator import DistilledTorchSimCalc

DEFAULT_DIR = Path(__file__).parent / "cu_au_sevennet0"
#: The shipped student (a nequip package with its distillation metadata inside).
DEFAULT_PACKAGE = DEFAULT_DIR / "cu_au_sevennet0.nequip.zip"
#: Its model card (held-out metrics, gates, speed), written by the recipe's evaluation.
DEFAULT_CARD = DEFAULT_DIR / "model_card.json"
#: Its name in the student registry (``default`` is an alias of it).
DEFAULT_NAME = "cu-au-sevennet0"
#: The name that keeps meaning the ``small`` preset's Cu–Au student (l_max 1, 2 layers, 16
#: features) whatever ``default`` becomes: today it is the default student itself; a wider
#: default would ship beside it, and this name would move to the small one's own folder.
SMALL_NAME = "cu-au-sevennet0-small"


def default_package() -> Path:
    """The shipped package, or a clear error if this install lacks it."""
    if not DEFAULT_PACKAGE.is_file():
        raise FileNotFoundError(
            f"the default student {DEFAULT_PACKAGE} is not in this install; "
            "rebuild it with `python recipes/cu_au_sevennet0_v2.py` from a source checkout"
        )
    return DEFAULT_PACKAGE


def default_calc(device: str = "cpu", *, skin: float | None = 0.5, **options) -> DistilledTorchSimCalc:
    """A ready ``DistilledTorchSimCalc`` for the default student (compiled once, then cached).

    Use ``skin=None`` when the cell changes every step (a cell filter): a Verlet skin's
    cached pairs are then invalid every step and the skin only costs.
    """
    from torchsim_distill.models.student import student_calc

    return student_calc(default_package(), device, skin=skin, **options)
