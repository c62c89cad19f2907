"""The feedback loop through a real server: exploration with exact propensities, decisions
recorded before the answer, outcomes at /v1/feedback, and the export of both as a partial log."""

import json
import math
import uuid

import httpx
import pytest
from click.testing import CliRunner
from test_serve import start_server, stop

from oirl.cli.main import cli
from oirl.data.logs import read_logs

QUERIES = ["A shop sells 3 pens for $2. How much do 12 pens cost?", "Tom has 5 apples and eats 2. How many are left?"]


@pytest.fixture(scope="module")
def logged(minilm_bundle, tmp_path_factory):
    """A server recording decisions, exploring epsilon-greedy by default, behind a key."""
    decisions = tmp_path_factory.mktemp("decisions") / "decisions.sqlite"
    process, base = start_server(minilm_bundle, api_key="k3y", extra_args=("--decisions", decisions, "--explore", "epsilon:0.5"))
    with httpx.Client(base_url=base, timeout=60, headers={"Authorization": "Bearer k3y"}) as client:
        yield client, decisions
    stop(process)


def test_epsilon_greedy_serves_around_the_policy_pick_with_its_exact_propensity(logged):
    client, _ = logged
    plain = client.post("/v1/recommend", json={"queries": QUERIES, "policy": "argmax", "top_k": 6,
                                               "explore": {"method": "epsilon", "epsilon": 0}}).json()
    assert all(r["propensity"] == 1.0 for r in plain["results"])
    picks = [r["prompt_id"] for r in plain["results"]]
    seen = set()
    for _ in range(15):
        body = client.post("/v1/recommend", json={"queries": QUERIES, "policy": "argmax"}).json()  # the server default: epsilon .5
        for result, pick in zip(body["results"], picks, strict=True):
            uuid.UUID(result["decision_id"])
            expected = 1 - 0.5 + 0.5 / 6 if result["prompt_id"] == pick else 0.5 / 6
            assert result["propensity"] == pytest.approx(expected)
            seen.add(result["prompt_id"] == pick)
    assert seen == {True, False}  # it explored, and it exploited


def test_softmax_propensity_is_the_drawn_prompts_probability(logged):
    client, _ = logged
    body = client.post("/v1/recommend", json={"queries": QUERIES, "top_k": 6, "explore": {"method": "softmax", "temperature": 0.05}}).json()
    for result in body["results"]:
        weights = {r["prompt_id"]: math.exp(r["score"] / 0.05) for r in result["ranking"]}
        assert result["propensity"] == pytest.approx(weights[result["prompt_id"]] / sum(weights.values()), rel=1e-9)
        assert result["score"] == next(r["score"] for r in result["ranking"] if r["prompt_id"] == result["prompt_id"])


def test_feedback_is_recorded_once_and_conflicts_are_refused(logged):
    client, _ = logged
    [result] = client.post("/v1/recommend", json={"queries": [QUERIES[0]]}).json()["results"]
    decision = result["decision_id"]
    first = client.post("/v1/feedback", json={"decision_id": decision, "reward": 1.0})
    assert first.status_code == 200 and first.json() == {"recorded": True, "decision_id": decision, "reward": 1.0, "duplicate": False}
    again = client.post("/v1/feedback", json={"decision_id": decision, "reward": 1.0})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert client.post("/v1/feedback", json={"decision_id": decision, "reward": 0.0}).status_code == 409
    assert client.post("/v1/feedback", json={"decision_id": str(uuid.uuid4()), "reward": 1.0}).status_code == 404
    for bad in ({"decision_id": decision, "reward": 1.5}, {"decision_id": decision}, {"decision_id": "", "reward": 1.0}):
        assert client.post("/v1/feedback", json=bad).status_code == 422
    malformed = client.post("/v1/feedback", json={"decision_id": "not-a-uuid", "reward": 1.0})  # an id no decision has: 404
    assert malformed.status_code == 404 and malformed.json() == {"detail": "unknown decision_id 'not-a-uuid'"}
    assert httpx.post(f"{client.base_url}/v1/feedback", json={"decision_id": decision, "reward": 1.0}).status_code == 401


def test_recorded_decisions_export_with_the_propensities_served(logged, tmp_path):
    client, decisions = logged
    served = {}
    for i in range(4):
        for result in client.post("/v1/recommend", json={"queries": QUERIES}).json()["results"]:
            served[result["decision_id"]] = result
            assert client.post("/v1/feedback", json={"decision_id": result["decision_id"], "reward": float(i % 2)}).status_code == 200
    result = CliRunner().invoke(cli, ["export-decisions", str(decisions), "--out", str(tmp_path / "feedback.parquet")])
    assert result.exit_code == 0, result.output
    log = read_logs(tmp_path / "feedback.parquet").set_index("decision_id")
    for decision_id, answer in served.items():
        row = log.loc[decision_id]
        assert row["propensity"] == pytest.approx(answer["propensity"]) and row["prompt_id"] == answer["prompt_id"]
        assert row["query_id"] == decision_id
    model = client.get("/v1/model").json()
    online = model["feedback"].pop("online")
    assert model["feedback"] == {"decisions": "decisions.sqlite", "explore": {"method": "epsilon", "epsilon": 0.5}}
    assert online["feedback"] == sum(online["counts"].values()) >= len(served)  # learned from every outcome so far
    assert str(decisions.parent) not in json.dumps(model)  # no server path


@pytest.fixture(scope="module")
def server(minilm_bundle):
    process, base = start_server(minilm_bundle)
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client
    stop(process)


def test_without_decisions_nothing_is_recorded(server):
    [result] = server.post("/v1/recommend", json={"queries": [QUERIES[0]]}).json()["results"]
    assert result["decision_id"] is None and result["propensity"] is None
    explored = server.post("/v1/recommend", json={"queries": [QUERIES[0]], "explore": {"method": "epsilon", "epsilon": 1.0}}).json()
    assert explored["results"][0]["propensity"] == pytest.approx(1 / 6)
    assert explored["results"][0]["decision_id"] is None  # nothing recorded: no id that feedback could not take
    response = server.post("/v1/feedback", json={"decision_id": str(uuid.uuid4()), "reward": 1.0})
    assert response.status_code == 404 and "records no decisions" in response.json()["detail"]


def test_bad_serve_settings_are_one_line_errors(minilm_bundle, tmp_path):
    (tmp_path / "not.sqlite").write_text("this is not a database")
    for args, message in ((["--explore", "greedy:1"], "unknown exploration method"),
                          (["--decisions", tmp_path / "not.sqlite"], "not an SQLite database")):
        result = CliRunner().invoke(cli, ["serve", str(minilm_bundle), *map(str, args)])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
