"""Learning between retrains: per-prompt offsets from the feedback in the decision store, and a
real service that moves a cold start to the best prompt so far and keeps it across a restart.
Real MAWPS questions and outcomes; the hashing embedder keeps the server fast to start."""

import json
import sqlite3

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from oirl._sqlite import migrate
from oirl.cli.main import cli
from oirl.decisions.online import OnlineOffsets
from oirl.decisions.store import ArmOutcomes, Decision, DecisionStore, m001_decisions


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def decision(prompt_id: str, score: float, version: str = "v1", propensity: float = 1.0) -> Decision:
    return Decision(query="What is 2 + 3?", candidate_ids=("A", "B"), candidate_prompts=("a", "b"), prompt_id=prompt_id,
                    prompt=prompt_id.lower(), score=score, policy="argmax", model_version=version, propensity=propensity)


def test_offsets_are_shrunk_mean_residuals_per_prompt_and_version_read_at_most_every_refresh(tmp_path):
    store = DecisionStore(tmp_path / "d.sqlite")
    served = [decision("A", 0.5), decision("A", 0.5), decision("B", 0.4), decision("B", 0.5, version="v0")]
    store.record(served)
    for d, reward in zip(served, (1.0, 0.0, 1.0, 1.0), strict=True):
        store.feedback(d.decision_id, reward)
    store.record([decision("A", 0.5)])  # no feedback yet: does not count
    clock = Clock()
    online = OnlineOffsets(store, strength=2.0, refresh_seconds=5.0, clock=clock)
    state = online.state("v1")
    assert state.counts == {"A": 2, "B": 1} and state.feedback == 3
    pooled = (1.0 - 1.0 + 1.0 - 0.4) / 3  # the mean residual of every prompt: .2
    assert state.pooled == pytest.approx(pooled)
    assert state.offsets["A"] == pytest.approx(pooled + (0.0 - 2 * pooled) / (2 + 2))
    assert state.offsets["B"] == pytest.approx(pooled + (0.6 - 1 * pooled) / (1 + 2))
    assert state.for_candidates(["B", "A", "C"]).tolist() == pytest.approx([state.offsets["B"], state.offsets["A"], pooled])
    assert state.record(["A", "C"]) == {"feedback": 3, "offsets": {"A": round(state.offsets["A"], 6), "C": round(pooled, 6)}}
    late = decision("B", 0.0)
    store.record([late])
    store.feedback(late.decision_id, 1.0)
    assert online.state("v1").counts["B"] == 1  # within the refresh interval: the cached state (another worker's feedback)
    clock.now = 5.0
    assert online.state("v1").counts["B"] == 2  # read afresh
    again = decision("B", 0.0)
    store.record([again])
    store.feedback(again.decision_id, 1.0)
    online.invalidate()  # what /v1/feedback does after recording in this process
    assert online.state("v1").counts["B"] == 3
    assert online.state("v0").counts == {"B": 1}  # each model version learns on its own


def test_residuals_are_weighted_by_the_inverse_propensity_so_the_policy_s_choices_do_not_bias_them(tmp_path):
    """The winner's curse: a policy serves B where the model over-predicts it (residual -0.5,
    propensity .9); exploration's draws of B elsewhere (propensity .1) show B as predicted.
    Weighted by 1 / propensity, each draw counts as nine served ones."""
    store = DecisionStore(tmp_path / "d.sqlite")
    served = [decision("B", 1.0, propensity=0.9) for _ in range(9)] + [decision("B", 0.5, propensity=0.1)]
    store.record(served)
    for d in served:
        store.feedback(d.decision_id, 0.5)
    state = OnlineOffsets(store, strength=1.0).state("v1")
    weights = [1 / 0.9] * 9 + [1 / 0.1]
    mean = sum(w * r for w, r in zip(weights, [-0.5] * 9 + [0.0], strict=True)) / sum(weights)
    assert mean == pytest.approx(-0.25) and state.pooled == pytest.approx(mean)  # raw: -0.45
    assert state.offsets["B"] == pytest.approx(mean)  # one prompt: shrunk toward itself


def test_a_store_written_before_online_learning_opens_and_counts(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    from oirl.decisions.store import _MIGRATIONS_TABLE, Migration

    migrate(db, _MIGRATIONS_TABLE, [Migration("m001_decisions", m001_decisions)], now=lambda: "2026-01-01T00:00:00.000000Z")
    db.close()
    store = DecisionStore(path)
    old = decision("A", 0.5)
    store.record([old])
    store.feedback(old.decision_id, 1.0)
    assert store.arm_outcomes("v1") == {"A": ArmOutcomes(count=1, weight=1.0, weight_squared=1.0, weighted_residual=0.5)}


@pytest.fixture(scope="module")
def cold_mawps(data_dir, tmp_path_factory):
    """A cold bundle of two real MAWPS prompts, the poorer one as its default, and 400
    training questions with both prompts' logged outcomes."""
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    logs = build_logs(data_dir, "mawps", TRAINING_PROMPTS)
    train = logs[logs["split"] == "train"]
    means = train.groupby("prompt_id")["reward"].mean().sort_values()
    worst, best = means.index[0], means.index[-1]
    rows = train[train["prompt_id"].isin([worst, best])]
    rows = rows[rows["query_id"].isin(pd.unique(rows["query_id"])[:400])]
    outcomes = {(q, p): r for q, p, r in zip(rows["query"], rows["prompt_id"], rows["reward"], strict=True)}
    work = tmp_path_factory.mktemp("online")
    prompts = work / "prompts.jsonl"
    table = rows.drop_duplicates("prompt_id")
    prompts.write_text("".join(json.dumps({"prompt_id": p, "prompt": t}) + "\n" for p, t in zip(table["prompt_id"], table["prompt"], strict=True)))
    result = CliRunner().invoke(cli, ["init", "--prompts", str(prompts), "--out", str(work / "cold"), "--default", worst,
                                      "--embedder", "hashing", "--cache-dir", str(work / "emb")])
    assert result.exit_code == 0, result.output
    return work, rows["query"].drop_duplicates().tolist(), outcomes, worst, best, float(means[best] - means[worst])


def served_share(client: httpx.Client, queries: list[str], prompt_id: str) -> float:
    answer = client.post("/v1/recommend", json={"queries": queries})
    assert answer.status_code == 200, answer.text
    return sum(r["prompt_id"] == prompt_id for r in answer.json()["results"]) / len(queries)


def test_a_cold_service_explores_by_default_and_moves_to_the_best_prompt_so_far(cold_mawps, monkeypatch):
    """`oirl serve --decisions` with no --explore: epsilon .1 around the default; after the
    real outcomes of 300 decisions the better prompt is served, and a restart keeps it."""
    from test_serve import start_server, stop

    work, queries, outcomes, worst, best, gap = cold_mawps
    assert gap > 0.05  # the two prompts differ enough for 300 outcomes to tell
    monkeypatch.setenv("OIRL_EMBEDDINGS_DIR", str(work / "emb"))
    decisions = work / "decisions.sqlite"
    process, base = start_server(work / "cold", extra_args=("--decisions", decisions))
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            described = client.get("/v1/model").json()["feedback"]
            assert described["explore"] == {"method": "epsilon", "epsilon": 0.1} and described["online"]["feedback"] == 0
            assert served_share(client, queries[300:400], worst) > 0.8  # the default, bounded exploration around it
            for start in range(0, 300, 50):
                answer = client.post("/v1/recommend", json={"queries": queries[start : start + 50]}).json()
                for query, result in zip(queries[start : start + 50], answer["results"], strict=True):
                    reward = outcomes[(query, result["prompt_id"])]
                    assert client.post("/v1/feedback", json={"decision_id": result["decision_id"], "reward": reward}).status_code == 200
            online = client.get("/v1/model").json()["feedback"]["online"]
            assert online["feedback"] == 300 and online["offsets"][best] > online["offsets"][worst]
            assert served_share(client, queries[300:400], best) > 0.8  # moved without a retrain
    finally:
        stop(process)
    with DecisionStore(decisions) as store:
        recorded = store.arm_outcomes(next(iter({v for (v,) in sqlite3.connect(decisions).execute("SELECT model_version FROM decisions")})))
    assert sum(o.count for o in recorded.values()) == 300
    last = sqlite3.connect(decisions).execute("SELECT online FROM decisions ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    assert json.loads(last)["feedback"] == 300  # each decision records the online state that served it
    process, base = start_server(work / "cold", extra_args=("--decisions", decisions))
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            assert served_share(client, queries[300:400], best) > 0.8  # the learned state survived the restart
    finally:
        stop(process)
    process, base = start_server(work / "cold", extra_args=("--decisions", decisions, "--no-online", "--explore", "none"))
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            assert served_share(client, queries[300:400], worst) == 1.0  # turned off: the bundle's own choice, no draws
            assert client.get("/v1/model").json()["feedback"]["online"] is None
    finally:
        stop(process)
