"""The service's bounds beyond the schema's field lengths (all shown in ``/v1/model``)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BODY_BYTES = 1 << 20  # 1 MiB
SMALL_SCORE_PAIRS = 1_024  # up to this many pairs a request is scored on the thread for small ones


@dataclass(frozen=True)
class ServiceLimits:
    """Per request and per process; every field is listed in ``/v1/model`` under ``limits``."""

    scored_pairs: int = 16_384  # (query, prompt) pairs scored per request
    texts_to_embed: int = 1_024  # distinct texts (queries and new prompts) per request
    echoed_prompt_chars: int = 4_000_000  # prompt text one /v1/recommend answer may repeat back
    body_bytes: int = MAX_BODY_BYTES
    concurrent_requests: int = 64  # /v1 requests with the key under way in this process; more get a 503
    queued_texts: int = 4_096  # texts waiting for the embedding model; more get a 503
    embed_batch: int = 48  # texts per model call
    embed_share: int = 4  # texts a request may put into one call while small ones come in: they wait for short calls
    stall_seconds: float = 30.0  # no progress this long: the request gets a 503, /health says unavailable
    query_cache_items: int = 50_000  # vectors kept in memory, by text hash
    retry_after_seconds: int = 2
    # The fast path: when a warm model call measures under `inline_call_ms` at startup (a
    # static embedder; a small reward model), requests of at most `inline_texts` new texts
    # are embedded, and of at most `inline_pairs` pairs scored, on the event loop itself.
    # A thread hop costs more than such a call; a slow model keeps its threads.
    inline_call_ms: float = 2.0
    inline_texts: int = 8
    inline_chars: int = 4_000  # in all, across those texts (the timed call embeds this many)
    inline_pairs: int = 64
