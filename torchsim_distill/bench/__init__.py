"""The benchmark harness: throughput of student, teacher and nequip's calculator vs batch
size, the cost split of one student call, and memory over many calls::

    result = run_benchmarks("bench_out/", smoke=True)
    print(result.summary)   # results.csv, PNG plots and summary.md are in bench_out/
"""

from torchsim_distill.bench.harness import (
    CALCULATORS,
    COLUMNS,
    STAGES,
    BenchResult,
    cu_au_cells,
    fcc_repeat,
    machine_info,
    run_benchmarks,
)
from torchsim_distill.utils.timing import CLOCKS, Clock, interleaved, iqr, median, pinned_threads

__all__ = [
    "CALCULATORS", "CLOCKS", "COLUMNS", "STAGES", "BenchResult", "Clock", "cu_au_cells", "fcc_repeat",
    "interleaved", "iqr", "machine_info", "median", "pinned_threads", "run_benchmarks",
]
