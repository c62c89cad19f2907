"""The Dask cluster: a LocalCluster started here or a running scheduler (``--dask``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from oirl._threads import configure_openmp
from oirl.errors import OirlError, one_line

DEFAULT_LOCAL_WORKERS = 2
WORKER_MEMORY_CAP = 4 * 2**30  # bytes per local worker at most (the nanny restarts a worker above it)


# --------------------------------------------------------------------------- the cluster


def parse_dask_spec(spec: str) -> tuple[str, int | str]:
    """``local`` -> ("local", 2); ``local:N`` -> ("local", N); ``tcp://HOST:PORT`` -> ("tcp", address)."""
    text = (spec or "").strip()
    if text == "local":
        return "local", DEFAULT_LOCAL_WORKERS
    if text.startswith("local:"):
        count = text.split(":", 1)[1]
        if count.isdigit() and 1 <= int(count) <= 256:
            return "local", int(count)
    elif text.startswith("tcp://"):
        host, _, port = text[len("tcp://") :].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", text
    raise OirlError(f"--dask {spec!r}: expected local, local:N (N workers, 1 to 256) or tcp://HOST:PORT")


def _require_dask() -> None:
    try:
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise OirlError("--dask needs the [dask] extra: pip install 'oirl[dask]'") from None


def local_memory_limit(n_workers: int) -> int:
    """Bytes per local worker: 80% of the machine's memory shared out, at most 4 GiB."""
    import psutil

    return int(min(WORKER_MEMORY_CAP, 0.8 * psutil.virtual_memory().total / max(1, n_workers)))


@contextlib.contextmanager
def dask_client(spec: str | None, *, memory_limit: int | str | None = None) -> Iterator[Any]:
    """A connected ``distributed.Client``: a LocalCluster started here (and closed at the
    end) or an existing scheduler's; ``None`` for no spec. Raises :class:`OirlError` for
    a bad spec or an unreachable scheduler."""
    if spec is None:
        yield None
        return
    kind, value = parse_dask_spec(spec)
    _require_dask()

    configure_openmp()  # local workers inherit the environment: passive OpenMP waits
    import dask
    from distributed import Client, LocalCluster

    if kind == "local":

        # The in-process scheduler logs every shuffle it starts as a warning.
        shuffle_log = logging.getLogger("distributed.shuffle")
        level = shuffle_log.level
        shuffle_log.setLevel(logging.ERROR)
        # Spilling would only copy the arrays a running task holds to disk, freeing nothing.
        with dask.config.set({"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}):
            cluster = LocalCluster(n_workers=int(value), threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, memory_limit=memory_limit or local_memory_limit(int(value)))
        try:
            with Client(cluster) as client:
                for worker in client.scheduler_info()["workers"]:
                    client.submit(_quiet_lightgbm, workers=[worker], allow_other_workers=False, pure=False).result()
                yield client
        finally:
            cluster.close()
            shuffle_log.setLevel(level)
    else:
        try:
            client = Client(str(value), timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise OirlError(f"--dask {value}: cannot reach the scheduler ({one_line(exc)})") from None
        with client:
            yield client


def _quiet_lightgbm() -> None:
    """In a worker's task thread: LightGBM's native log level is per thread and its network
    set-up logs before reading ``verbosity``, so lower the level once with a tiny dataset."""

    configure_openmp()
    import lightgbm

    lightgbm.Dataset(np.zeros((4, 1)), label=np.zeros(4), params={"verbosity": -1}).construct()


def n_workers(client) -> int:
    return len(client.scheduler_info()["workers"])


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"dask: {message}", file=sys.stderr, flush=True)


def _release_memory() -> None:
    """Give freed memory back to the system (Python's, pyarrow's pool, glibc's heap)."""

    import pyarrow

    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
