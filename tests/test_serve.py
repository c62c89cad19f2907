"""The HTTP service: a real uvicorn process on a loopback port with the real MiniLM model (the
bounds in-process are in test_serve_bounds.py, hot reload in test_serve_reload.py)."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import ANY

import httpx
import pytest

from oirl.data.importers.prompt_oirl import PROMPTS

QUERY = "A shop sells 3 pens for $2. How much do 12 pens cost?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, api_key=None, extra_args=(), port=None, new_session=False):
    """``oirl serve`` in a subprocess, once /health answers; ``new_session``: in a process group of
    its own (for a signal to the whole group that must not reach pytest)."""
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OIRL_API_KEY", None)
    if api_key:
        env["OIRL_API_KEY"] = api_key
    process = subprocess.Popen(
        [sys.executable, "-m", "oirl.cli", "serve", str(model_dir), "--port", str(port), *map(str, extra_args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=new_session,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a hang guard, not a speed claim: a loaded machine starts slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start in 300 s")


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
        ("/v1/recommend", {"queries": ["  "]}, 422, "must not be empty or only white space"),
        ("/v1/recommend", {"queries": ["\x1c\u3000\ufeff"]}, 422, "must not be empty or only white space"),  # white space to any regex engine
        ("/v1/recommend", {"queries": []}, 422, "at least 1 item"),
        ("/v1/recommend", {"queries": ["q"] * 257}, 422, "at most 256 items"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["p"] * 257}, 422, "at most 256 items"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["ok", ""]}, 422, "must not be empty or only white space"),
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
        ("/v1/score", {"pairs": [{"query": "q", "prompt": ""}]}, 422, "must not be empty or only white space"),
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
        assert "[^" not in response.text  # plain words, not the schema's regex


def test_422_names_the_input_as_sent(server):
    [error] = server.post("/v1/recommend", json={"queries": ["q"], "top_k": 300}).json()["detail"]
    assert error["input"] == 300 and error["loc"] == ["body", "top_k"]  # a number stays a number
    [error] = server.post("/v1/recommend", json={"queries": ["q"], "top_k": "3"}).json()["detail"]
    assert error["input"] == "3"
    [error] = server.post("/v1/recommend", json={"queries": ["q"], "cost_weight": -0.5}).json()["detail"]
    assert error["input"] == -0.5
    [error] = server.post("/v1/recommend", json={"queries": [True]}).json()["detail"]
    assert error["input"] is True and error["type"] == "string_type"
    [error] = server.post("/v1/recommend", json={"queries": [" \t"]}).json()["detail"]
    assert error == {"loc": ["body", "queries", 0], "msg": "must not be empty or only white space", "type": "string_pattern_mismatch",
                     "input": " \t"}


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
    key = {"Authorization": "Bearer s3cret-key"}
    assert secured.get("/health").json() == {"status": "ok"}  # without the key: nothing but the status
    details = secured.get("/health", headers=key).json()
    assert details["status"] == "ok" and len(details["model_version"]) == 16 and "queued_texts" in details
    # the schema needs the key too; the HTML pages, which cannot send one, are off
    assert secured.get("/openapi.json").status_code == 401
    assert secured.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    schema = secured.get("/openapi.json", headers=key).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {"type": "http", "scheme": "bearer", "description": ANY}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            guarded = path != "/health"
            assert ("security" in operation) == guarded and ("401" in operation["responses"]) == guarded, path
    for page in ("/docs", "/redoc"):  # off; without the key no path but /health says whether it exists
        assert secured.get(page).status_code == 401 and secured.get(page, headers=key).status_code == 404
    for method, path, body in (("GET", "/v1/prompts", None), ("GET", "/v1/model", None), ("POST", "/v1/recommend", {"queries": ["q"]}),
                               ("POST", "/v1/score", {"pairs": [{"query": "q", "prompt": "p"}]})):
        assert secured.request(method, path, json=body).status_code == 401
        assert secured.request(method, path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = secured.request(method, path, json=body, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200, ok.text


def test_without_the_key_no_body_is_read_and_no_slot_is_taken(secured):
    """401 before anything else: a malformed or oversize body, and 64 slow uploads (the
    concurrency limit) without the key, leave the service to the clients that have it."""
    key = {"Authorization": "Bearer s3cret-key"}
    assert secured.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"}).status_code == 401
    assert secured.post("/v1/recommend", content=b" " * 2_000_000, headers={"content-type": "application/json"}).status_code == 401
    assert secured.post("/v1/feedback", json={"decision_id": "x", "reward": 1}).status_code == 401
    uploads = []
    try:
        for _ in range(64):
            upload = socket.create_connection(("127.0.0.1", secured.base_url.port), timeout=30)
            upload.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: oirl\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100000\r\n\r\n{\"queries\": [")  # and then nothing more
            uploads.append(upload)
        with_key = secured.post("/v1/recommend", json={"queries": [QUERY]}, headers=key)
        assert with_key.status_code == 200, with_key.text
        assert all(upload.recv(64).startswith(b"HTTP/1.1 401") for upload in uploads)  # answered without waiting for the body
    finally:
        for upload in uploads:
            upload.close()


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
    response = server.post("/v1/recommend", json=big)
    assert response.status_code == 422
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
    assert [e["input"] for e in body["detail"][:3]] == [0, 1, 2]

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
    from oirl.serve.schemas import NOT_BLANK

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
