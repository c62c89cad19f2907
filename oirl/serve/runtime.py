"""The service's bounded runtime: the embedding batcher and the ASGI limits.

:class:`EmbeddingBatcher` embeds the texts of concurrent requests together on one
thread, with an LRU of vectors, a bounded queue and a stall timeout;
:class:`BodySizeLimit` answers 413 for large bodies and :class:`ConcurrencyLimit` 503
for requests beyond a number under way. :mod:`oirl.serve.app` wires them into the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 1 << 20  # 1 MiB
SMALL_WINDOW_SECONDS = 1.0  # small requests "come in" if one came in this recently


class Overloaded(Exception):
    """The service cannot take this request now (503 with Retry-After)."""


class EmbeddingFailed(Exception):
    """The embedding model raised on the texts of this request (500)."""



# --------------------------------------------------------------------------- embedding


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class _Job:
    """One request's texts that the cache does not hold."""

    __slots__ = ("items", "handed", "vectors", "future", "progress_at")

    def __init__(self, items: list[tuple[bytes, str]], future: asyncio.Future):
        self.items = items  # (key, text), distinct
        self.handed = 0  # items[:handed] went to a model call
        self.vectors: dict[bytes, np.ndarray] = {}
        self.future = future
        self.progress_at = time.monotonic()

    @property
    def waiting(self) -> int:
        return len(self.items) - self.handed


class EmbeddingBatcher:
    """Embeds the texts of concurrent requests together on one thread, within bounds.

    ``embed(texts) -> (n, d)`` is the model. Vectors are cached by text hash (an LRU of
    ``cache_items``). A request's uncached texts join the queue unless ``max_queued``
    texts already wait (then :class:`Overloaded`); each model call takes at most
    ``max_batch`` distinct texts, one per waiting request in turn, oldest first. While
    small requests (of at most ``max_share`` texts) keep coming, one in the last second,
    a call takes at most ``max_share`` texts from any one request: calls for large
    requests stay short, and a small request arriving meanwhile soon has its turn. A
    request whose texts see no progress for ``stall_seconds`` gets :class:`Overloaded`
    and its remaining texts leave the queue. A failed model call is retried once per
    request, so only the requests whose own texts fail get :class:`EmbeddingFailed`.
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray], *, max_batch: int = 48, max_share: int = 4,
                 max_queued: int = 4096, stall_seconds: float = 30.0, cache_items: int = 50_000):
        self._embed = embed
        # A request with at most this many new texts, arriving while the queue is empty and
        # no call runs, is embedded on the event loop itself. The app turns it on when a
        # model call measures under a millisecond or two (a static embedder): then the two
        # thread hops, not the model, are the request's cost.
        self.inline_texts = 0
        self.inline_chars = 0  # and at most this many characters in all: the timed call bounds the untimed ones
        self.max_batch = max_batch
        self.max_share = max_share
        self.max_queued = max_queued
        self.stall_seconds = stall_seconds
        self.cache_items = cache_items
        self.texts_embedded = 0
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._pending: deque[_Job] = deque()
        self._queued = 0  # sum of `waiting` over the pending jobs
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._call_started: float | None = None
        self._small_at = -np.inf  # when a request of at most max_share texts last came in
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oirl-embed")

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="oirl-embedding-batcher")
        self._task.add_done_callback(lambda _: self._fail_all(Overloaded(self.problem() or "the embedding worker stopped")))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued_texts(self) -> int:
        return self._queued

    @property
    def queued_requests(self) -> int:
        return len(self._pending)

    def call_seconds(self) -> float | None:
        """How long the current model call has run (None: no call runs)."""
        started = self._call_started
        return None if started is None else time.monotonic() - started

    def problem(self) -> str | None:
        """Why the batcher cannot embed now (None: it can)."""
        if self._task is None:
            return "the embedding worker has not started"
        if self._task.done():
            error = None if self._task.cancelled() else self._task.exception()
            return f"the embedding worker stopped ({type(error).__name__}: {error})" if error else "the embedding worker stopped"
        seconds = self.call_seconds()
        if seconds is not None and seconds > self.stall_seconds:
            return f"an embedding call has run for {seconds:.0f} s (limit {self.stall_seconds:g} s)"
        return None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` in order, shape (len(texts), d); raises Overloaded or EmbeddingFailed."""
        keys = [_text_key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        missing: dict[bytes, str] = {}
        for text, key in zip(texts, keys, strict=True):
            vector = self._cache.get(key)
            if vector is not None:
                self._cache.move_to_end(key)
                found[key] = vector
            else:
                missing.setdefault(key, text)
        if missing and len(missing) <= self.inline_texts and sum(map(len, missing.values())) <= self.inline_chars \
                and not self._pending and self._call_started is None and self.problem() is None:
            if len(missing) <= self.max_share:  # small requests keep coming: large ones still get short calls
                self._small_at = time.monotonic()
            found.update(self._embed_inline(missing))
        elif missing:
            problem = self.problem()
            if problem:  # cached texts are still served
                raise Overloaded(problem)
            if self._queued and self._queued + len(missing) > self.max_queued:
                raise Overloaded(f"the embedding queue is full ({self._queued:,} texts wait, at most {self.max_queued:,})")
            job = _Job(list(missing.items()), asyncio.get_running_loop().create_future())
            if len(missing) <= self.max_share:
                self._small_at = job.progress_at
            self._pending.append(job)
            self._queued += len(missing)
            self._wakeup.set()
            try:
                await self._wait(job)
            finally:
                self._forget(job)
            found.update(job.vectors)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    def _embed_inline(self, missing: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        try:
            vectors = np.asarray(self._embed(list(missing.values())), dtype=np.float32)
        except Exception as error:  # noqa: BLE001 - as in a batched call: this request fails, the service goes on
            raise EmbeddingFailed(f"{type(error).__name__}: {error}") from None
        if vectors.ndim != 2 or len(vectors) != len(missing):
            raise EmbeddingFailed(f"the embedder returned shape {vectors.shape} for {len(missing)} texts")
        self.texts_embedded += len(missing)
        by_key = dict(zip(missing, vectors, strict=True))
        self._deliver({}, by_key)
        return by_key

    async def _wait(self, job: _Job) -> None:
        while True:
            remaining = job.progress_at + self.stall_seconds - time.monotonic()
            done, _ = await asyncio.wait({job.future}, timeout=max(remaining, 0.0))
            if done:
                return job.future.result()
            if time.monotonic() - job.progress_at >= self.stall_seconds:
                raise Overloaded(f"no embedding progress for {self.stall_seconds:g} s")

    def _forget(self, job: _Job) -> None:
        """Take a job out of the queue (finished, failed or abandoned); its texts in a running call only feed the cache."""
        if not job.future.done():
            job.future.cancel()
        if job.waiting:
            self._queued -= job.waiting
            job.handed = len(job.items)
        with contextlib.suppress(ValueError):
            self._pending.remove(job)

    def _fail(self, job: _Job, error: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(error)
        self._forget(job)

    def _fail_all(self, error: BaseException) -> None:
        for job in list(self._pending):
            self._fail(job, error)

    def _next_batch(self) -> dict[_Job, list[tuple[bytes, str]]]:
        """Up to ``max_batch`` distinct texts, one per waiting job in turn, oldest first
        (at most ``max_share`` per job while small jobs come in)."""
        parts: dict[_Job, list[tuple[bytes, str]]] = {}
        distinct: set[bytes] = set()
        share = self.max_share if time.monotonic() - self._small_at < SMALL_WINDOW_SECONDS else self.max_batch
        handed = True
        while handed and len(distinct) < self.max_batch:
            handed = False
            for job in list(self._pending):
                if len(distinct) >= self.max_batch:
                    break
                if len(parts.get(job, ())) >= share:
                    continue
                handed = True
                item = job.items[job.handed]
                job.handed += 1
                self._queued -= 1
                parts.setdefault(job, []).append(item)
                distinct.add(item[0])
                if not job.waiting:
                    self._pending.remove(job)
        return parts

    async def _call(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        self._call_started = time.monotonic()
        try:
            vectors = await loop.run_in_executor(self._executor, self._embed, texts)
        finally:
            self._call_started = None
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise EmbeddingFailed(f"the embedder returned shape {vectors.shape} for {len(texts)} texts")
        self.texts_embedded += len(texts)
        return vectors

    def _deliver(self, parts: dict[_Job, list[tuple[bytes, str]]], vectors: dict[bytes, np.ndarray]) -> None:
        for key, vector in vectors.items():
            self._cache[key] = vector.copy()  # a row of its own: no cached row keeps a whole batch alive
            self._cache.move_to_end(key)
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        now = time.monotonic()
        for job, items in parts.items():
            if job.future.done():  # timed out, failed or abandoned meanwhile
                continue
            for key, _ in items:
                job.vectors[key] = vectors[key]
            job.progress_at = now
            if len(job.vectors) == len(job.items):
                job.future.set_result(None)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            parts = self._next_batch()
            texts = dict(item for items in parts.values() for item in items)
            try:
                vectors = await self._call(list(texts.values()))
            except Exception as error:  # noqa: BLE001 - any model failure: isolate it to the requests that cause it
                await self._isolate(parts, error)
                continue
            self._deliver(parts, dict(zip(texts, vectors, strict=True)))

    async def _isolate(self, parts: dict[_Job, list[tuple[bytes, str]]], error: Exception) -> None:
        live = [job for job in parts if not job.future.done()]
        if len(live) <= 1:
            for job in live:
                self._fail(job, EmbeddingFailed(f"{type(error).__name__}: {error}"))
            return
        for job in live:
            items = dict(parts[job])
            try:
                vectors = await self._call(list(items.values()))
            except Exception as own:  # noqa: BLE001
                self._fail(job, EmbeddingFailed(f"{type(own).__name__}: {own}"))
                continue
            self._deliver({job: parts[job]}, dict(zip(items, vectors, strict=True)))


def _length_sorted(embedder) -> Callable[[list[str]], np.ndarray]:
    """The model call: texts sorted by length and embedded 16 at a time, so one long
    text does not pad a whole batch to its length."""

    def embed(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = embedder.embed([texts[i] for i in order], batch_size=16)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    return embed


# --------------------------------------------------------------------------- ASGI middleware


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        received = 0
        rejected = False

        async def limited_receive():
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not rejected:
                        rejected = True
                        await self._reject(send)
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded_send(message):
            if not rejected:  # the 413 is already out: drop whatever the app answers
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _Gate:
    """Counts the /v1 requests under way."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0


class ConcurrencyLimit:
    """ASGI middleware: a 503 with Retry-After, before the body is read, for a /v1 request
    beyond ``gate.limit`` under way."""

    def __init__(self, app, gate: _Gate, retry_after: int):
        self.app = app
        self.gate = gate
        self.retry_after = retry_after

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self.gate.in_flight >= self.gate.limit:
            response = _unavailable(f"{self.gate.limit} requests under way; try again shortly", self.retry_after)
            return await response(scope, receive, send)
        self.gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.in_flight -= 1


def _unavailable(detail: str, retry_after: int) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after)})
