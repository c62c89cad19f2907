"""Thread counts for the numeric libraries on a small, shared machine.

LightGBM, XGBoost and torch each run an OpenMP pool. By default OpenMP threads spin
while they wait for work; on two cores shared with torch or a second process, a
spinning pool makes a small LightGBM training many times slower than one thread
(measured: a 630-row training took 122 s with the default threads and 8.4 s with one).
So: threads wait passively, and a training gets more than one thread only when its
data is large enough for the parallel speed-up to beat the synchronisation cost.
"""

from __future__ import annotations

import os

#: Below this many feature cells (rows x features) one thread is faster or equal.
#: Measured on 2 cores: 1,200 x 768 cells train in 1.2 s on one thread and 0.8 s on
#: two when the machine is idle, but two threads lose badly as soon as the other core
#: is busy; at 12,000 x 768 two threads win (2.8 s vs 4.6 s) even with some load.
PARALLEL_CELLS = 5_000_000


def configure_openmp() -> None:
    """Make OpenMP pools wait passively. Call before torch, LightGBM or XGBoost load
    (OpenMP reads the variable once, when its runtime starts)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def training_threads(n_rows: int, n_features: int, requested: int | None = None) -> int:
    """Threads for one model fit: ``requested`` if given (capped at the cores), else
    one for small data and every core for large data (see :data:`PARALLEL_CELLS`)."""
    cores = available_cores()
    if requested is not None and requested > 0:
        return min(requested, cores)
    return 1 if n_rows * n_features < PARALLEL_CELLS else cores
