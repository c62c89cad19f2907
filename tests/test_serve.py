"""The HTTP service as a real uvicorn process on a loopback port, with the real MiniLM model."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from oirl.importers.prompt_oirl import PROMPTS

QUERY = "A shop sells 3 pens for $2. How much do 12 pens cost?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, api_key=None):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OIRL_API_KEY", None)
    if api_key:
        env["OIRL_API_KEY"] = api_key
    process = subprocess.Popen(
        [sys.executable, "-m", "oirl.cli", "serve", str(model_dir), "--port", str(port)],
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
        ("/v1/recommend", {"queries": ["  "]}, 422, "query 0 is empty"),
        ("/v1/recommend", {"queries": []}, 422, "at least 1 item"),
        ("/v1/recommend", {"queries": ["q"] * 257}, 422, "at most 256 items"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["p"] * 257}, 422, "at most 256 items"),
        ("/v1/recommend", {"queries": ["q"], "candidates": ["ok", ""]}, 422, "candidate 1 is empty"),
        ("/v1/recommend", {"queries": ["q"], "policy": "greedy"}, 422, "policy"),
        ("/v1/recommend", {"queries": ["q"], "top_k": 0}, 422, "top_k"),
        ("/v1/recommend", {"queries": ["q"], "surprise": 1}, 422, "surprise"),
        ("/v1/recommend", {"queries": ["q"], "candidate_ids": ["CoT", "nope", "gone"]}, 404, "nope, gone"),
        ("/v1/score", {"pairs": [{"query": "q", "prompt": ""}]}, 422, "empty text"),
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
