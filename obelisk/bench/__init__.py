"""``obelisk bench``: workloads timed beside the raw driver doing the same work.

Every figure is reported as a ratio to the raw driver measured in the same run, on the
same machine, so results stay meaningful on noisy or slow hardware. Backends: SQLite
(``sqlite3``) and PostgreSQL (asyncpg; :mod:`obelisk.bench.pg_backend`, imported on demand).
"""

from obelisk.bench.backends import Backend, SQLiteBackend, backend_from_option
from obelisk.bench.baseline import RawBaseline
from obelisk.bench.catalog import WORKLOADS
from obelisk.bench.measure import BenchError, Sample, VerificationFailed, stopwatch
from obelisk.bench.runner import WorkloadResult, run_bench, run_bench_cli
from obelisk.bench.workload import Target, Workload

__all__ = [
    "WORKLOADS",
    "Backend",
    "BenchError",
    "RawBaseline",
    "SQLiteBackend",
    "Sample",
    "Target",
    "VerificationFailed",
    "Workload",
    "WorkloadResult",
    "backend_from_option",
    "run_bench",
    "run_bench_cli",
    "stopwatch",
]
