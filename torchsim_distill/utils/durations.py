"""Wall times as users write them: ``"45m"``, ``"1h"``, ``"1.5h"``, ``"3600s"``."""

from __future__ import annotations

import re

#: the forms :func:`parse_duration` takes
DURATION_FORMS = "a number with a unit: 45m, 1h, 1.5h, 3600s"


def parse_duration(text: str) -> float:
    """Seconds of ``"45m"``, ``"1h"``, ``"1.5h"`` or ``"3600s"``; anything else (no unit,
    two units, a sign, zero) is a ``ValueError`` that names the forms."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", str(text))
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"budget {text!r} is not a time: give {DURATION_FORMS}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
