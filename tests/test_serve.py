"""The HTTP service: a real uvicorn process on a loopback port with the real MiniLM model, and the
bounds (queue, concurrency, stalls, failures) in-process with a gated fast embedder."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import ANY

import httpx
import numpy as np
import pytest

from oirl.data.importers.prompt_oirl import PROMPTS
from oirl.recommender.bundle import load_bundle

QUERY = "A shop sells 3 pens for $2. How much do 12 pens cost?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, api_key=None, extra_args=(), port=None):
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OIRL_API_KEY", None)
    if api_key:
        env["OIRL_API_KEY"] = api_key
    process = subprocess.Popen(
        [sys.executable, "-m", "oirl.cli", "serve", str(model_dir), "--port", str(port), *map(str, extra_args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start in 90 s")


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(minilm_bundle):
    process, base = start_server(minilm_bundle)
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client
    stop(process)


@pytest.fixture(scope="module")
def secured(minilm_bundle):
    process, base = start_server(minilm_bundle, api_key="s3cret-key")
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client
    stop(process)


def test_health_prompts_model_and_openapi(server):
    health = server.get("/health").json()
    assert health["status"] == "ok" and len(health["model_version"]) == 16
    prompts = server.get("/v1/prompts").json()
    assert [p["prompt_id"] for p in prompts["prompts"]] == ["nan", "CoT", "APE", "Dis", "ToT", "Decomp"]
    assert prompts["default_prompt_id"] in {p["prompt_id"] for p in prompts["prompts"]}
    model = server.get("/v1/model").json()
    assert model["model"]["kind"] == "lightgbm" and model["model_version"] == health["model_version"]
    assert model["training"]["query_instances"] == 300 and "cross_validation" in model["metrics"]
    schema = server.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/score", "/v1/prompts", "/v1/model", "/health"} <= set(schema["paths"])
    assert "securitySchemes" not in schema.get("components", {})  # no key set: nothing to declare
    assert server.get("/docs").status_code == 200


def test_recommend_with_bundle_and_new_candidates(server):
    body = server.post("/v1/recommend", json={"queries": [QUERY, "What is 7 times 8?"], "top_k": 2, "policy": "argmax"}).json()
    assert body["object"] == "prompt.recommendation" and len(body["model_version"]) == 16
    assert [r["index"] for r in body["results"]] == [0, 1]
    for result in body["results"]:
        assert len(result["ranking"]) == 2 and result["ranking"][0]["score"] >= result["ranking"][1]["score"]
        assert result["prompt_id"] == result["ranking"][0]["prompt_id"]  # argmax: pick = top of ranking

    candidates = list(PROMPTS.values())  # 6 bundle prompts + 10 never trained on
    body = server.post("/v1/recommend", json={"queries": [QUERY], "candidates": candidates, "top_k": 16, "policy": "fallback"}).json()
    ranking = body["results"][0]["ranking"]
    assert len(ranking) == 16 and {"nan", "CoT"} <= {r["prompt_id"] for r in ranking}
    assert sum(r["prompt_id"].startswith("p-") for r in ranking) == 10  # new prompts get derived ids

    body = server.post("/v1/recommend", json={"queries": [QUERY], "candidate_ids": ["CoT", "nan"], "policy": "conservative"}).json()
    assert {r["prompt_id"] for r in body["results"][0]["ranking"]} == {"CoT", "nan"}


def test_score_matches_recommend(server):
    pairs = [{"query": QUERY, "prompt": PROMPTS["CoT"]}, {"query": QUERY, "prompt": "A prompt never seen before: "}]
    scores = server.post("/v1/score", json={"pairs": pairs}).json()["scores"]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    ranking = server.post("/v1/recommend", json={"queries": [QUERY], "top_k": 6}).json()["results"][0]["ranking"]
    assert scores[0] == pytest.approx(next(r["score"] for r in ranking if r["prompt_id"] == "CoT"), abs=1e-6)


@pytest.mark.parametrize(
    "path, payload, status, needle",
    [
        ("/v1/recommend", {"queries": ["  "]}, 422, "string_pattern_mismatch"),
        ("/v1/recommend", {"queries": ["\x1c\u3000\ufeff"]}, 422, "string_pattern_mismatch"),  # white space to any regex engine
        ("/v1/recommend", {"queries": []}, 422, "at least 1 item"),
        ("/v1/recommend", {"queries": ["q"] * 257}, 422, "at most 256 items"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["p"] * 257}, 422, "at most 256 items"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["ok", ""]}, 422, "string_too_short"),
        ("/v1/recommend", {"queries": ["q"], "policy": "greedy"}, 422, "policy"),
        ("/v1/recommend", {"queries": ["q"], "top_k": 0}, 422, "top_k"),
        ("/v1/recommend", {"queries": ["q"], "top_k": "3"}, 422, "int_type"),  # strict, as the schema says
        ("/v1/recommend", {"queries": ["q"], "cost_weight": -1}, 422, "cost_weight"),
        ("/v1/recommend", {"queries": ["q"], "candidates": [{"prompt": "p", "cost": False}]}, 422, "float_type"),
        ("/v1/recommend", {"queries": ["q"], "candidates": [{"prompt": "p", "price": 1}]}, 422, "extra_forbidden"),
        ("/v1/recommend", {"queries": ["q"], "surprise": 1}, 422, "surprise"),
        ("/v1/recommend", {"queries": ["q"], "candidate_ids": ["CoT", "CoT"]}, 422, "ids must be unique"),
        ("/v1/recommend", {"queries": ["q"], "candidate_ids": ["CoT", "nope", "gone"]}, 404, "nope, gone"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["same", {"prompt": "same"}]}, 409, "given twice"),
        ("/v1/recommend", {"queries": ["q"], "candidate_ids": ["CoT"], "candidates": [PROMPTS["CoT"]]}, 409, "given twice: 'CoT'"),
        ("/v1/recommend", {"queries": ["q"], "candidates": [{"prompt": "other text", "prompt_id": "CoT"}]}, 409, "another text"),
        ("/v1/score", {"pairs": [{"query": "q", "prompt": ""}]}, 422, "string_too_short"),
        ("/v1/score", {"pairs": [{"query": "q"}]}, 422, "prompt"),
        ("/v1/recommend", {"queries": ["x" * 600_000, "y" * 600_000]}, 413, "over 1048576 bytes"),
    ],
)
def test_bad_requests_get_clear_errors(server, path, payload, status, needle):
    response = server.post(path, json=payload)
    assert response.status_code == status, response.text
    assert needle in response.text
    if status == 404:
        assert response.json()["unknown_ids"] == ["nope", "gone"]
    if status == 422:
        assert all({"loc", "msg", "type"} <= set(e) for e in response.json()["detail"])


def test_malformed_json_and_streamed_oversize_bodies(server):
    response = server.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "json" in response.text.lower()

    def chunks():  # no Content-Length: the limit must hold while streaming too
        for _ in range(20):
            yield b" " * 100_000

    response = server.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert server.get("/health").status_code == 200  # the worker survived


def test_concurrent_requests_match_sequential_ones(server):
    queries = [f"Sam has {n} marbles and gives away {n // 3}. How many are left?" for n in range(30, 70)]
    payloads = [{"queries": [q], "top_k": 6, "candidates": list(PROMPTS.values())[:8]} for q in queries]
    sequential = [server.post("/v1/recommend", json=p).json()["results"] for p in payloads]
    with ThreadPoolExecutor(max_workers=16) as pool:
        concurrent = list(pool.map(lambda p: server.post("/v1/recommend", json=p).json()["results"], payloads))
    for a, b in zip(sequential, concurrent, strict=True):
        assert a[0]["prompt_id"] == b[0]["prompt_id"]
        assert [r["prompt_id"] for r in a[0]["ranking"]] == [r["prompt_id"] for r in b[0]["ranking"]]
        assert [r["score"] for r in a[0]["ranking"]] == pytest.approx([r["score"] for r in b[0]["ranking"]], abs=1e-5)


def test_api_key_guards_every_endpoint_but_health(secured):
    assert secured.get("/health").status_code == 200
    key = {"Authorization": "Bearer s3cret-key"}
    # the schema needs the key too; the HTML pages, which cannot send one, are off
    assert secured.get("/openapi.json").status_code == 401
    assert secured.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    schema = secured.get("/openapi.json", headers=key).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {"type": "http", "scheme": "bearer", "description": ANY}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            guarded = path != "/health"
            assert ("security" in operation) == guarded and ("401" in operation["responses"]) == guarded, path
    for page in ("/docs", "/redoc"):
        assert secured.get(page).status_code == 404 and secured.get(page, headers=key).status_code == 404
    for method, path, body in (("GET", "/v1/prompts", None), ("GET", "/v1/model", None), ("POST", "/v1/recommend", {"queries": ["q"]}),
                               ("POST", "/v1/score", {"pairs": [{"query": "q", "prompt": "p"}]})):
        assert secured.request(method, path, json=body).status_code == 401
        assert secured.request(method, path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = secured.request(method, path, json=body, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200, ok.text


def test_serving_a_missing_or_corrupt_bundle_fails_at_start(tmp_path, minilm_bundle):
    import shutil

    result = subprocess.run([sys.executable, "-m", "oirl.cli", "serve", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such model bundle directory" in result.stderr
    shutil.copytree(minilm_bundle, tmp_path / "broken")
    meta = json.loads((tmp_path / "broken" / "bundle.json").read_text())
    del meta["prompts"]
    (tmp_path / "broken" / "bundle.json").write_text(json.dumps(meta))
    result = subprocess.run([sys.executable, "-m", "oirl.cli", "serve", str(tmp_path / "broken")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "bundle.json: prompts: Field required" in result.stderr



# --------------------------------------------------------------------------- per-request caps


def test_caps_are_listed_and_refused_before_embedding(server):
    limits = server.get("/v1/model").json()["limits"]
    assert limits["scored_pairs"] == 16_384 and limits["texts_to_embed"] == 1_024
    assert limits["pairs"] <= limits["scored_pairs"] and limits["queries"] + limits["candidates"] <= limits["texts_to_embed"]
    embedded = server.get("/health").json()["texts_embedded"]

    big = {"queries": [f"cap query {i}" for i in range(256)], "candidates": [f"cap prompt {i}" for i in range(256)]}
    started = time.perf_counter()
    response = server.post("/v1/recommend", json=big)
    assert response.status_code == 422 and time.perf_counter() - started < 2
    [error] = response.json()["detail"]
    assert error["type"] == "too_many_pairs" and error["loc"] == ["body"]
    assert error["msg"] == "256 `queries` x 256 candidates = 65,536 pairs to score exceeds the cap of 16,384 per request"

    pairs = [{"query": f"text cap query {i}", "prompt": f"text cap prompt {i}"} for i in range(513)]
    [error] = server.post("/v1/score", json={"pairs": pairs}).json()["detail"]
    assert error["type"] == "too_many_texts" and "1,026 distinct texts to embed" in error["msg"] and "cap of 1,024" in error["msg"]

    long_prompts = [f"{i} " + "a long prompt " * 200 for i in range(16)]  # 16 x 2,800 characters
    response = server.post("/v1/recommend", json={"queries": big["queries"], "candidates": long_prompts, "top_k": 16})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "too_much_prompt_text"
    assert server.get("/health").json()["texts_embedded"] == embedded  # none of them reached the model


def test_422_does_not_echo_the_input(server):
    response = server.post("/v1/recommend", json={"queries": ["x" * 20_001]})
    assert response.status_code == 422 and len(response.content) < 1_000
    [error] = response.json()["detail"]
    assert error["type"] == "string_too_long" and error["input"] == "x" * 99 + "…"

    response = server.post("/v1/score", json={"pairs": [{"query": "q", "prompt": "p"}] * 4_097})
    assert response.status_code == 422 and len(response.content) < 1_000 and "at most 4096 items" in response.text
    assert response.json()["detail"][0]["input"] == "array of 4,097 items"

    response = server.post("/v1/score", json={"pairs": [{"query": i, "prompt": "p" * 5_000} for i in range(200)]})
    body = response.json()
    assert response.status_code == 422 and body["error_count"] == 200 and len(body["detail"]) == 20 and len(response.content) < 5_000

    response = server.post("/v1/recommend", json={"queries": ["q"], "candidate_ids": [f"{i}-" + "z" * 500 for i in range(200)]})
    assert response.status_code == 404 and len(response.json()["unknown_ids"]) == 20 and len(response.content) < 5_000


# --------------------------------------------------------------------------- cost-aware, candidate union


def test_cost_aware_policy_needs_a_cost_for_every_candidate(server):
    embedded = server.get("/health").json()["texts_embedded"]
    response = server.post("/v1/recommend", json={"queries": ["A query never sent before?"], "policy": "cost-aware"})
    assert response.status_code == 422
    [error] = response.json()["detail"]  # the bundle's logs had no cost column
    assert error["loc"] == ["body", "policy"] and error["type"] == "missing_cost"
    assert "none known for: nan, CoT, APE, Dis, ToT, Decomp" in error["msg"]
    response = server.post("/v1/recommend", json={"queries": ["q"], "policy": "cost-aware",
                                                  "candidates": [{"prompt": "Be brief.", "cost": 1}, "Be thorough."]})
    assert response.status_code == 422 and "none known for: p-" in response.text
    assert server.get("/health").json()["texts_embedded"] == embedded  # refused before embedding

    priced = [{"prompt": PROMPTS["CoT"], "cost": 5.0}, {"prompt": "Answer with one number.", "prompt_id": "short", "cost": 0.5}]
    free = server.post("/v1/recommend", json={"queries": [QUERY], "candidates": priced, "policy": "cost-aware", "top_k": 2}).json()
    argmax = server.post("/v1/recommend", json={"queries": [QUERY], "candidates": priced, "policy": "argmax", "top_k": 2}).json()
    assert free["policy"] == "cost-aware" and free["results"][0]["prompt_id"] == argmax["results"][0]["prompt_id"]  # lambda 0
    cheap = server.post("/v1/recommend", json={"queries": [QUERY], "candidates": priced, "policy": "cost-aware", "cost_weight": 10}).json()
    assert cheap["results"][0]["prompt_id"] == "short"
    dear = [{**priced[0], "cost": 0.0}, {**priced[1], "cost": 50.0}]
    pick = server.post("/v1/recommend", json={"queries": [QUERY], "candidates": dear, "policy": "cost-aware", "cost_weight": 10}).json()
    assert pick["results"][0]["prompt_id"] == "CoT" and pick["results"][0]["in_bundle"]  # a bundle text keeps its id


def test_candidate_ids_and_candidates_together_are_the_union(server):
    body = {"queries": [QUERY], "candidate_ids": ["CoT", "nan"], "candidates": ["Answer with one number.", {"prompt": "Check twice.", "prompt_id": "check"}],
            "top_k": 4}
    [result] = server.post("/v1/recommend", json=body).json()["results"]
    flags = {r["prompt_id"]: r["in_bundle"] for r in result["ranking"]}
    assert flags.pop("CoT") and flags.pop("nan") and flags.pop("check") is False
    [(derived, in_bundle)] = flags.items()
    assert derived.startswith("p-") and in_bundle is False
    assert result["in_bundle"] == (result["prompt_id"] in {"CoT", "nan"})


# --------------------------------------------------------------------------- the OpenAPI schema


def test_schema_states_the_constraints_and_statuses(server):
    schema = server.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    from oirl.serve.app import NOT_BLANK

    text = models["RecommendRequest"]["properties"]["queries"]["items"]
    assert text == {"type": "string", "minLength": 1, "maxLength": 20_000, "pattern": NOT_BLANK}
    assert models["Pair"]["properties"]["prompt"] == {**text, "title": "Prompt"}
    assert models["CandidateIn"]["properties"]["prompt"]["pattern"] == NOT_BLANK
    assert models["RecommendRequest"]["properties"]["queries"]["maxItems"] == 256
    assert models["ScoreRequest"]["properties"]["pairs"]["maxItems"] == 4_096
    cost_rule = models["RecommendRequest"]["then"]
    assert models["RecommendRequest"]["if"]["properties"]["policy"] == {"const": "cost-aware"}
    assert cost_rule["properties"]["candidate_ids"] == {"maxItems": 0}  # no bundle prompt has a cost
    expected = {("/v1/recommend", "post"): {"400", "404", "409", "413", "422", "503"}, ("/v1/score", "post"): {"400", "413", "422", "503"},
                ("/v1/prompts", "get"): {"413", "503"}, ("/v1/model", "get"): {"413", "503"}, ("/health", "get"): {"503"}}
    for (path, method), codes in expected.items():
        responses = schema["paths"][path][method]["responses"]
        assert set(responses) == {"200"} | codes, path
        if "503" in codes and path != "/health":
            assert responses["503"]["headers"]["Retry-After"]["required"] is True


# --------------------------------------------------------------------------- bounded concurrency (in-process)


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
            raise RuntimeError("poisoned text")
        if not self.gate.wait(20):
            raise TimeoutError("test gate never opened")
        return self.inner.embed(texts, batch_size=batch_size)


def run_app(app, scenario):
    """Run ``scenario(client)`` against ``app`` in-process, lifespan included."""

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app", timeout=30) as client:
                return await scenario(client)

    return asyncio.run(main())


def make_app(bundle, **limits):
    """An app over the gated embedder, on the threaded path (a gated call must not block the event loop)."""
    from oirl.serve.app import ServiceLimits, create_app

    limits.setdefault("inline_call_ms", 0.0)
    embedder = GatedEmbedder()
    return create_app(bundle, api_key="", limits=ServiceLimits(**limits), embedder=embedder), embedder


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
        embedder.gate.clear()
        first = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": f"a{i}", "prompt": "p"} for i in range(5)]}))
        await asyncio.sleep(0.2)  # its 6 texts are in the (blocked) model call, none queued
        second = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": f"b{i}", "prompt": "p"} for i in range(5)]}))
        await asyncio.sleep(0.2)  # 6 texts queued of 8
        health = (await client.get("/health")).json()
        started = time.perf_counter()
        full = await client.post("/v1/score", json={"pairs": [{"query": f"c{i}", "prompt": "p"} for i in range(5)]})
        full_seconds = time.perf_counter() - started
        third = asyncio.create_task(client.post("/v1/recommend", json={"queries": ["d"]}))  # 1 text: fits
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        busy = await client.get("/v1/prompts")  # 3 requests under way
        busy_seconds = time.perf_counter() - started
        embedder.gate.set()
        done = await asyncio.gather(first, second, third)
        return health, full, full_seconds, busy, busy_seconds, done

    health, full, full_seconds, busy, busy_seconds, done = run_app(app, scenario)
    assert health["queued_texts"] == 6 and health["queued_requests"] == 1 and health["requests_in_flight"] == 2
    assert full.status_code == 503 and full.headers["retry-after"] == "7" and "queue is full" in full.text and full_seconds < 1
    assert busy.status_code == 503 and busy.headers["retry-after"] == "7" and "3 requests under way" in busy.text and busy_seconds < 1
    assert [r.status_code for r in done] == [200, 200, 200]


def test_a_failing_model_call_fails_only_the_requests_that_cause_it(bundle):
    app, embedder = make_app(bundle)

    async def scenario(client):
        embedder.gate.clear()
        blocker = asyncio.create_task(client.post("/v1/recommend", json={"queries": ["blocker"]}))
        await asyncio.sleep(0.2)  # the next three requests queue up behind it and share one model call
        posts = [asyncio.create_task(client.post("/v1/recommend", json={"queries": [q]})) for q in ("fine 1", "poison pill", "fine 2")]
        await asyncio.sleep(0.2)
        embedder.gate.set()
        results = await asyncio.gather(blocker, *posts)
        later = await client.post("/v1/recommend", json={"queries": ["fine 3"]})
        return results, later, (await client.get("/health")).json()

    (blocker, fine1, poisoned, fine2), later, health = run_app(app, scenario)
    assert [blocker.status_code, fine1.status_code, fine2.status_code, later.status_code] == [200, 200, 200, 200]
    assert poisoned.status_code == 500 and "poisoned text" in poisoned.text
    assert embedder.calls[:3] == [1, 1, 3]  # warm-up, blocker, then the three together (then each alone)
    assert health["status"] == "ok" and health["queued_texts"] == 0


def test_stuck_or_dead_embedding_worker_gives_503_and_honest_health(bundle):
    app, embedder = make_app(bundle, stall_seconds=0.5, retry_after_seconds=3)

    async def scenario(client):
        out = {}
        embedder.gate.clear()
        stuck = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": "stuck query", "prompt": "p"}]}))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(client.post("/v1/score", json={"pairs": [{"query": "waiting query", "prompt": "p"}]}))
        out["stuck"], out["waiting"] = await asyncio.gather(stuck, waiting)  # both give up after 0.5 s without progress
        out["health_stuck"] = await client.get("/health")
        out["refused"] = await client.post("/v1/recommend", json={"queries": ["x"]})
        embedder.gate.set()  # the call finishes; the abandoned texts only feed the cache
        await asyncio.sleep(0.3)
        out["health_ok"] = await client.get("/health")
        out["again"] = await client.post("/v1/score", json={"pairs": [{"query": "stuck query", "prompt": "p"}, {"query": "new query", "prompt": "p"}]})
        app.state.batcher._task.cancel()
        await asyncio.sleep(0.05)
        out["health_dead"] = await client.get("/health")
        out["dead"] = await client.post("/v1/recommend", json={"queries": ["y"]})
        return out

    out = run_app(app, scenario)
    for name in ("stuck", "waiting"):
        assert out[name].status_code == 503 and out[name].headers["retry-after"] == "3" and "no embedding progress" in out[name].text
    health = out["health_stuck"]
    assert health.status_code == 503 and health.json()["status"] == "unavailable" and "embedding call has run" in health.json()["reason"]
    assert out["refused"].status_code == 503 and "embedding call has run" in out["refused"].text
    assert out["health_ok"].status_code == 200 and out["health_ok"].json()["queued_texts"] == 0
    assert out["again"].status_code == 200
    expected = bundle.score_pairs(embedder.inner.embed(["stuck query", "new query"]), embedder.inner.embed(["p", "p"]))
    assert out["again"].json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)  # the right vectors for the right texts
    assert out["health_dead"].status_code == 503 and "worker stopped" in out["health_dead"].json()["reason"]
    assert out["dead"].status_code == 503


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


def test_batcher_serves_small_requests_alongside_a_large_one():
    from oirl.serve.runtime import EmbeddingBatcher

    batcher = EmbeddingBatcher(fake_model(seconds_per_text=0.002), max_batch=16)

    async def scenario():
        await batcher.start()
        big = asyncio.create_task(batcher.embed([f"big {i}" for i in range(1_000)]))  # about 2 s of model time
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await batcher.embed(["small"])
        small_seconds = time.perf_counter() - started
        big_done = big.done()
        await big
        await batcher.stop()
        return small_seconds, big_done

    small_seconds, big_done = asyncio.run(scenario())
    assert small_seconds < 0.5 and not big_done


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


class SlowEmbedder(GatedEmbedder):
    def embed(self, texts, batch_size=128):
        time.sleep(0.005)
        return super().embed(texts, batch_size=batch_size)


@pytest.mark.parametrize("embedder_class, inline", [(GatedEmbedder, True), (SlowEmbedder, False)])
def test_the_fast_path_is_measured_at_startup_and_answers_the_same(bundle, embedder_class, inline):
    from oirl.serve.app import ServiceLimits, create_app

    request = {"queries": ["fast query", "another query"], "candidates": ["new prompt", PROMPTS["CoT"]], "top_k": 2}

    async def scenario(client):
        return (await client.get("/v1/model")).json()["fast_path"], (await client.post("/v1/recommend", json=request)).json()

    # 4 ms: well above the hashing embedder's microseconds, below the slow one's 5 ms sleep
    fast_path, answer = run_app(create_app(bundle, api_key="", embedder=embedder_class(), limits=ServiceLimits(inline_call_ms=4.0)), scenario)
    _, threaded = run_app(create_app(bundle, api_key="", embedder=embedder_class(), limits=ServiceLimits(inline_call_ms=0.0)), scenario)
    assert fast_path["embed_inline"] is inline
    assert answer["results"] == threaded["results"]
