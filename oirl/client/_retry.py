"""When to retry a call, and how long to wait first."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable

import httpx

REFUSED = frozenset({429, 503})  # nothing was done: safe to retry any call
GATEWAY = frozenset({502, 504})  # a proxy may have forwarded the request: safe for idempotent calls only
# The request never left this machine: safe to retry any call.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A mistake on this side (bad URL scheme, bad header): retrying cannot help.
LOCAL = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def backoff_seconds(retry: int, *, base: float, cap: float, jitter: float) -> float:
    """The wait before retry number ``retry`` (1, 2, …) when the server named none:
    ``base * 2**(retry - 1)``, at most ``cap``, scaled by ``0.5 + jitter / 2`` (``jitter`` in
    [0, 1)), so it lies in [half, all] of the exponential step ("equal jitter")."""
    step = min(cap, base * 2.0 ** (retry - 1))
    return step * (0.5 + jitter / 2)



def retry_after(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError):
            return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None

