"""The service's bounds in-process, with a gated fast embedder and injected clocks: the queue, the
concurrency limit, stalls, failures, the batcher alone and the fast-path check. No assertion
depends on how fast this machine is: a request that must be refused "at once" is refused while
the model call it would wait for is still blocked."""

import asyncio
import logging
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest

from oirl.data.importers.prompt_oirl import PROMPTS
from oirl.recommender.bundle import load_bundle


@pytest.fixture(scope="module")
def bundle(minilm_bundle):
    return load_bundle(minilm_bundle)


class GatedEmbedder:
    """A fast 384-d embedder whose model calls wait for ``gate`` and fail on "poison"."""

    def __init__(self):
        from oirl.embed.base import HashingEmbedder

        self.inner = HashingEmbedder(384)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []

    def embed(self, texts, batch_size=128):
        self.calls.append(len(texts))
        if any("poison" in t for t in texts):
            raise RuntimeError("poisoned text at /srv/secret/path")
        if not self.gate.wait(60):
            raise TimeoutError("test gate never opened")
        return self.inner.embed(texts, batch_size=batch_size)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_app(app, scenario):
    """Run ``scenario(client)`` against ``app`` in-process, lifespan included."""

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app", timeout=60) as client:
                return await scenario(client)

    return asyncio.run(main())


async def until(condition, what: str):
    """Yield to the event loop until ``condition()`` holds (a synchronisation point, not a time bound:
    the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def make_app(bundle, clock=None, **limits):
    """An app over the gated embedder, on the threaded path (a gated call must not block the event loop)."""
    from oirl.serve.app import ServiceLimits, create_app

    limits.setdefault("inline_call_ms", 0.0)
    embedder = GatedEmbedder()
    return create_app(bundle, api_key="", limits=ServiceLimits(**limits), embedder=embedder, clock=clock), embedder


def batcher_of(app):
    return app.state.slot.current.batcher


def test_requests_at_the_caps_pass_and_one_more_does_not(bundle):
    app, _ = make_app(bundle)

    async def scenario(client):
        queries, prompts = [f"query {i}" for i in range(65)], [f"prompt {i}" for i in range(256)]
        at_cap = await client.post("/v1/recommend", json={"queries": queries[:64], "candidates": prompts, "top_k": 1})
        over = await client.post("/v1/recommend", json={"queries": queries, "candidates": prompts, "top_k": 1})
        pairs = [{"query": f"q{i}", "prompt": f"p{i}"} for i in range(513)]
        texts_at_cap = await client.post("/v1/score", json={"pairs": pairs[:512]})
        texts_over = await client.post("/v1/score", json={"pairs": pairs})
        return at_cap, over, texts_at_cap, texts_over

    at_cap, over, texts_at_cap, texts_over = run_app(app, scenario)
    assert at_cap.status_code == 200 and len(at_cap.json()["results"]) == 64
    assert over.status_code == 422 and "16,640 pairs" in over.text
    assert texts_at_cap.status_code == 200 and len(texts_at_cap.json()["scores"]) == 512
    assert texts_over.status_code == 422 and "1,026 distinct texts" in texts_over.text


def test_full_queue_and_too_many_requests_get_503_at_once(bundle):
    app, embedder = make_app(bundle, queued_texts=8, concurrent_requests=3, retry_after_seconds=7)

    async def scenario(client):
        batcher = batcher_of(app)
        embedder.gate.clear()
        first = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": f"a{i}", "prompt": "p"} for i in range(5)]}))
        await until(lambda: batcher.call_seconds() is not None and not batcher.queued_texts, "the first request's call starts")
        second = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": f"b{i}", "prompt": "p"} for i in range(5)]}))
        await until(lambda: batcher.queued_texts == 6, "the second request's 6 texts queue up")
        health = (await client.get("/health")).json()
        full = await client.post("/v1/score", json={"pairs": [{"query": f"c{i}", "prompt": "p"} for i in range(5)]})
        third = asyncio.create_task(client.post("/v1/recommend", json={"queries": ["d"]}))  # 1 text: fits
        await until(lambda: batcher.queued_requests == 2, "the third request queues up")
        busy = await client.get("/v1/prompts")  # 3 requests under way
        blocked_meanwhile = not embedder.gate.is_set()  # both refusals came while the model call was still blocked
        embedder.gate.set()
        done = await asyncio.gather(first, second, third)
        return health, full, busy, blocked_meanwhile, done

    health, full, busy, blocked_meanwhile, done = run_app(app, scenario)
    assert health["queued_texts"] == 6 and health["queued_requests"] == 1 and health["requests_in_flight"] == 2
    assert full.status_code == 503 and full.headers["retry-after"] == "7" and "queue is full" in full.text
    assert busy.status_code == 503 and busy.headers["retry-after"] == "7" and "3 requests under way" in busy.text
    assert blocked_meanwhile
    assert [r.status_code for r in done] == [200, 200, 200]


def test_a_failing_model_call_fails_only_the_requests_that_cause_it(bundle, caplog):
    app, embedder = make_app(bundle)

    async def scenario(client):
        batcher = batcher_of(app)
        embedder.gate.clear()
        blocker = asyncio.create_task(client.post("/v1/recommend", json={"queries": ["blocker"]}))
        await until(lambda: batcher.call_seconds() is not None, "the blocker's call starts")
        posts = [asyncio.create_task(client.post("/v1/recommend", json={"queries": [q]})) for q in ("fine 1", "poison pill", "fine 2")]
        await until(lambda: batcher.queued_requests == 3, "the next three requests queue up behind it (one model call)")
        embedder.gate.set()
        results = await asyncio.gather(blocker, *posts)
        later = await client.post("/v1/recommend", json={"queries": ["fine 3"]})
        return results, later, (await client.get("/health")).json()

    with caplog.at_level(logging.ERROR, logger="oirl.serve"):
        (blocker, fine1, poisoned, fine2), later, health = run_app(app, scenario)
    assert [blocker.status_code, fine1.status_code, fine2.status_code, later.status_code] == [200, 200, 200, 200]
    body = poisoned.json()
    assert poisoned.status_code == 500 and body["detail"] == "embedding failed" and len(body["request_id"]) == 16
    assert "poison" not in poisoned.text and "/srv" not in poisoned.text  # the cause is in the server log, under the id
    assert any(body["request_id"] in r.getMessage() and "poisoned text" in r.getMessage() for r in caplog.records)
    assert embedder.calls[:3] == [1, 1, 3]  # warm-up, blocker, then the three together (then each alone)
    assert health["status"] == "ok" and health["queued_texts"] == 0


def test_stuck_or_dead_embedding_worker_gives_503_and_honest_health(bundle):
    clock = FakeClock()
    app, embedder = make_app(bundle, clock=clock, stall_seconds=30, retry_after_seconds=3)

    async def scenario(client):
        batcher = batcher_of(app)
        out = {}
        embedder.gate.clear()
        stuck = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": "stuck query", "prompt": "p"}]}))
        await until(lambda: batcher.call_seconds() is not None, "the stuck call starts")
        waiting = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": "waiting query", "prompt": "p"}]}))
        await until(lambda: batcher.queued_requests == 1, "a second request queues behind it")
        assert batcher.expire_stalled() == 0  # no time has passed
        clock.now += 31  # half a minute without progress
        assert batcher.expire_stalled() == 2  # what the watchdog does every second
        out["stuck"], out["waiting"] = await asyncio.gather(stuck, waiting)
        out["health_stuck"] = await client.get("/health")
        out["refused"] = await client.post("/v1/recommend", json={"queries": ["x"]})
        embedder.gate.set()  # the call finishes; the abandoned texts only feed the cache
        await until(lambda: batcher.call_seconds() is None, "the stuck call returns")
        out["health_ok"] = await client.get("/health")
        out["again"] = await client.post("/v1/score", json={"pairs": [{"query": "stuck query", "prompt": "p"}, {"query": "new query", "prompt": "p"}]})
        batcher._task.cancel()
        await until(lambda: batcher._task.done(), "the worker stops")
        out["health_dead"] = await client.get("/health")
        out["dead"] = await client.post("/v1/recommend", json={"queries": ["y"]})
        return out

    out = run_app(app, scenario)
    for name in ("stuck", "waiting"):
        assert out[name].status_code == 503 and out[name].headers["retry-after"] == "3" and "no embedding progress" in out[name].text
    health = out["health_stuck"]
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert health.json()["reason"] == "an embedding call has run for 31 s (limit 30 s)"
    assert out["refused"].status_code == 503 and "embedding call has run" in out["refused"].text
    assert out["health_ok"].status_code == 200 and out["health_ok"].json()["queued_texts"] == 0
    assert out["again"].status_code == 200
    expected = bundle.score_pairs(embedder.inner.embed(["stuck query", "new query"]), embedder.inner.embed(["p", "p"]))
    assert out["again"].json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)  # the right vectors for the right texts
    assert out["health_dead"].status_code == 503 and out["health_dead"].json()["reason"] == "the embedding worker stopped"
    assert out["dead"].status_code == 503


def test_a_decision_store_that_cannot_write_answers_503_with_retry_after(bundle, tmp_path, caplog):
    from oirl.decisions.store import DecisionStore
    from oirl.serve.app import ServiceLimits, create_app

    store = DecisionStore(tmp_path / "decisions.sqlite", busy_timeout=0.05)
    app = create_app(bundle, api_key="", embedder=GatedEmbedder(), decisions=store, limits=ServiceLimits(retry_after_seconds=5))

    async def scenario(client):
        ok = await client.post("/v1/recommend", json={"queries": ["before the lock"]})
        holder = sqlite3.connect(store.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the store's busy timeout
        try:
            locked = await client.post("/v1/recommend", json={"queries": ["while it is locked"]})
            feedback = await client.post("/v1/feedback", json={"decision_id": ok.json()["results"][0]["decision_id"], "reward": 1})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.close()
        closed = await client.post("/v1/recommend", json={"queries": ["after it closed"]})
        return ok, locked, feedback, closed

    with caplog.at_level(logging.ERROR, logger="oirl.serve"):
        ok, *refused = run_app(app, scenario)
    assert ok.status_code == 200
    for response in refused:
        body = response.json()
        assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
        assert body["detail"] == "the decision store is unavailable; try again later" and str(tmp_path) not in response.text
        assert any(body["request_id"] in r.getMessage() for r in caplog.records)


def test_an_unexpected_failure_is_a_500_with_a_request_id_and_no_internals(bundle, caplog):
    from oirl.serve.app import create_app
    from oirl.serve.scoring import ServedModel

    class Broken(ServedModel):
        def score_pairs(self, *args):
            raise ZeroDivisionError("internal detail at /srv/secret")

    app = create_app(Broken(bundle, embedder=GatedEmbedder()), api_key="")

    async def scenario(client):
        return await client.post("/v1/score", json={"pairs": [{"query": "q", "prompt": "p"}]}), await client.get("/health")

    with caplog.at_level(logging.ERROR, logger="oirl.serve"):
        failed, health = run_app(app, scenario)
    body = failed.json()
    assert failed.status_code == 500 and set(body) == {"detail", "request_id"} and body["detail"] == "internal error"
    assert "secret" not in failed.text and "ZeroDivision" not in failed.text
    [record] = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert record.exc_info[0] is ZeroDivisionError  # the traceback is in the server log
    assert health.status_code == 200


def test_a_reward_model_giving_nan_is_a_terse_500_naming_it(gsm8k_slice, tmp_path, caplog):
    """A broken model is the server's fault: 500 naming the model, one log line, no traceback (not a 422)."""
    from oirl.data.logs import training_rows
    from oirl.learn.train import train_recommender
    from oirl.recommender.bundle import save_bundle
    from oirl.serve.app import ServiceLimits, create_app

    train = training_rows(gsm8k_slice, "split", "train", source="slice")
    rows = train[train["query_id"].isin(train["query_id"].drop_duplicates().head(60))]
    rec = load_bundle(save_bundle(train_recommender(rows, model="logistic", embedder="hashing:64", cache_dir=tmp_path / "emb"), tmp_path / "b"))
    rec.model.weights_["coef"][0] = np.nan  # e.g. weights that diverged: every score is NaN
    app = create_app(rec, api_key="", limits=ServiceLimits(inline_call_ms=0.0))  # no fast-path timing: it would score at startup

    async def scenario(client):
        return (await client.post("/v1/recommend", json={"queries": ["What is 2 + 2?"]}),
                await client.post("/v1/score", json={"pairs": [{"query": "What is 2 + 2?", "prompt": "Think step by step."}]}))

    with caplog.at_level(logging.INFO, logger="oirl.serve"):
        answers = run_app(app, scenario)
    for answer in answers:
        body = answer.json()
        assert answer.status_code == 500, answer.text
        assert set(body) == {"detail", "request_id"} and body["detail"] == "the logistic model produced a non-finite score"
        [record] = [r for r in caplog.records if body["request_id"] in r.getMessage()]
        assert record.levelno == logging.ERROR and record.exc_info is None and "\n" not in record.getMessage()
        assert "logistic model" in record.getMessage() and "non-finite score (nan)" in record.getMessage()


def test_the_model_description_names_no_server_path(minilm_bundle):
    import copy

    from oirl.serve.scoring import ServedModel

    rec = copy.copy(load_bundle(minilm_bundle))  # a twin as if trained from server paths, with a static embedder in a folder
    object.__setattr__(rec, "metadata", {**rec.metadata, "training": {**rec.metadata["training"],
                                                                      "source": "/srv/data/logs/mawps.parquet + logs/svamp.parquet"}})
    object.__setattr__(rec, "embedder_spec", f"static:{minilm_bundle}/embedder")
    described = ServedModel(rec, embedder=GatedEmbedder()).describe()
    assert described["training"]["source"] == "mawps.parquet + svamp.parquet"
    assert described["embedder"] == "static:embedder" and str(minilm_bundle) not in str(described)


# --------------------------------------------------------------------------- the batcher alone


def fake_model(seconds_per_text=0.0, calls=None):
    def embed(texts):
        if calls is not None:
            calls.append(list(texts))
        time.sleep(seconds_per_text * len(texts))
        return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts], dtype=np.float32)

    return embed


def test_batcher_shares_calls_caches_and_keeps_order():
    from oirl.serve.runtime import EmbeddingBatcher

    calls = []
    batcher = EmbeddingBatcher(fake_model(calls=calls), max_batch=4)

    async def scenario():
        await batcher.start()
        first, second = await asyncio.gather(batcher.embed(["a", "bb", "a", "ccc"]), batcher.embed(["bb", "dddd", "e", "ff", "g"]))
        cached = await batcher.embed(["ccc", "a"])
        await batcher.stop()
        return first, second, cached

    first, second, cached = asyncio.run(scenario())
    assert first[:, 0].tolist() == [1, 2, 1, 3] and second[:, 0].tolist() == [2, 4, 1, 2, 1] and cached[:, 0].tolist() == [3, 1]
    assert all(len(c) <= 4 for c in calls) and sorted(t for c in calls for t in c) == ["a", "bb", "ccc", "dddd", "e", "ff", "g"]
    assert batcher.texts_embedded == 7  # each distinct text once; the last request hit the cache


def test_the_vector_cache_keeps_the_most_recently_used():
    from oirl.serve.runtime import EmbeddingBatcher

    calls = []
    batcher = EmbeddingBatcher(fake_model(calls=calls), max_batch=8, cache_items=2)

    async def scenario():
        await batcher.start()
        await batcher.embed(["a", "b"])
        await batcher.embed(["a"])  # a is now the most recently used
        await batcher.embed(["c"])  # evicts b, not a
        await batcher.embed(["a", "b"])
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [["a", "b"], ["c"], ["b"]]


def test_batcher_serves_small_requests_alongside_a_large_one():
    from oirl.serve.runtime import EmbeddingBatcher

    calls = []
    batcher = EmbeddingBatcher(fake_model(seconds_per_text=0.002, calls=calls), max_batch=16, max_share=4)

    async def scenario():
        await batcher.start()
        big = asyncio.create_task(batcher.embed([f"big {i}" for i in range(1_000)]))
        await until(lambda: calls, "the large request's first call")
        calls_before = len(calls)  # started ones; the last may still run
        await batcher.embed(["small"])
        big_done = big.done()
        await big
        await batcher.stop()
        return calls_before, big_done

    calls_before, big_done = asyncio.run(scenario())
    [position] = [i for i, call in enumerate(calls) if "small" in call]
    # the small request waits at most for the call under way and the one after it, which take
    # at most 4 texts of the large request (1,000 texts would be 63 calls of 16)
    assert position <= calls_before + 1 and len(calls[position]) <= 5 and max(map(len, calls[position - 1:position])) <= 16
    assert not big_done


def test_batcher_embeds_a_few_new_texts_on_the_event_loop_when_told():
    from oirl.serve.runtime import EmbeddingBatcher

    threads = []

    def model(texts):
        threads.append(threading.current_thread().name)
        return fake_model()(texts)

    batcher = EmbeddingBatcher(model, max_batch=4)
    batcher.inline_texts, batcher.inline_chars = 2, 10

    async def scenario():
        await batcher.start()
        few = await batcher.embed(["a", "bb", "a"])  # 2 new texts, 3 characters: inline
        more = await batcher.embed(["ccc", "dddd", "eeeee"])  # 3 texts: the embedding thread
        long = await batcher.embed(["x" * 6, "y" * 6])  # 2 texts but 12 characters: the embedding thread
        cached = await batcher.embed(["bb", "ccc"])
        await batcher.stop()
        return few, more, long, cached

    few, more, long, cached = asyncio.run(scenario())
    assert few[:, 0].tolist() == [1, 2, 1] and more[:, 0].tolist() == [3, 4, 5] and long[:, 0].tolist() == [6, 6]
    assert cached[:, 0].tolist() == [2, 3]
    assert threads[0] == threading.main_thread().name and all(t.startswith("oirl-embed") for t in threads[1:])
    assert len(threads) == 3 and batcher.texts_embedded == 7


class TimedEmbedder(GatedEmbedder):
    """Each model call takes ``call_ms`` on the test's timer (and no wall-clock time)."""

    def __init__(self, timer: FakeClock, call_ms: float):
        super().__init__()
        self.timer, self.call_ms = timer, call_ms

    def embed(self, texts, batch_size=128):
        self.timer.now += self.call_ms / 1000
        return super().embed(texts, batch_size=batch_size)


@pytest.mark.parametrize("call_ms, inline", [(0.5, True), (5.0, False)])
def test_the_fast_path_is_measured_at_startup_and_answers_the_same(bundle, call_ms, inline):
    from oirl.serve.app import ServiceLimits, create_app

    request = {"queries": ["fast query", "another query"], "candidates": ["new prompt", PROMPTS["CoT"]], "top_k": 2}

    async def scenario(client):
        return (await client.get("/v1/model")).json()["fast_path"], (await client.post("/v1/recommend", json=request)).json()

    timer = FakeClock()  # scoring takes no time on it: only the embedder's calls count
    fast_path, answer = run_app(create_app(bundle, api_key="", embedder=TimedEmbedder(timer, call_ms), timer=timer,
                                           limits=ServiceLimits(inline_call_ms=2.0)), scenario)
    _, threaded = run_app(create_app(bundle, api_key="", embedder=GatedEmbedder(), limits=ServiceLimits(inline_call_ms=0.0)), scenario)
    assert fast_path == {"embed_inline": inline, "score_inline": True}
    assert answer["results"] == threaded["results"]
