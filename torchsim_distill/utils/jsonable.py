"""Values made safe for strict JSON (run logs, model cards, package metadata)::

    json.dumps(jsonable({"mae": float("nan"), "shape": np.int64(3)}), allow_nan=False)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def jsonable(value: object) -> object:
    """Numbers, strings, lists and dicts only: NaN/inf become ``None`` (strict JSON has
    neither), numpy scalars and arrays become Python ones, dataclasses dicts, paths and
    anything else their string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)
