"""What the service has served since it started: calls per prompt id, the share of the
dearest prompt (or of the one ``oirl calibrate`` capped) and the mean cost per call, to
hold against the calibration's target (``live`` in ``/v1/model``).

Counts are per worker process (with ``--workers N`` each worker counts its own calls) and
survive a hot reload: a calibration is a promise about the traffic, not about one bundle.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any


class ServedCounts:
    """Calls served per prompt id (exploration draws included: what was served, not what
    the policy preferred). ``clock`` gives the start time (seconds since the epoch)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.since = clock()

    def add(self, prompt_ids: Iterable[str]) -> None:
        with self._lock:
            self._counts.update(prompt_ids)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def report(self, costs: dict[str, float], calibration: dict[str, Any] | None) -> dict[str, Any]:
        """The live figures beside the calibration's: ``calls``, per prompt its ``calls`` and
        ``share``, the ``expensive`` prompt's share (the capped one, else the dearest of
        ``costs``, the bundle's) and the ``mean_cost`` of the calls whose cost is known."""
        counts = self.counts()
        total = sum(counts.values())
        share = {p: c / total for p, c in counts.items()} if total else {}
        priced = {p: c for p, c in counts.items() if p in costs}
        expensive = None
        if calibration is not None and calibration.get("prompt_id"):
            expensive = calibration["prompt_id"]
        elif costs:
            expensive = max(costs, key=lambda p: costs[p])
        out: dict[str, Any] = {
            "since": datetime.fromtimestamp(self.since, timezone.utc).isoformat(timespec="seconds"),
            "per": "worker process",
            "calls": total,
            "prompts": {p: {"calls": c, "share": share[p]} for p, c in sorted(counts.items(), key=lambda item: -item[1])},
            "expensive": None if expensive is None else {"prompt_id": expensive, "share": share.get(expensive, 0.0) if total else None,
                                                         "calibrated_limit": _limit(calibration, "max_share")},
            "mean_cost": sum(c * costs[p] for p, c in priced.items()) / sum(priced.values()) if priced else None,
            "calibrated_budget": _limit(calibration, "budget"),
        }
        return out


def _limit(calibration: dict[str, Any] | None, target: str) -> float | None:
    return calibration["limit"] if calibration is not None and calibration["target"] == target else None
