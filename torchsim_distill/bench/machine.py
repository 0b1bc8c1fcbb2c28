"""Where a benchmark ran: the hardware and software columns of every result row.

It exists because a timing means nothing without the machine and versions behind it;
:func:`machine_info` gives enough to tell whether two results are comparable (the
harness and ``benchmarks/calc_overhead.py`` both stamp it on their output)::

    machine_info("cpu")   # {"cpu_model": ..., "torch_threads": 1, "torch_version": ..., ...}
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Hardware and software columns: enough to know whether two results are comparable."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "gpu": gpu,
        "torch_version": torch.__version__,
        "torch_sim_version": _version("torch-sim-atomistic"),
        "nequip_version": _version("nequip"),
        "nvalchemiops_version": _version("nvalchemi-toolkit-ops"),
        "python_version": platform.python_version(),
    }
