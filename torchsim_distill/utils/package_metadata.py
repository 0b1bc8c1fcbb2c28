"""The distillation metadata inside a packaged student, read with nothing but ``zipfile``.

A ``.nequip.zip`` is a zip file; listing students (``torchsim-distill models``) and the
drop-in calculator's checks read its teacher, species, size and training cells without
importing torch, nequip or Warp (seconds of start-up)::

    read_distill_metadata("student.nequip.zip")["teacher"]

Written by :mod:`torchsim_distill.distill.packaging`, which re-exports both names.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

#: Entry added to the packaged student with what it was distilled from.
DISTILL_METADATA_ENTRY = "torchsim_distill_distillation.json"


def read_distill_metadata(package: str | Path) -> dict[str, Any]:
    """The distillation metadata of a packaged student (empty if it has none)."""
    with zipfile.ZipFile(package) as zf:
        names = [n for n in zf.namelist() if n.endswith(DISTILL_METADATA_ENTRY)]
        return json.loads(zf.read(names[0])) if names else {}
