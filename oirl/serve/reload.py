"""Hot reload: swap in the bundle at the served directory while requests keep coming.

The service holds what it answers with in one reference (:class:`ModelSlot`); a request
takes it once, at its start, and keeps it to the end, so requests in flight finish on
the old bundle and later ones use the new one. A reload (``SIGHUP`` or ``POST
/v1/admin/reload``) loads and checks the new bundle beside the old one and swaps only a
sound one; a missing or corrupt bundle is refused in one log line and the old one keeps
serving. Two bundles with the same embedder share the live embedder, its batcher and
its vectors; otherwise the old batcher stops once no request on any bundle sharing it is
under way (after A -> B -> C a request still on A keeps A's and B's batcher running).

With several uvicorn workers the supervisor owns ``SIGHUP`` (a worker ignores its own): it
replaces the workers one by one, each new one loading the bundle at the directory. ``POST /v1/admin/reload`` then
checks the new bundle in the worker that took the request and asks the supervisor to do
the same (``restart_workers``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from oirl.errors import OirlError, one_line
from oirl.serve.limits import ServiceLimits
from oirl.serve.runtime import EmbeddingBatcher, length_sorted
from oirl.serve.scoring import ServedModel

log = logging.getLogger("oirl.serve")


@dataclass(eq=False)
class Serving:
    """A loaded bundle with the batcher that embeds for it, and how many requests use it now."""

    model: ServedModel
    batcher: EmbeddingBatcher
    fast_path: dict[str, bool] = field(default_factory=lambda: {"embed_inline": False, "score_inline": False})
    users: int = 0
    retired: bool = False


class ModelSlot:
    """The one reference to what the service answers with."""

    def __init__(self, serving: Serving):
        self.current = serving
        self._draining: set[Serving] = set()  # retired bundles that requests still use

    @asynccontextmanager
    async def use(self) -> AsyncIterator[Serving]:
        """The current bundle, held for one request (a swap meanwhile does not change it)."""
        serving = self.current
        serving.users += 1
        try:
            yield serving
        finally:
            serving.users -= 1
            if serving.retired and serving.users == 0:
                self._draining.discard(serving)
                await self._close(serving)

    async def swap(self, serving: Serving) -> Serving:
        """Make ``serving`` current; the previous one closes once no request uses it."""
        previous, self.current = self.current, serving
        previous.retired = True
        if previous.users:
            self._draining.add(previous)
        else:
            await self._close(previous)
        return previous

    async def _close(self, serving: Serving) -> None:
        """Stop ``serving``'s batcher unless a bundle still in use shares it. The users are
        counted per bundle but a batcher serves every bundle with its embedder: after A -> B
        -> C (C on another embedder), B retiring unused must not stop the batcher that a
        request still running on A waits on."""
        if serving.batcher is self.current.batcher or any(other.batcher is serving.batcher for other in self._draining):
            return
        await serving.batcher.stop()


async def load_serving(directory: str | os.PathLike[str] | None, *, limits: ServiceLimits, embedder=None,
                       model: ServedModel | None = None, sharing: Serving | None = None,
                       timer: Callable[[], float] | None = None, clock: Callable[[], float] | None = None) -> Serving:
    """A ready :class:`Serving`: ``model``, or the bundle loaded from ``directory`` (on a thread);
    with ``sharing``'s embedder and batcher when they embed alike, else a warmed-up new one."""
    if model is None:
        model = await asyncio.to_thread(ServedModel.load, directory, embedder=embedder)
    if sharing is not None and sharing.model.embedder_key == model.embedder_key:
        model.share_embedder(sharing.model)
        batcher = sharing.batcher
    else:
        await asyncio.to_thread(model.embedder.embed, ["warm up the embedding model"])  # load the weights before a request
        batcher = EmbeddingBatcher(length_sorted(model.embedder), max_batch=limits.embed_batch, max_share=limits.embed_share,
                                   max_queued=limits.queued_texts, stall_seconds=limits.stall_seconds,
                                   cache_items=limits.query_cache_items, **({"clock": clock} if clock else {}))
    fast_path = await asyncio.to_thread(
        model.measure_fast_path, length_sorted(model.embedder), inline_call_ms=limits.inline_call_ms, inline_texts=limits.inline_texts,
        inline_chars=limits.inline_chars, inline_pairs=limits.inline_pairs, **({"timer": timer} if timer else {}))
    batcher.inline_texts = limits.inline_texts if fast_path["embed_inline"] else 0
    batcher.inline_chars = limits.inline_chars
    if batcher is not (sharing.batcher if sharing is not None else None):
        await batcher.start()
    return Serving(model, batcher, fast_path)


@dataclass(frozen=True)
class ReloadOutcome:
    status: str  # "reloaded", "unchanged", "restarting", or "refused"
    model_version: str
    previous_version: str
    problem: str | None = None  # why it was refused, without paths


class Reloader:
    """Loads the bundle at ``directory`` and swaps it into ``slot`` (one reload at a time)."""

    def __init__(self, slot: ModelSlot, directory: str | os.PathLike[str] | None, *, limits: ServiceLimits, embedder=None,
                 restart_workers: Callable[[], None] | None = None, timer: Callable[[], float] | None = None,
                 clock: Callable[[], float] | None = None):
        self.slot = slot
        self.directory = Path(directory) if directory is not None else None
        self.limits = limits
        self.embedder = embedder
        self.restart_workers = restart_workers
        self.timer, self.clock = timer, clock
        self.on_swap: list[Callable[[], None]] = []  # e.g. forget the cached OpenAPI schema
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Swap in the bundle at the directory if it is sound and new; log one line either way.
        Raises only on a bug (an exception that is not :class:`OirlError`)."""
        async with self._lock:
            previous = self.slot.current.model.version
            if self.directory is None:
                return self._refused(trigger, previous, "this server was not started from a bundle directory")
            try:
                model = await asyncio.to_thread(ServedModel.load, self.directory, embedder=self.embedder)
            except OirlError as exc:
                return self._refused(trigger, previous, _without_directory(one_line(exc), self.directory))
            if self.restart_workers is not None:
                log.info("reload (%s): bundle %s is sound; replacing the workers one by one", trigger, model.version)
                self.restart_workers()
                return ReloadOutcome("restarting", model.version, previous)
            if model.version == previous:
                log.info("reload (%s): bundle %s is the one served; nothing to do", trigger, previous)
                return ReloadOutcome("unchanged", previous, previous)
            serving = await load_serving(None, limits=self.limits, model=model, sharing=self.slot.current,
                                         timer=self.timer, clock=self.clock)
            await self.slot.swap(serving)
            for callback in self.on_swap:
                callback()
            log.info("reload (%s): now serving bundle %s (was %s)", trigger, model.version, previous)
            return ReloadOutcome("reloaded", model.version, previous)

    @staticmethod
    def _refused(trigger: str, previous: str, problem: str) -> ReloadOutcome:
        log.warning("reload (%s) refused: %s; still serving bundle %s", trigger, problem, previous)
        return ReloadOutcome("refused", previous, previous, problem)


def _without_directory(message: str, directory: Path) -> str:
    """A bundle error without the server's paths: files named relative to the bundle directory."""
    for spelling in {str(directory), str(directory.resolve())}:
        message = message.replace(spelling + os.sep, "").replace(spelling, "the bundle directory")
    return message
