"""The benchmark harness: throughput of student, teacher and nequip's calculator vs batch
size, the cost split of one student call, and memory over many calls::

    result = run_benchmarks("bench_out/", smoke=True)
    print(result.summary)   # results.csv, PNG plots and summary.md are in bench_out/

Modules, each with one job: :mod:`.plan` (what is run: plans, options, Cu–Au cells),
:mod:`.contenders` (who runs: student, nequip, teacher), :mod:`.call_split` (instruments
for the call split), :mod:`.suites` (the measurements), :mod:`.machine` (hardware and
software columns), :mod:`.report` (CSV, plots, summary) and :mod:`.runner` (the
orchestration), :mod:`.toy` (the smoke runs' EMT student). Generic timing lives in :mod:`torchsim_distill.utils.timing`.
"""

# torch-sim's, nequip's and Warp's first imports, with their known notices silenced (see
# torchsim_distill.utils.quiet): the runtime does them quietly
import torchsim_distill.runtime  # noqa: F401, I001
from torchsim_distill.bench.call_split import STAGES
from torchsim_distill.bench.contenders import CALCULATORS
from torchsim_distill.bench.machine import machine_info
from torchsim_distill.bench.plan import (
    FULL,
    SMOKE,
    BenchOptions,
    BenchPlan,
    cu_au_cells,
    fcc_repeat,
)
from torchsim_distill.bench.report import COLUMNS
from torchsim_distill.bench.runner import BenchResult, run_benchmarks
from torchsim_distill.utils.timing import (
    CLOCKS,
    Clock,
    interleaved,
    iqr,
    median,
    pinned_threads,
)

__all__ = [
    "CALCULATORS", "CLOCKS", "COLUMNS", "FULL", "SMOKE", "STAGES", "BenchOptions", "BenchPlan", "BenchResult",
    "Clock", "cu_au_cells", "fcc_repeat", "interleaved", "iqr", "machine_info", "median", "pinned_threads",
    "run_benchmarks",
]
