"""oirl.client against real servers: ``oirl serve`` with the real MiniLM model (decisions, a key),
and the app under a real uvicorn in a thread of this process with a gated embedder, whose one
request slot is full, for the 503s. Then the retry schedule alone, on a mock transport."""

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest
from experiment_scripts import load
from test_serve import free_port, start_server, stop
from test_serve_bounds import make_app

from oirl.client import (
    AuthenticationError,
    Candidate,
    Client,
    ConflictError,
    ConnectionFailedError,
    NotFoundError,
    OirlClientError,
    PayloadTooLargeError,
    Recommendation,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
    backoff_seconds,
)
from oirl.data.importers.prompt_oirl import PROMPTS

KEY = "cl1ent-key"
QUERIES = ["A shop sells 3 pens for $2. How much do 12 pens cost?", "Tom has 5 apples and eats 2. How many are left?"]
BUNDLE_IDS = ["nan", "CoT", "APE", "Dis", "ToT", "Decomp"]


class FixedJitter:
    """An ``rng`` whose every draw is ``value``: the waits become exact."""

    def __init__(self, value: float = 0.0):
        self.value = value

    def random(self) -> float:
        return self.value


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock, and the waits are recorded."""

    def __init__(self, on_sleep=None):
        self.now = 1_000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture(scope="module")
def logged(minilm_bundle, tmp_path_factory):
    """``oirl serve`` with --decisions behind a key: (base URL, decision file)."""
    decisions = tmp_path_factory.mktemp("client-decisions") / "decisions.sqlite"
    process, base = start_server(minilm_bundle, api_key=KEY, extra_args=("--decisions", decisions, "--explore", "none"))
    yield base, decisions
    stop(process)


@pytest.fixture
def client(logged):
    with Client(logged[0], api_key=KEY) as c:
        yield c


@contextmanager
def serving(app):
    """``app`` under a real uvicorn on a loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-for-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def one_slot(minilm_bundle):
    """A server that takes one /v1 request at a time (Retry-After: 3) and records no decisions,
    with an embedder that waits for its gate: (URL, embedder)."""
    from oirl.recommender.bundle import load_bundle

    app, embedder = make_app(load_bundle(minilm_bundle), concurrent_requests=1, retry_after_seconds=3)
    with serving(app) as base:
        yield base, embedder


def wait_for_in_flight(base, n):
    with Client(base) as probe:
        deadline = time.monotonic() + 30
        while probe.health().requests_in_flight != n:
            assert time.monotonic() < deadline, f"requests under way never became {n}"
            time.sleep(0.02)


@contextmanager
def slot_taken(base, embedder):
    """The one request slot held by a recommend whose embedding waits for the gate; yields that
    request's future. The gate opens on leaving."""
    embedder.gate.clear()
    pool = ThreadPoolExecutor(max_workers=1)
    blocker = pool.submit(httpx.post, f"{base}/v1/recommend", json={"queries": [f"blocks the slot {uuid.uuid4()}"]}, timeout=60)
    try:
        wait_for_in_flight(base, 1)
        yield blocker
    finally:
        embedder.gate.set()
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------- a real server with decisions and a key


def test_recommend_one_query_or_many(client):
    rec = client.recommend(QUERIES[0], top_k=4, policy="argmax")
    assert isinstance(rec, Recommendation) and rec.query == QUERIES[0] and rec.policy == "argmax"
    assert len(rec.ranking) == 4 and [r.score for r in rec.ranking] == sorted((r.score for r in rec.ranking), reverse=True)
    assert (rec.prompt_id, rec.prompt, rec.score) == (rec.ranking[0].prompt_id, rec.ranking[0].prompt, rec.ranking[0].score)
    assert rec.prompt == PROMPTS[rec.prompt_id] and rec.in_bundle and rec.propensity == 1.0
    uuid.UUID(rec.decision_id)
    recs = client.recommend(QUERIES, top_k=2)
    assert [r.query for r in recs] == QUERIES and len({r.decision_id for r in recs}) == 2
    assert recs[0].prompt_id == client.recommend(QUERIES[0], top_k=2).prompt_id  # the same query, the same pick
    assert len(recs[0].model_version) == 16


def test_recommend_takes_candidates_ids_and_exploration(client):
    candidates = [Candidate("Answer with one number.", prompt_id="short", cost=0.5), {"prompt": PROMPTS["CoT"], "cost": 5},
                  "Check your arithmetic twice."]
    rec = client.recommend(QUERIES[0], candidates=candidates, candidate_ids=["nan"], top_k=4)
    flags = {r.prompt_id: r.in_bundle for r in rec.ranking}
    assert flags.pop("short") is False and flags.pop("CoT") is True and flags.pop("nan") is True
    [(derived, in_bundle)] = flags.items()
    assert derived.startswith("p-") and in_bundle is False
    cheap = client.recommend(QUERIES[0], candidates=candidates[:2], policy="cost-aware", cost_weight=10)
    assert cheap.prompt_id == "short" and cheap.policy == "cost-aware"
    for explore in ("epsilon:1", ("epsilon", 1.0), {"method": "epsilon", "epsilon": 1.0}):  # every prompt equally likely
        assert client.recommend(QUERIES[1], explore=explore).propensity == pytest.approx(1 / 6)
    assert client.recommend(QUERIES[1], explore=False).propensity == 1.0


def test_feedback_once_then_duplicate_then_conflict(client):
    rec = client.recommend(QUERIES[1])
    first = client.feedback(rec, 1)
    assert (first.decision_id, first.reward, first.duplicate, first.recorded) == (rec.decision_id, 1.0, False, True)
    assert client.feedback(rec.decision_id, True).duplicate is True  # a retry of the same outcome
    with pytest.raises(ConflictError, match=r"409 .*reward 1\.0 was recorded at .*cannot replace it") as conflict:
        client.feedback(rec, 0.0)
    assert conflict.value.status == 409 and conflict.value.url.endswith("/v1/feedback") and conflict.value.attempts == 1
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFoundError, match=f"404 unknown decision_id '{unknown}'") as missing:
        client.feedback(unknown, 1.0)
    assert missing.value.unknown_ids == (unknown,)
    with pytest.raises(ValidationError, match=r"422 invalid request: reward: Input should be less than or equal to 1") as invalid:
        client.feedback(rec, 1.5)
    assert [e.loc for e in invalid.value.errors] == [("reward",)] and invalid.value.errors[0].type == "less_than_equal"


def test_model_prompts_and_health(client, logged):
    info = client.model()
    assert info.records_decisions and info.explore is None and info.model_kind == "lightgbm"
    assert info.default_policy in {"argmax", "conservative", "fallback", "cost-aware"}
    assert info.limits["queries"] == 256 and info.raw["training"]["query_instances"] == 300
    assert info.model_version == client.recommend(QUERIES[0]).model_version == client.health().model_version
    table = client.prompts()
    assert [p.prompt_id for p in table.prompts] == BUNDLE_IDS and table.default_prompt_id == info.default_prompt_id
    assert all(0 <= p.train_mean_reward <= 1 for p in table.prompts)
    assert client.health().ok and client.health().status == "ok"


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"candidate_ids": ["CoT", "nope", "gone"]}, NotFoundError, r"404 unknown prompt id\(s\): nope, gone"),
    ({"candidates": ["same", {"prompt": "same"}]}, ConflictError, "409 .*given twice"),
    ({"policy": "greedy"}, ValidationError, r"422 invalid request: policy: Input should be"),
    ({"top_k": 0, "cost_weight": -1}, ValidationError, r"422 invalid request: top_k: .*; cost_weight: "),
    ({"queries": ["x" * 600_000, "y" * 600_000]}, PayloadTooLargeError, "413 request body over 1048576 bytes; send fewer"),
])
def test_errors_name_the_call_the_status_and_the_reason(client, kwargs, error, needle):
    queries = kwargs.pop("queries", [QUERIES[0]])
    with pytest.raises(error, match=f"^POST {client.base_url}/v1/recommend: {needle}") as raised:
        client.recommend(queries, **kwargs)
    assert raised.value.attempts == 1  # refused for a reason a retry cannot change
    if error is NotFoundError:
        assert raised.value.unknown_ids == ("nope", "gone")
    if error is ValidationError:
        assert raised.value.error_count == len(raised.value.errors) >= 1


def test_a_missing_or_wrong_key_is_a_clear_401(logged):
    base, _ = logged
    with Client(base, api_key="") as anonymous, Client(base, api_key="not-the-key") as wrong:
        anonymous_health = anonymous.health()
        assert anonymous_health.ok and anonymous_health.model_version is None  # /health needs no key, and says no more without it
        with pytest.raises(AuthenticationError, match=r"^GET .*/v1/model: 401 missing or wrong API key .*; no api_key given "
                                                       r"\(pass api_key= or set OIRL_API_KEY\)$"):
            anonymous.model()
        with pytest.raises(AuthenticationError, match="401 .*the api_key given was refused$") as refused:
            wrong.recommend(QUERIES[0])
        assert refused.value.attempts == 1 and "not-the-key" not in str(refused.value) + repr(wrong)


def test_the_key_comes_from_the_environment(logged, monkeypatch):
    monkeypatch.setenv("OIRL_API_KEY", KEY)
    with Client(logged[0]) as from_env:
        assert from_env.prompts().default_prompt_id in BUNDLE_IDS


def test_the_example_app_runs_end_to_end(logged, tmp_path, capsys):
    from click.testing import CliRunner

    from oirl.cli.main import cli

    base, decisions = logged

    def export() -> pd.DataFrame:
        out = tmp_path / f"export-{uuid.uuid4()}.parquet"
        result = CliRunner().invoke(cli, ["export-decisions", str(decisions), "--out", str(out)])
        assert result.exit_code == 0, result.output
        return pd.read_parquet(out)

    before = export()
    report = load("example_app").main(["--base-url", base, "--n", "12", "--api-key", KEY, "--seed", "3"])
    printed = capsys.readouterr().out
    assert report["questions"] == report["feedback recorded"] == 12 and report["duplicates"] == 0
    assert sum(report["prompts served"].values()) == 12 and set(report["prompts served"]) <= set(BUNDLE_IDS)
    right = report["right with oirl's prompt"]
    assert f"12 questions against {base}" in printed and f"right with oirl's prompt: {right} (" in printed
    new = export().set_index("decision_id").drop(before["decision_id"])
    assert len(new) == 12 and new["reward"].sum() == right  # every outcome arrived
    assert new["query"].nunique() == 12


def test_the_example_app_says_when_the_server_records_no_decisions(one_slot, capsys):
    base, _ = one_slot
    with pytest.raises(SystemExit) as exit_info:
        load("example_app").main(["--base-url", base, "--n", "2"])
    assert exit_info.value.code == 2
    assert "error: feedback: this recommendation has no decision_id: the server at" in capsys.readouterr().err


# --------------------------------------------------------------------------- 503 and lost connections, for real


def test_a_503_is_retried_after_the_time_retry_after_says(one_slot):
    base, embedder = one_slot
    with slot_taken(base, embedder) as blocker:
        def free_the_slot():  # while the client waits: the request under way finishes and leaves its slot
            embedder.gate.set()
            assert blocker.result(timeout=60).status_code == 200
            wait_for_in_flight(base, 0)

        fake = FakeTime(on_sleep=free_the_slot)
        with Client(base, sleep=fake.sleep, clock=fake.clock, rng=FixedJitter(0.0)) as client:
            rec = client.recommend(QUERIES[0])
    assert fake.sleeps == [3.0]  # Retry-After: 3, no jitter drawn
    assert rec.prompt_id in BUNDLE_IDS and rec.decision_id is None


def test_a_503_that_lasts_ends_in_service_unavailable(one_slot):
    base, embedder = one_slot
    with slot_taken(base, embedder):
        fake = FakeTime()
        with Client(base, max_retries=2, sleep=fake.sleep, clock=fake.clock, rng=FixedJitter(0.5)) as client:
            with pytest.raises(ServiceUnavailableError, match=r"503 service unavailable: 1 requests under way; try again shortly; "
                                                              r"the server asks to retry after 3 s \(after 3 attempts\)$") as busy:
                client.prompts()
        assert fake.sleeps == [3.25, 3.25]  # Retry-After plus half of `backoff` (0.5 s) as jitter
        assert busy.value.retry_after == 3.0 and busy.value.attempts == 3 and busy.value.status == 503

        fake = FakeTime()
        with Client(base, deadline=5.0, sleep=fake.sleep, clock=fake.clock, rng=FixedJitter(0.0)) as client:
            with pytest.raises(ServiceUnavailableError, match=r"gave up after 2 attempts: the server asks to wait 3.0 s, "
                                                              r"past the deadline of 5 s\)$"):
                client.recommend(QUERIES[0])
        assert fake.sleeps == [3.0]  # the second wait would have passed the deadline


def test_a_server_that_is_not_there_is_retried_then_named():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    fake = FakeTime()
    with Client(url, sleep=fake.sleep, clock=fake.clock, rng=FixedJitter(0.0)) as client:
        with pytest.raises(ConnectionFailedError, match=f"^POST {url}/v1/recommend: could not reach the server: ConnectError: "
                                                        r".*\(after 4 attempts\)$") as refused:
            client.recommend(QUERIES[0])  # never sent: safe to retry even a recommend
    assert fake.sleeps == [0.25, 0.5, 1.0] and refused.value.maybe_processed is False


def test_feedback_without_decisions_is_refused_before_sending(one_slot):
    base, _ = one_slot
    with Client(base) as client:
        rec = client.recommend(QUERIES[0])
        with pytest.raises(OirlClientError, match=f"no decision_id: the server at {base} records no decisions"):
            client.feedback(rec, 1.0)
        with pytest.raises(NotFoundError, match="404 this server records no decisions") as raised:
            client.feedback(str(uuid.uuid4()), 1.0)
        assert raised.value.unknown_ids == ()
        assert client.model().records_decisions is False


# --------------------------------------------------------------------------- the retry rules alone (mock transport)


def scripted(*steps):
    """A transport answering the requests with ``steps`` in turn: a status (with an optional
    Retry-After: ``(503, "2")``), a JSON body for 200, or an exception to raise."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = steps[len(seen) - 1]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, dict):
            return httpx.Response(200, json=step)
        status, retry_after = step if isinstance(step, tuple) else (step, None)
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return httpx.Response(status, json={"detail": f"status {status}"}, headers=headers)

    return httpx.MockTransport(handle), seen


PROMPTS_BODY = {"model_version": "v", "default_prompt_id": "a", "prompts": [{"prompt_id": "a", "prompt": "A", "train_mean_reward": 0.5}]}
RECOMMEND_BODY = {"model_version": "v", "policy": "argmax", "results": [
    {"index": 0, "prompt_id": "a", "prompt": "A", "score": 0.5, "in_bundle": True, "decision_id": None, "propensity": None,
     "ranking": [{"prompt_id": "a", "prompt": "A", "score": 0.5, "in_bundle": True}]}]}
FEEDBACK_BODY = {"recorded": True, "decision_id": "d", "reward": 1.0, "duplicate": True}


def mock_client(transport, jitter=0.0, **kwargs):
    fake = FakeTime()
    return Client("http://oirl.test", transport=transport, sleep=fake.sleep, clock=fake.clock, rng=FixedJitter(jitter), **kwargs), fake


@pytest.mark.parametrize("jitter, expected", [(0.0, [0.25, 0.5, 1.0, 1.5, 1.5]), (0.999999, [0.5, 1.0, 2.0, 3.0, 3.0])])
def test_backoff_doubles_with_jitter_up_to_its_cap(jitter, expected):
    transport, seen = scripted(503, 502, 504, 503, 503, PROMPTS_BODY)
    client, fake = mock_client(transport, jitter, max_retries=5, max_backoff=3.0)
    assert client.prompts().default_prompt_id == "a" and len(seen) == 6
    assert fake.sleeps == pytest.approx(expected, abs=1e-5)
    assert [backoff_seconds(r, base=1.0, cap=10.0, jitter=j) for r, j in ((1, 0.0), (2, 0.5), (5, 0.0))] == [0.5, 1.5, 5.0]


@pytest.mark.parametrize("call", ["recommend", "feedback"])
@pytest.mark.parametrize("step", [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("Server disconnected"), 502, 504])
def test_only_a_call_safe_to_repeat_is_retried_after_a_lost_answer(call, step):
    transport, seen = scripted(step, RECOMMEND_BODY if call == "recommend" else FEEDBACK_BODY)
    client, fake = mock_client(transport)
    if call == "recommend":  # the server may have recorded a decision: not repeated behind the caller's back
        with pytest.raises(ConnectionFailedError if isinstance(step, Exception) else ServerError) as raised:
            client.recommend("q")
        assert len(seen) == 1 and fake.sleeps == [] and raised.value.attempts == 1
        if isinstance(step, Exception):
            assert raised.value.maybe_processed and "no answer (the request may have been processed)" in str(raised.value)
    else:  # the same reward again is a duplicate, not a second record
        assert client.feedback("d", 1.0).duplicate and len(seen) == 2 and fake.sleeps == [0.25]


def test_a_503_or_429_and_a_request_never_sent_are_retried_for_recommend_too():
    transport, seen = scripted((503, "2"), (429, "1"), httpx.ConnectError("refused"), httpx.ConnectTimeout("timed out"), RECOMMEND_BODY)
    client, fake = mock_client(transport, max_retries=4)
    assert client.recommend("q").prompt_id == "a" and len(seen) == 5
    assert fake.sleeps == [2.0, 1.0, 1.0, 2.0]  # Retry-After as given, then the backoff of retries 3 and 4


def test_retry_after_as_an_http_date_and_the_attempt_timeout_within_the_deadline():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from oirl.client._retry import retry_after

    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    response = httpx.Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    assert retry_after(response, now=lambda: (when - timedelta(seconds=7)).timestamp()) == 7.0
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None

    transport, seen = scripted((503, "4"), PROMPTS_BODY)
    client, fake = mock_client(transport, timeout=30.0, deadline=10.0)
    client.prompts()
    assert [r.extensions["timeout"]["read"] for r in seen] == [10.0, 6.0]  # each attempt ends by the deadline


def test_health_asks_once_and_reports_unavailable():
    body = {"status": "unavailable", "reason": "an embedding call has run for 31 s (limit 30 s)", "model_version": "v",
            "queued_texts": 5, "queued_requests": 1, "requests_in_flight": 2, "embedding_call_seconds": 31.0, "texts_embedded": 9}
    client, fake = mock_client(httpx.MockTransport(lambda request: httpx.Response(503, json=body, headers={"Retry-After": "2"})))
    health = client.health()
    assert not health.ok and health.reason.startswith("an embedding call") and health.requests_in_flight == 2 and fake.sleeps == []


def test_an_answer_from_something_else_is_named():
    transport, _ = scripted({"unexpected": True})
    client, _ = mock_client(transport)
    with pytest.raises(OirlClientError, match=r"^GET http://oirl.test/v1/model: unexpected answer \(KeyError: 'policy'\); "
                                              "is this an oirl server"):
        client.model()
    html = httpx.MockTransport(lambda request: httpx.Response(500, text="<html><body>Internal Server Error</body></html>"))
    client, _ = mock_client(html)
    with pytest.raises(ServerError, match=r"^GET http://oirl.test/v1/prompts: 500 <html><body>Internal Server Error"):
        client.prompts()


@pytest.mark.parametrize("kwargs, needle", [
    ({"base_url": "localhost:8000"}, "base_url must be an http:// or https:// address"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
    ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"deadline": float("inf")}, "deadline must be a positive number of seconds, got inf"),
])
def test_bad_settings_are_refused_at_construction(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Client(**{"base_url": "http://oirl.test", **kwargs})


def test_requests_the_client_cannot_send_are_named():
    client, _ = mock_client(httpx.MockTransport(lambda request: httpx.Response(200, json=RECOMMEND_BODY)))
    with pytest.raises(OirlClientError, match="POST http://oirl.test/v1/recommend: the request cannot be sent as JSON: Out of range float"):
        client.recommend("q", candidates=[Candidate("p", cost=float("nan"))])
    with pytest.raises(ValueError, match="explore: unknown method 'greedy'"):
        client.recommend("q", explore="greedy:0.1")
    with pytest.raises(ValueError, match="explore=True: say how"):
        client.recommend("q", explore=True)
    with pytest.raises(ValueError, match="explore: 'epsilon' is not METHOD:VALUE"):
        client.recommend("q", explore="epsilon")


def test_texts_go_out_as_utf8_and_a_lone_surrogate_escaped():
    transport, seen = scripted(RECOMMEND_BODY, RECOMMEND_BODY)
    client, _ = mock_client(transport)
    client.recommend("Wie viel kostet ein Brötchen?")
    client.recommend("broken \ud800 text")  # JSON can carry it escaped; UTF-8 cannot
    assert "Brötchen".encode() in seen[0].content and b"broken \\ud800 text" in seen[1].content


def test_importing_the_client_stays_light():
    code = "import sys, oirl.client; print(sorted(m for m in ('numpy', 'pandas', 'fastapi', 'torch', 'sklearn', 'pydantic') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_client_reads_a_cold_server(tmp_path):
    """Issue 21, item 3: a server running an ``oirl init`` bundle has no reward model
    (``"model": null`` in /v1/model); the client reads it instead of a TypeError."""
    from oirl.recommender.cold import cold_start
    from oirl.recommender.recommender import Candidate as BundlePrompt
    from oirl.serve.app import create_app

    cold = cold_start([BundlePrompt(PROMPTS[i], i) for i in BUNDLE_IDS], default="CoT", embedder="hashing",
                      cache_dir=tmp_path / "emb")
    with serving(create_app(cold, api_key="")) as base, Client(base) as c:
        info = c.model()
        assert info.model_kind is None and info.default_prompt_id == "CoT" and info.raw["model"] is None
        assert not info.records_decisions and info.limits["queries"] == 256
        assert c.recommend(QUERIES[0]).prompt_id == "CoT"
