"""The gateway: the official `openai` client pointed at `oirl serve --upstream`, against real
oirl processes and a stand-in upstream (a stdlib HTTP server in a thread here that records
what it receives and answers chat completions, as JSON or as a server-sent event stream).

The bundle is made by `oirl init` (hashing embedder: fast) with two arms: one whose prompt
has a `{query}` placeholder and names a model and a temperature, one plain prompt that names
nothing. `--explore epsilon:1` serves them uniformly, so both rules are seen."""

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from click.testing import CliRunner
from test_serve import free_port, start_server, stop

from oirl.cli.main import cli
from oirl.serve.chat import apply_prompt, last_user_message, upstream_body
from oirl.serve.problems import RequestRefused

KEY, UPSTREAM_KEY = "gw-key", "upstream-s3cret"
FILL = "Solve this: {query}\nShow your steps."
PLAIN = "Let's think step by step: "
ANSWER = "The answer is 8."


class StandIn:
    """A stand-in OpenAI-compatible upstream: records each request (body, headers) and answers it."""

    def __init__(self):
        self.received: list[tuple[dict, dict]] = []
        self.release_stream = threading.Event()  # the stream's second half waits for it (or 10 s)
        self.abandoned = 0  # streams the gateway closed before their end
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                stand_in.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
                text = body["messages"][-1]["content"]
                if "rate limit me" in text:
                    self.send_response(429)
                    data = json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode()
                    for name, value in (("content-type", "application/json"), ("content-length", str(len(data))), ("retry-after", "7"),
                                        ("x-ratelimit-remaining-requests", "0"), ("x-internal-hop", "private")):
                        self.send_header(name, value)
                    self.end_headers()
                    return self.wfile.write(data)
                if "no such model" in text:
                    return self.answer(404, {"error": {"message": "The model `no-such-model` does not exist", "type": "invalid_request_error"}})
                if "slowly" in text:
                    time.sleep(3)
                if body.get("stream") and "break off" in text:
                    return self.break_off(body)
                if body.get("stream"):
                    try:
                        return self.stream(body)
                    except (BrokenPipeError, ConnectionResetError):  # the gateway closed the call: its client left
                        stand_in.abandoned += 1
                        return None
                self.answer(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body.get("model", "?"),
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})

            def answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self, body):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for i, piece in enumerate(["The ", "answer ", "is 8."]):
                    if i == 1:  # the first event must reach the client while the upstream still works
                        stand_in.release_stream.wait(10)
                    chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": body.get("model", "?"),
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def break_off(self, body):
                """One event, then the connection closes in the middle of a chunk."""
                self.protocol_version = "HTTP/1.1"  # chunked: an end before the last chunk is an error, not the body's end
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                event = ("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                                "choices": [{"index": 0, "delta": {"content": "The "}, "finish_reason": None}]}) + "\n\n").encode()
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n" + b"ff\r\ndata: {")
                self.wfile.flush()
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that left mid-stream: expected here, not noise
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def arms_bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    prompts = work / "arms.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "fill", "prompt": FILL, "model": "arm-model", "params": {"temperature": 0.2}}) + "\n"
                       + json.dumps({"prompt_id": "plain", "prompt": PLAIN}) + "\n")
    result = CliRunner().invoke(cli, ["init", "--prompts", str(prompts), "--out", str(work / "model"), "--embedder", "hashing",
                                      "--cache-dir", str(work / "emb")])
    assert result.exit_code == 0, result.output
    return work


@pytest.fixture(scope="module")
def gateway(arms_bundle):
    """A stand-in upstream and an oirl gateway in front of it (behind a key, recording decisions)."""
    upstream = StandIn()
    decisions = arms_bundle / "decisions.sqlite"
    os.environ["OIRL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY  # inherited by the server process, read there by name
    try:
        process, base = start_server(arms_bundle / "model", api_key=KEY, extra_args=(
            "--decisions", decisions, "--explore", "epsilon:1", "--upstream", upstream.url, "--upstream-key-env", "OIRL_TEST_UPSTREAM_KEY"))
    finally:
        del os.environ["OIRL_TEST_UPSTREAM_KEY"]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    yield client, upstream, base, decisions, process
    stop(process)
    upstream.close()
    log = process.stdout.read()
    assert UPSTREAM_KEY not in log and KEY not in log and "Traceback" not in log  # nothing secret, no traceback, after every test


def ask(client, text, **options):
    raw = client.chat.completions.with_raw_response.create(model="client-model", messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": text}], **options)
    return raw.headers, raw.parse()


def test_the_openai_client_gets_the_answer_and_the_upstream_the_applied_prompt_and_the_arms_model(gateway):
    client, upstream, *_ = gateway
    seen = {}
    for i in range(20):  # epsilon 1: each arm with probability 1/2, so both come up (all 20 alike: 2e-6)
        question = f"Tom has {i} apples and buys 5 more. How many does he have?"
        headers, completion = ask(client, question)
        oirl = completion.model_extra["oirl"]
        body, sent_headers = upstream.received[-1]
        assert completion.choices[0].message.content == ANSWER and completion.usage.total_tokens == 8  # the upstream's answer
        assert headers["x-oirl-decision-id"] == oirl["decision_id"] and set(oirl) == {"decision_id", "prompt_id", "model_version"}
        assert body["messages"][0] == {"role": "system", "content": "You are terse."}  # only the last user message changes
        if oirl["prompt_id"] == "fill":  # the placeholder filled; the arm's model and temperature set
            assert body["messages"][-1]["content"] == FILL.replace("{query}", question)
            assert body["model"] == "arm-model" and body["temperature"] == 0.2
        else:  # appended after the message, as the logs' prompts were used; the request's model passes through
            assert body["messages"][-1]["content"] == f"{question}\n{PLAIN}"
            assert body["model"] == "client-model" and "temperature" not in body
        assert sent_headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the upstream's key, not the gateway's
        seen[oirl["prompt_id"]] = oirl["decision_id"]
    assert set(seen) == {"fill", "plain"}


def test_the_decision_is_recorded_as_recommend_records_it_and_feedback_takes_its_id(gateway, tmp_path):
    client, _, base, decisions, _ = gateway
    headers, completion = ask(client, "What is 7 times 8?")
    decision = completion.model_extra["oirl"]["decision_id"]
    answer = httpx.post(f"{base}/v1/feedback", json={"decision_id": decision, "reward": 1.0}, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200 and answer.json()["duplicate"] is False
    with sqlite3.connect(decisions) as db:
        query, prompt_id, propensity, explore = db.execute(
            "SELECT query, prompt_id, propensity, explore FROM decisions WHERE decision_id = ?", (decision,)).fetchone()
    assert query == "What is 7 times 8?" and prompt_id == completion.model_extra["oirl"]["prompt_id"]
    assert propensity == pytest.approx(0.5) and json.loads(explore) == {"method": "epsilon", "epsilon": 1.0}
    for i in range(30):  # more traffic with outcomes: "fill" is the better arm here
        _, completion = ask(client, f"What is {i} times 8?")
        oirl = completion.model_extra["oirl"]
        httpx.post(f"{base}/v1/feedback", json={"decision_id": oirl["decision_id"], "reward": float(oirl["prompt_id"] == "fill")},
                   headers={"Authorization": f"Bearer {KEY}"}).raise_for_status()
    out = tmp_path / "gateway.parquet"  # gateway traffic exports, and trains, like any decisions
    result = CliRunner().invoke(cli, ["export-decisions", str(decisions), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] >= 31
    trained = CliRunner().invoke(cli, ["train", str(out), "--out", str(tmp_path / "next"), "--model", "logistic", "--embedder", "hashing",
                                       "--cache-dir", str(tmp_path / "emb")])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["training"]["feedback"] == "partial"


def test_a_client_may_choose_the_decision_id_and_send_feedback_with_it_later(gateway):
    """A client that keeps its own ids (a request or conversation id) sends one as x-oirl-decision-id."""
    client, upstream, base, *_ = gateway
    own = str(uuid.uuid4())
    headers, completion = ask(client, "What is 9 minus 4?", extra_headers={"x-oirl-decision-id": own.upper()})
    assert completion.model_extra["oirl"]["decision_id"] == own == headers["x-oirl-decision-id"]
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{base}/v1/feedback", json={"decision_id": own, "reward": 0.0}, headers=auth).status_code == 200
    before = len(upstream.received)
    with pytest.raises(openai.ConflictError) as twice:  # used before: refused before the upstream is called
        ask(client, "What is 9 minus 4?", extra_headers={"x-oirl-decision-id": own})
    assert twice.value.response.json()["detail"] == f"decision_id '{own}' is already recorded; choose a new one"
    with pytest.raises(openai.UnprocessableEntityError) as malformed:
        ask(client, "What is 9 minus 4?", extra_headers={"x-oirl-decision-id": "order-17"})
    assert malformed.value.response.json()["detail"][0]["loc"] == ["header", "x-oirl-decision-id"]
    assert len(upstream.received) == before


def test_stream_true_passes_the_events_through_as_they_arrive(gateway):
    client, upstream, *_ = gateway
    upstream.release_stream.clear()
    started = time.monotonic()
    with client.chat.completions.with_streaming_response.create(
            model="client-model", stream=True, messages=[{"role": "user", "content": "What is 3 plus 5?"}]) as response:
        decision = response.headers["x-oirl-decision-id"]
        pieces = []
        for chunk in response.parse():
            pieces.append(chunk.choices[0].delta.content)
            upstream.release_stream.set()  # only now may the upstream send the rest: nothing is buffered on the way
    assert "".join(pieces) == "The answer is 8." and time.monotonic() - started < 8
    assert upstream.received[-1][0]["stream"] is True and decision


def test_a_stream_that_breaks_off_ends_with_an_error_event_the_client_raises(gateway):
    client, *_ = gateway
    pieces = []
    with pytest.raises(openai.APIError, match=r"the upstream's stream broke off \(RemoteProtocolError\)"):
        for chunk in client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "Now break off."}]):
            pieces.append(chunk.choices[0].delta.content)
    assert pieces == ["The "]  # what came before the break came through


def test_a_decision_store_that_cannot_write_is_a_503_and_the_answer_is_not_passed_on(gateway, arms_bundle, tmp_path, caplog):
    """In-process: the commit runs while the upstream works; a failed one is the service's 503, streaming or not."""
    from test_serve_bounds import run_app

    from oirl.decisions.store import DecisionStore
    from oirl.recommender.bundle import load_bundle
    from oirl.serve.app import create_app
    from oirl.serve.gateway import UpstreamSettings

    _, upstream, *_ = gateway
    store = DecisionStore(tmp_path / "decisions.sqlite")
    app = create_app(load_bundle(arms_bundle / "model", cache_dir=arms_bundle / "emb"), api_key="", decisions=store,
                     upstream=UpstreamSettings(upstream.url))
    request = {"model": "m", "messages": [{"role": "user", "content": "Is 91 prime?"}]}

    async def scenario(client):
        ok = await client.post("/v1/chat/completions", json=request)
        store.close()
        upstream.release_stream.set()
        return ok, await client.post("/v1/chat/completions", json=request), \
            await client.post("/v1/chat/completions", json={**request, "stream": True})

    before = len(upstream.received)
    with caplog.at_level(logging.ERROR, logger="oirl.serve"):
        ok, plain, streamed = run_app(app, scenario)
    assert ok.status_code == 200 and ok.json()["oirl"]["decision_id"]
    for refused in (plain, streamed):
        assert refused.status_code == 503 and refused.json()["detail"] == "the decision store is unavailable; try again later"
        assert "choices" not in refused.text and refused.headers["content-type"] == "application/json"
    assert len(upstream.received) == before + 3  # the calls were made (the commit overlaps them), their answers held back


def test_upstream_refusals_pass_through_with_their_status(gateway):
    client, *_ = gateway
    with pytest.raises(openai.NotFoundError) as refused:
        ask(client, "Is 91 prime? (no such model)")
    assert refused.value.status_code == 404 and "no-such-model" in str(refused.value)
    with pytest.raises(openai.RateLimitError) as limited:  # what a client acts on comes along: Retry-After, the limits
        ask(client, "Please rate limit me.")
    headers = limited.value.response.headers
    assert headers["retry-after"] == "7" and headers["x-ratelimit-remaining-requests"] == "0" and "x-internal-hop" not in headers
    assert headers["x-oirl-decision-id"]


def test_the_gateway_needs_the_key_before_reading_the_body_and_never_echoes_the_upstream_key(gateway):
    _, upstream, base, *_ = gateway
    before = len(upstream.received)
    denied = httpx.post(f"{base}/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and len(upstream.received) == before
    bad = httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"}]},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "no_user_message"
    table = httpx.get(f"{base}/v1/prompts", headers={"Authorization": f"Bearer {KEY}"}).json()["prompts"]
    assert [(p["prompt_id"], p.get("model"), p.get("params")) for p in table] == [("fill", "arm-model", {"temperature": 0.2}),
                                                                                  ("plain", None, None)]
    model = httpx.get(f"{base}/v1/model", headers={"Authorization": f"Bearer {KEY}"})
    assert model.json()["gateway"]["upstream"] == upstream.url.removesuffix("/v1") and UPSTREAM_KEY not in model.text


def test_a_slow_upstream_holds_up_neither_health_nor_recommend(gateway):
    client, _, base, *_ = gateway
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(ask, client, f"Answer slowly: what is {i} plus 1?") for i in range(3)]
        time.sleep(0.5)  # the slow calls are with the upstream now
        started = time.monotonic()
        health = httpx.get(f"{base}/health")
        recommend = httpx.post(f"{base}/v1/recommend", json={"queries": ["What is 2 plus 2?"]}, headers={"Authorization": f"Bearer {KEY}"})
        took = time.monotonic() - started
        assert health.status_code == 200 and recommend.status_code == 200 and took < 1.5
        assert all(f.result()[1].choices[0].message.content == ANSWER for f in slow)


def test_with_the_upstream_down_the_client_gets_a_502_and_the_log_has_no_traceback(arms_bundle):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    process, base = start_server(arms_bundle / "model", extra_args=("--upstream", dead, "--upstream-timeout", "5"))
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as failed:
            ask(client, "Is 91 prime?")
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "Is 91 prime?"}])
        health = httpx.get(f"{base}/health")
    finally:
        stop(process)
    log = process.stdout.read()
    problem = failed.value.response.json()  # the service's problem format: one line and the id it was logged under
    assert failed.value.status_code == 502 and problem["detail"] == "the upstream is unreachable (ConnectError)" and problem["request_id"]
    assert health.status_code == 200
    assert "Traceback" not in log and log.count("the upstream is unreachable: ConnectError") == 2


def test_a_slow_upstream_is_a_504_and_one_request_over_the_bound_a_503(gateway, arms_bundle):
    _, upstream, *_ = gateway
    process, base = start_server(arms_bundle / "model", extra_args=("--upstream", upstream.url, "--upstream-timeout", "1",
                                                                    "--upstream-concurrency", "1"))
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(ask, client, "Answer slowly: is 91 prime?")  # the stand-in takes 3 s, the gateway waits 1 s
            deadline = time.monotonic() + 5
            while httpx.get(f"{base}/v1/model").json()["gateway"]["in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(openai.InternalServerError) as busy:
                ask(client, "Is 7 prime?")
            with pytest.raises(openai.InternalServerError) as late:
                slow.result()
        after = httpx.get(f"{base}/v1/model").json()["gateway"]["in_flight"]
    finally:
        stop(process)
    log = process.stdout.read()
    assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "2"
    assert late.value.status_code == 504 and late.value.response.json()["detail"] == "the upstream did not answer in time (ReadTimeout)"
    assert after == 0 and "Traceback" not in log and "the upstream did not answer in time: ReadTimeout" in log


def test_a_client_leaving_a_stream_frees_its_slot(gateway):
    client, upstream, base, *_ = gateway
    upstream.release_stream.clear()  # the stand-in holds the stream open after its first event
    with client.chat.completions.with_streaming_response.create(
            model="client-model", stream=True, messages=[{"role": "user", "content": "What is 1 plus 1?"}]) as response:
        next(iter(response.parse()))
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + 5
    while httpx.get(f"{base}/v1/model", headers=headers).json()["gateway"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    freed = httpx.get(f"{base}/v1/model", headers=headers).json()["gateway"]["in_flight"] == 0  # while the upstream still holds it
    upstream.release_stream.set()
    deadline = time.monotonic() + 5
    while not upstream.abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert freed and upstream.abandoned == 1  # and the upstream call was closed: no generation runs on for nobody


def test_serve_refuses_an_unset_key_variable_or_a_url_with_credentials_in_one_line(arms_bundle):
    for args, needle in ((["--upstream", "http://127.0.0.1:1/v1", "--upstream-key-env", "OIRL_TEST_NOT_SET"], "OIRL_TEST_NOT_SET: that environment variable is not set"),
                         (["--upstream", "http://user:pw@127.0.0.1:1/v1"], "put no credentials in the URL"),
                         (["--upstream", "ftp://x"], "not an http(s) URL"), (["--upstream-key-env", "X"], "needs --upstream")):
        result = CliRunner().invoke(cli, ["serve", str(arms_bundle / "model"), *args])
        assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.output, result.output


# --------------------------------------------------------------------------- the rule, in-process


def test_the_prompt_rule_fills_placeholders_and_appends_otherwise():
    assert apply_prompt("Q: {query}\nA:", "2+2?") == "Q: 2+2?\nA:"
    assert apply_prompt("Question: {{ question }} (answer briefly)", r"a \1 b") == r"Question: a \1 b (answer briefly)"
    assert apply_prompt("The answer is:", "2+2?") == "2+2?\nThe answer is:"
    body = {"model": "m", "temperature": 1.0, "messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                                                            {"role": "user", "content": [{"type": "text", "text": "look"},
                                                                                         {"type": "image_url", "image_url": {"url": "u"}},
                                                                                         {"type": "text", "text": "here"}]}]}
    assert last_user_message(body) == (2, "look\nhere")
    out = upstream_body(body, 2, "Think: ", {"model": "arm", "params": {"temperature": 0.1}})
    assert out["messages"][2]["content"] == [{"type": "text", "text": "look\nhere\nThink: "}, {"type": "image_url", "image_url": {"url": "u"}}]
    assert out["model"] == "arm" and out["temperature"] == 0.1 and body["messages"][2]["content"][0]["text"] == "look"  # the input is not changed
    with pytest.raises(RequestRefused, match="no message with role"):
        last_user_message({"messages": [{"role": "assistant", "content": "hi"}]})
