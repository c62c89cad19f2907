"""The decision log: record, feedback, export, and what holds under threads, processes and kill -9."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import queue as queue_module
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oirl.decisions.store import (
    DEFAULT_FEEDBACK_WINDOW,
    EXPORT_COLUMNS,
    ConflictingFeedbackError,
    Decision,
    DecisionStore,
    DecisionStoreError,
    DuplicateDecisionError,
    InvalidDecisionError,
    InvalidRewardError,
    UnknownDecisionError,
    new_decision_id,
)
from oirl.errors import OirlError

REPO = Path(__file__).resolve().parents[1]
CANDIDATE_IDS = ["CoT", "nan", "p-short"]
CANDIDATE_PROMPTS = ["Let's think step by step: ", "The answer is:", "Answer with one number."]


def make_decision(**changes) -> Decision:
    fields = dict(
        query="What is 7 times 8?", candidate_ids=CANDIDATE_IDS, candidate_prompts=CANDIDATE_PROMPTS,
        prompt_id="CoT", prompt="Let's think step by step: ", score=0.41, policy="argmax", model_version="v1",
    )
    return Decision(**{**fields, **changes})


@pytest.fixture
def store(tmp_path):
    with DecisionStore(tmp_path / "decisions.db") as s:
        yield s


def stored_rows(path) -> dict[str, tuple]:
    with sqlite3.connect(path) as db:
        return {row[0]: row[1:] for row in db.execute("SELECT decision_id, reward, feedback_at FROM decisions")}


# --------------------------------------------------------------------------- record and feedback


def test_record_then_feedback_once_again_and_differently(store):
    d = make_decision(propensity=0.25, explore={"kind": "epsilon-greedy", "epsilon": 0.1})
    store.record([d])
    assert store.stats() == {"decisions": 1, "with_feedback": 0}

    first = store.feedback(d.decision_id, 1)
    assert (first.recorded, first.duplicate, first.reward) == (True, False, 1.0)
    again = store.feedback(d.decision_id.upper(), 1.0)  # a retry; any spelling of the UUID
    assert (again.recorded, again.duplicate, again.feedback_at) == (True, True, first.feedback_at)
    with pytest.raises(ConflictingFeedbackError, match=rf"{d.decision_id}.*reward 1.0 was recorded.*\(0.0\)") as caught:
        store.feedback(d.decision_id, 0.0)
    assert (caught.value.recorded, caught.value.given) == (1.0, 0.0)
    assert stored_rows(store.path)[d.decision_id] == (1.0, first.feedback_at)
    assert store.stats() == {"decisions": 1, "with_feedback": 1}


def test_decision_fields_round_trip_through_the_table(store):
    d = make_decision(prompt_id="nan", prompt="The answer is:", propensity=0.5, explore={"epsilon": 0.2, "arms": [1, 2]},
                      created_at="2024-05-01T14:00:00+02:00")
    assert d.created_at == "2024-05-01T12:00:00.000000Z" and d.candidate_ids == tuple(CANDIDATE_IDS)
    assert uuid.UUID(new_decision_id()).version == 4
    store.record([d])
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM decisions").fetchone())
    assert row == {
        "decision_id": d.decision_id, "created_at": "2024-05-01T12:00:00.000000Z", "query": "What is 7 times 8?",
        "candidate_ids": '["CoT", "nan", "p-short"]',
        "candidate_prompts": '["Let\'s think step by step: ", "The answer is:", "Answer with one number."]',
        "prompt_id": "nan", "prompt": "The answer is:", "propensity": 0.5, "policy": "argmax",
        "explore": '{"arms": [1, 2], "epsilon": 0.2}', "model_version": "v1", "score": 0.41,
        "reward": None, "feedback_at": None, "online": None,
    }


@pytest.mark.parametrize("reward", [-0.1, 1.0000001, math.nan, math.inf, -math.inf, "0.5", None, True])
def test_rewards_outside_0_1_or_not_numbers_are_refused(store, reward):
    d = make_decision()
    store.record([d])
    with pytest.raises(InvalidRewardError, match="^reward: must be"):
        store.feedback(d.decision_id, reward)
    assert stored_rows(store.path)[d.decision_id] == (None, None)


@pytest.mark.parametrize("decision_id", [str(uuid.uuid4()), "not-a-uuid", 42])
def test_feedback_for_an_unknown_decision(store, decision_id):
    store.record([make_decision()])
    with pytest.raises(UnknownDecisionError, match="decision_id .*no such decision"):
        store.feedback(decision_id, 1.0)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"propensity": 0.0}, "propensity"),
        ({"propensity": 1.5}, "propensity"),
        ({"propensity": math.nan}, "propensity"),
        ({"score": math.inf}, "score"),
        ({"score": "high"}, "score"),
        ({"query": "  "}, "query"),
        ({"policy": None}, "policy"),
        ({"model_version": ""}, "model_version"),
        ({"candidate_ids": "CoT"}, "candidate_ids"),
        ({"candidate_ids": []}, "candidate_ids"),
        ({"candidate_prompts": CANDIDATE_PROMPTS[:2]}, "candidate_prompts"),
        ({"prompt_id": "APE"}, "prompt_id"),
        ({"prompt": "Answer with one number."}, "prompt"),
        ({"decision_id": "row-17"}, "decision_id"),
        ({"created_at": "2024-05-01 12:00:00"}, "created_at"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"explore": {"epsilon": math.nan}}, "explore"),
        ({"explore": {"rng": object()}}, "explore"),
    ],
)
def test_invalid_decisions_name_the_field(changes, field):
    with pytest.raises(InvalidDecisionError, match=f"^decision field '{field}': "):
        make_decision(**changes)


def test_a_batch_is_all_or_nothing(store):
    old, new = make_decision(), make_decision()
    store.record([old])
    with pytest.raises(DuplicateDecisionError, match=old.decision_id):
        store.record([new, old])
    with pytest.raises(DuplicateDecisionError, match=new.decision_id):
        store.record([new, new])
    assert set(stored_rows(store.path)) == {old.decision_id}
    store.record([])
    with pytest.raises(TypeError, match="list of Decision"):
        store.record(new)


# --------------------------------------------------------------------------- the file


def test_schema_pragmas_and_migrations(store):
    db = store._connection()
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone() == (10_000,)
    columns = [row[1] for row in db.execute("PRAGMA table_info(decisions)")]
    assert columns == ["decision_id", "created_at", "query", "candidate_ids", "candidate_prompts", "prompt_id", "prompt",
                       "propensity", "policy", "explore", "model_version", "score", "reward", "feedback_at", "online"]
    assert [row[0] for row in db.execute("SELECT name FROM _oirl_migrations")] == ["m001_decisions", "m002_online"]
    store.record([make_decision()])
    DecisionStore(store.path).close()  # reopening migrates nothing and keeps the rows
    assert store.stats()["decisions"] == 1
    with sqlite3.connect(store.path) as raw:
        raw.execute("INSERT INTO _oirl_migrations VALUES ('m099_from_the_future', '2099-01-01')")
    with pytest.raises(DecisionStoreError, match=r"decisions.db: written by a newer oirl .*m099_from_the_future"):
        DecisionStore(store.path)


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("query,prompt,reward\n" * 100)
    with pytest.raises(DecisionStoreError, match=r"notes.db: not an SQLite database"):
        DecisionStore(bad)
    with pytest.raises(DecisionStoreError, match=r"is a directory"):
        DecisionStore(tmp_path)
    store = DecisionStore(tmp_path / "sub" / "dir" / "d.db")  # parents are created
    store.close()
    with pytest.raises(DecisionStoreError, match="closed"):
        store.stats()


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_a_new_file_follows_the_umask(tmp_path, umask, mode):
    # SQLite on its own creates 0644 & ~umask: under umask 002 that would be 0644, not 0664.
    path = tmp_path / "decisions.db"
    previous = os.umask(umask)
    try:
        with DecisionStore(path) as s:
            s.record([make_decision()])
            for suffix in ("", "-wal", "-shm"):
                assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == mode, suffix
    finally:
        os.umask(previous)
    path.chmod(0o640)  # an existing file keeps its mode
    DecisionStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- export

NOW = datetime(2024, 5, 3, tzinfo=timezone.utc)  # every decision below is older than a day: all windows have closed


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_writes_one_row_per_decision_with_feedback(store, tmp_path, suffix):
    from oirl.data.logs import read_logs

    late = make_decision(created_at="2024-05-02T00:00:00Z", propensity=0.25)
    early = make_decision(created_at="2024-05-01T00:00:00Z")  # the same query text again
    other = make_decision(query="A shop sells 3 pens for $2.\nHow much do 12 pens cost?", prompt_id="p-short",
                          prompt="Answer with one number.", created_at="2024-05-01T12:00:00Z", model_version="v2",
                          candidate_ids=["p-short", "CoT"], candidate_prompts=["Answer with one number.", CANDIDATE_PROMPTS[0]])
    pending = make_decision(created_at="2024-05-01T06:00:00Z")
    store.record([late, early, other, pending])
    for d, reward in ((late, 0.0), (early, 1.0), (other, 0.5)):
        feedback_at(store, d, reward, d.created_at.replace("00.000000Z", "59.000000Z"))  # within the minute

    out = tmp_path / "out" / f"served{suffix}"
    summary = store.export(out, now=NOW)
    assert summary == {"rows": 3, "with_feedback": 3, "late_feedback": 0, "without_feedback": 1, "pending": 0,
                       "filled_with_missing_reward": 0, "dropped": 1, "feedback_window_seconds": 86_400, "missing_reward": None,
                       "file": str(out)}
    log = read_logs(out)
    order = [early, other, late]
    assert len(log) == 3
    assert log["decision_id"].tolist() == log["query_id"].tolist() == [d.decision_id for d in order]
    assert log["query"].tolist() == [d.query for d in order]
    assert log["reward"].tolist() == [1.0, 0.5, 0.0]
    assert [float(p) for p in log["propensity"]] == [1.0, 1.0, 0.25]
    assert log["model_version"].tolist() == ["v1", "v2", "v1"]
    assert log["created_at"].tolist() == [d.created_at for d in order]
    assert [json.loads(ids) for ids in log["candidate_ids"]] == [CANDIDATE_IDS, ["p-short", "CoT"], CANDIDATE_IDS]
    assert set(EXPORT_COLUMNS) <= set(log.columns)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def feedback_at(store, decision, reward, when):
    """Feedback recorded at ``when`` (the store stamps the clock; the test sets the stamp it would have had)."""
    store.feedback(decision.decision_id, reward)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE decisions SET feedback_at = ? WHERE decision_id = ?", (when, decision.decision_id))


def test_the_feedback_window_decides_what_is_exported(store, tmp_path):
    """A day's window, exported at noon on May 3rd: feedback within a day counts, later feedback does not."""
    from oirl.data.logs import read_logs

    in_time = make_decision(created_at="2024-05-01T00:00:00Z")  # feedback after 23 h
    late = make_decision(created_at="2024-05-01T01:00:00Z")  # feedback after 25 h: kept in the store, not exported
    never = make_decision(created_at="2024-05-01T02:00:00Z")  # no feedback, window long closed
    young_rewarded = make_decision(created_at="2024-05-03T11:00:00Z")  # an hour old, already rewarded
    young = make_decision(created_at="2024-05-03T11:30:00Z")  # half an hour old: its reward may still come
    store.record([in_time, late, never, young_rewarded, young])
    feedback_at(store, in_time, 1.0, "2024-05-01T23:00:00.000000Z")
    feedback_at(store, late, 0.0, "2024-05-02T02:00:00.000000Z")
    feedback_at(store, young_rewarded, 0.0, "2024-05-03T11:10:00.000000Z")
    noon = datetime(2024, 5, 3, 12, tzinfo=timezone.utc)

    dropped = store.export(tmp_path / "dropped.jsonl", now=noon)  # the default window: 24 h
    assert dropped["feedback_window_seconds"] == DEFAULT_FEEDBACK_WINDOW == 86_400
    assert {k: dropped[k] for k in ("rows", "with_feedback", "late_feedback", "without_feedback", "pending", "dropped")} == \
        {"rows": 2, "with_feedback": 2, "late_feedback": 1, "without_feedback": 1, "pending": 1, "dropped": 2}
    assert read_logs(tmp_path / "dropped.jsonl")["decision_id"].tolist() == [in_time.decision_id, young_rewarded.decision_id]

    filled = store.export(tmp_path / "filled.csv", now=noon, missing_reward=0.0)
    assert (filled["rows"], filled["filled_with_missing_reward"], filled["dropped"], filled["pending"]) == (4, 2, 0, 1)
    log = read_logs(tmp_path / "filled.csv").set_index("decision_id")
    assert log.loc[late.decision_id, "reward"] == 0.0 and log.loc[never.decision_id, "reward"] == 0.0
    assert log.loc[never.decision_id, "feedback_at"] == "" and log.loc[late.decision_id, "feedback_at"] == ""
    assert young.decision_id not in log.index
    assert stored_rows(store.path)[late.decision_id] == (0.0, "2024-05-02T02:00:00.000000Z")  # the late reward stays stored

    later = store.export(tmp_path / "later.jsonl", now=noon + timedelta(days=1), missing_reward=0.5)  # young's window has closed
    assert (later["rows"], later["pending"], later["without_feedback"]) == (5, 0, 2)


def test_export_refuses_when_nothing_is_exportable(store, tmp_path):
    store.record([make_decision()])  # created now: its window is open
    out = tmp_path / "served.jsonl"
    with pytest.raises(OirlError, match=r"decisions.db: nothing to export \(0 with feedback .* 1 younger than the window"):
        store.export(out)
    assert not out.exists() and not list(tmp_path.glob(".served*"))
    with pytest.raises(OirlError, match="unknown log format '.txt'"):
        store.export(tmp_path / "served.txt")
    with pytest.raises(OirlError, match="feedback window: must be a finite number of seconds > 0"):
        store.export(out, feedback_window=0)


def test_export_refuses_one_prompt_id_with_two_texts(store, tmp_path):
    a = make_decision()
    b = make_decision(candidate_prompts=["Think step by step.", *CANDIDATE_PROMPTS[1:]], prompt="Think step by step.",
                      model_version="v2")
    store.record([a, b])
    store.feedback(a.decision_id, 1.0)
    store.feedback(b.decision_id, 0.0)
    with pytest.raises(OirlError, match=r"prompt_id 'CoT' was served with two texts .*model v1.*model v2"):
        store.export(tmp_path / "served.csv")
    assert not (tmp_path / "served.csv").exists()


def exported_peak_bytes(tmp_path, n: int) -> int:
    """Python's peak allocation while exporting a store of ``n`` rewarded decisions, in chunks of 500."""
    import tracemalloc

    with DecisionStore(tmp_path / f"big-{n}.db") as big:
        decisions = [make_decision(query=f"question {i} " + "with some words " * 10) for i in range(n)]
        for start in range(0, n, 1_000):
            big.record(decisions[start : start + 1_000])
        with sqlite3.connect(big.path) as db:
            db.execute("UPDATE decisions SET reward = 1.0, feedback_at = created_at")
        tracemalloc.start()
        try:
            summary = big.export(tmp_path / f"big-{n}.parquet", chunk_rows=500)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert summary["rows"] == n


def test_export_streams_in_constant_memory(tmp_path):
    exported_peak_bytes(tmp_path, 10)  # pyarrow's first use allocates for itself
    small, large = exported_peak_bytes(tmp_path, 2_000), exported_peak_bytes(tmp_path, 8_000)
    assert large < 1.5 * small, (small, large)  # reading everything at once would take about 4 x


def test_a_failed_write_is_a_store_error(tmp_path):
    with DecisionStore(tmp_path / "locked.db", busy_timeout=0.05) as store:
        holder = sqlite3.connect(store.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
        try:
            with pytest.raises(DecisionStoreError, match="locked.db: the decision store failed .*locked"):
                store.record([make_decision()])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.record([make_decision()])  # and works again once the lock is gone
        assert store.stats()["decisions"] == 1


# --------------------------------------------------------------------------- concurrency

N_OWN, BATCH, N_CONTESTED = 40, 4, 24


def contested_ids() -> list[str]:
    return [str(uuid.UUID(int=i + 1, version=4)) for i in range(N_CONTESTED)]


def work(store: DecisionStore, worker: int, contest) -> dict:
    """One worker: its own decisions and feedback, then a race with every other worker
    to record and reward each contested id (all start on it together, at the
    ``contest`` barrier), each worker sending its own reward."""
    own = [make_decision(query=f"worker {worker} query {i % 3}") for i in range(N_OWN)]
    for start in range(0, N_OWN, BATCH):
        store.record(own[start : start + BATCH])
    feedback = {}
    for i, d in enumerate(own):
        feedback[d.decision_id] = store.feedback(d.decision_id, (i % 5) / 4).reward
    duplicate = store.feedback(own[0].decision_id, feedback[own[0].decision_id]).duplicate
    recorded, won, conflicts = [], [], []
    reward = worker / 16
    for cid in contested_ids():
        contest.wait()
        try:
            store.record([make_decision(decision_id=cid, created_at="2024-01-01T00:00:00Z")])
            recorded.append(cid)
        except DuplicateDecisionError:
            pass
        try:
            result = store.feedback(cid, reward)
            won.append(cid)
            assert not result.duplicate
        except ConflictingFeedbackError as exc:
            conflicts.append(cid)
            assert exc.given == reward != exc.recorded
    return {"worker": worker, "reward": reward, "feedback": feedback, "duplicate": duplicate,
            "recorded": recorded, "won": won, "conflicts": conflicts}


def work_in_process(path: str, worker: int, start, contest, results) -> None:
    start.wait()  # all at once: every process opens (and may create) the file itself
    with DecisionStore(path) as store:
        results.put(work(store, worker, contest))


def check_concurrent_outcome(path: Path, results: list[dict]) -> None:
    rows = stored_rows(path)
    own = {i: r for result in results for i, r in result["feedback"].items()}
    assert len(own) == len(results) * N_OWN
    assert set(rows) == set(own) | set(contested_ids())  # nothing lost, nothing extra (ids are the key)
    assert all(rows[i][0] == reward for i, reward in own.items())
    assert all(result["duplicate"] for result in results)
    for cid in contested_ids():
        assert sum(cid in r["recorded"] for r in results) == 1
        winners = [r for r in results if cid in r["won"]]
        assert len(winners) == 1, cid
        assert sum(cid in r["conflicts"] for r in results) == len(results) - 1
        assert rows[cid][0] == winners[0]["reward"]
    with DecisionStore(path) as store:
        assert store.stats() == {"decisions": len(rows), "with_feedback": len(rows)}


def test_eight_threads_share_one_store(store):
    results, errors = [None] * 8, []
    start, contest = threading.Barrier(8), threading.Barrier(8)

    def run(worker):
        try:
            start.wait()
            results[worker] = work(store, worker, contest)
        except BaseException as exc:  # surface it in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    check_concurrent_outcome(store.path, results)


def test_four_processes_share_one_file(tmp_path):
    path = tmp_path / "shared.db"  # created by whichever process gets there first
    spawn = multiprocessing.get_context("spawn")
    start, contest, queue = spawn.Barrier(4), spawn.Barrier(4), spawn.Queue()
    processes = [spawn.Process(target=work_in_process, args=(str(path), w, start, contest, queue)) for w in range(4)]
    for p in processes:
        p.start()
    results = []
    deadline = time.monotonic() + 60
    while len(results) < 4 and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=0.5))
        except queue_module.Empty:
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            assert not failed, f"a worker process failed (exit codes {failed}); see its traceback above"
    for p in processes:
        p.join(10)
    assert len(results) == 4 and [p.exitcode for p in processes] == [0] * 4
    check_concurrent_outcome(path, results)


# --------------------------------------------------------------------------- durability

CHILD = """
import sys
from oirl.decisions.store import Decision, DecisionStore
store = DecisionStore(sys.argv[1])
while True:
    batch = [Decision(query=f"q{i}", candidate_ids=["a", "b"], candidate_prompts=["A", "B"], prompt_id="b",
                      prompt="B", score=0.5, policy="argmax", model_version="v1") for i in range(3)]
    store.record(batch)
    print("R", *(d.decision_id for d in batch), flush=True)
    store.feedback(batch[0].decision_id, 1.0)
    print("F", batch[0].decision_id, flush=True)
"""


def test_acknowledged_decisions_survive_kill_9(tmp_path):
    path = tmp_path / "durable.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    recorded, rewarded = [], []
    for round_ in range(3):  # each round restarts on the file the last kill left behind
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        lines = []
        deadline = time.monotonic() + 15
        while len(lines) < 100 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(0.01 * round_)  # the child keeps writing; the kill lands wherever it is
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        complete = [line.split() for line in lines + rest.splitlines(keepends=True) if line.endswith("\n")]
        recorded += [i for kind, *ids in complete if kind == "R" for i in ids]
        rewarded += [ids[0] for kind, *ids in complete if kind == "F"]

        rows = stored_rows(path)  # read the file as the next server would, after the crash
        assert set(recorded) <= set(rows)
        assert all(rows[i][0] == 1.0 for i in rewarded)
        # whole batches only, and at most one committed but not yet acknowledged per kill
        assert len(rows) % 3 == 0 and len(rows) - len(recorded) <= 3 * (round_ + 1)
    assert len(recorded) >= 150
    with DecisionStore(path) as store:
        assert store.stats() == {"decisions": len(rows), "with_feedback": sum(r[0] is not None for r in rows.values())}
