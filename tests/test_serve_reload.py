"""Hot reload: SIGHUP and POST /v1/admin/reload swap in the bundle at the served directory.

In-process with small hashing-embedder bundles (what is swapped, what is refused, what an
in-flight request answers with), and against real `oirl serve` processes: one worker under
load from 16 client threads (MiniLM bundles), and two workers restarted by the supervisor."""

import asyncio
import json
import logging
import shutil
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner
from test_serve import start_server, stop
from test_serve_bounds import GatedEmbedder, run_app, until

from oirl._atomic import atomic_directory
from oirl.cli.main import cli
from oirl.recommender.bundle import load_bundle, save_bundle


def put_bundle(source, served):
    """Replace the served directory with ``source``'s files in one step (as a deploy would)."""
    with atomic_directory(served) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def hashing_bundles(gsm8k_slice, tmp_path_factory):
    """Three small bundles: two on 384-d hashing vectors (logistic and knn), one on 64-d."""
    from oirl.data.logs import training_rows
    from oirl.learn.train import train_recommender

    train = training_rows(gsm8k_slice, "split", "train", source="slice")
    rows = train[train["query_id"].isin(train["query_id"].drop_duplicates().head(120))]
    work = tmp_path_factory.mktemp("reload")
    made = {}
    for name, model, embedder in (("a", "logistic", "hashing:384"), ("b", "knn", "hashing:384"), ("small", "logistic", "hashing:64")):
        made[name] = save_bundle(train_recommender(rows, model=model, embedder=embedder, cache_dir=work / "emb"), work / name)
    return made


def version_of(directory) -> str:
    return load_bundle(directory).fingerprint


# --------------------------------------------------------------------------- in-process


def test_a_request_in_flight_finishes_on_the_old_bundle_and_later_ones_use_the_new(hashing_bundles, tmp_path):
    from oirl.serve.app import ServiceLimits, create_app

    served = tmp_path / "served"
    shutil.copytree(hashing_bundles["a"], served)
    old, new = version_of(hashing_bundles["a"]), version_of(hashing_bundles["b"])
    embedder = GatedEmbedder()
    app = create_app(load_bundle(served), api_key="k", embedder=embedder, model_dir=served, decisions=tmp_path / "d.sqlite",
                     limits=ServiceLimits(inline_call_ms=0.0))
    key = {"Authorization": "Bearer k"}

    async def scenario(client):
        batcher = app.state.slot.current.batcher
        embedder.gate.clear()
        in_flight = asyncio.create_task(client.post("/v1/recommend", json={"queries": ["asked before the reload"]}, headers=key))
        await until(lambda: batcher.call_seconds() is not None, "the request is in its model call")
        put_bundle(hashing_bundles["b"], served)
        without_key = await client.post("/v1/admin/reload")
        reload = await client.post("/v1/admin/reload", headers=key)
        embedder.gate.set()
        before = await in_flight
        after = await client.post("/v1/recommend", json={"queries": ["asked after the reload"]}, headers=key)
        again = await client.post("/v1/admin/reload", headers=key)
        model = await client.get("/v1/model", headers=key)
        schema = await client.get("/openapi.json", headers=key)
        return without_key, reload, before, after, again, model, schema, app.state.slot.current.batcher is batcher

    without_key, reload, before, after, again, model, schema, same_batcher = run_app(app, scenario)
    assert without_key.status_code == 401
    assert reload.status_code == 200 and reload.json() == {"status": "reloaded", "model_version": new, "previous_version": old}
    assert before.json()["model_version"] == old and after.json()["model_version"] == new
    assert again.json() == {"status": "unchanged", "model_version": new, "previous_version": new}
    assert model.json()["model_version"] == new and model.json()["model"]["kind"] == "knn"
    assert schema.json()["info"]["version"] == new
    assert same_batcher  # one embedder for both bundles: its batcher and vectors stay
    with sqlite3.connect(tmp_path / "d.sqlite") as db:
        recorded = dict(db.execute("SELECT query, model_version FROM decisions"))
    assert recorded == {"asked before the reload": old, "asked after the reload": new}


def test_a_bundle_with_another_embedder_gets_its_own_batcher(hashing_bundles, tmp_path):
    from oirl.serve.app import create_app

    served = tmp_path / "served"
    shutil.copytree(hashing_bundles["a"], served)
    app = create_app(load_bundle(served), api_key="", model_dir=served)

    async def scenario(client):
        first = app.state.slot.current.batcher
        await client.post("/v1/recommend", json={"queries": ["on 384 dimensions"]})
        put_bundle(hashing_bundles["small"], served)
        reload = await client.post("/v1/admin/reload")
        answer = await client.post("/v1/recommend", json={"queries": ["on 64 dimensions"]})
        model = (await client.get("/v1/model")).json()
        return reload, answer, model, first, app.state.slot.current.batcher

    reload, answer, model, first, second = run_app(app, scenario)
    assert reload.json()["status"] == "reloaded" and answer.status_code == 200
    assert model["embedder"] == "hashing:64" and answer.json()["model_version"] == version_of(hashing_bundles["small"])
    assert second is not first and first._task.done()  # the old batcher stopped once nothing used it


def test_a_request_on_a_bundle_two_reloads_back_finishes_on_it(hashing_bundles, tmp_path):
    """A -> B (same embedder: one batcher) -> C (another embedder) while a request on A is in its
    model call: B's retirement must not stop the batcher A's request still waits on."""
    from oirl.serve.app import ServiceLimits, create_app

    served = tmp_path / "served"
    shutil.copytree(hashing_bundles["a"], served)
    versions = {name: version_of(hashing_bundles[name]) for name in ("a", "b", "small")}
    embedder = GatedEmbedder()
    app = create_app(load_bundle(served), api_key="", embedder=embedder, model_dir=served, limits=ServiceLimits(inline_call_ms=0.0))

    async def scenario(client):
        shared = app.state.slot.current.batcher
        embedder.gate.clear()
        in_flight = asyncio.create_task(client.post("/v1/recommend", json={"queries": ["asked of bundle A"]}))
        await until(lambda: shared.call_seconds() is not None, "the request on A is in its model call")
        put_bundle(hashing_bundles["b"], served)
        to_b = await client.post("/v1/admin/reload")
        app.state.reloader.embedder = None  # the next bundle comes with its own embedder (hashing:64): a batcher of its own
        put_bundle(hashing_bundles["small"], served)
        to_c = await client.post("/v1/admin/reload")
        running_after_c = not shared._task.done()
        embedder.gate.set()
        on_a = await in_flight
        on_c = await client.post("/v1/recommend", json={"queries": ["asked of bundle C"]})
        return to_b, to_c, running_after_c, on_a, on_c, shared._task.done()

    to_b, to_c, running_after_c, on_a, on_c, shared_stopped = run_app(app, scenario)
    assert to_b.json()["status"] == "reloaded" and to_c.json()["status"] == "reloaded"
    assert on_a.status_code == 200, on_a.text
    assert running_after_c  # A's request still used it
    assert on_a.json()["model_version"] == versions["a"] and on_c.json()["model_version"] == versions["small"]
    assert shared_stopped  # and it stopped once A's request was done


def test_a_missing_or_corrupt_bundle_is_refused_and_the_old_one_keeps_serving(hashing_bundles, tmp_path, caplog):
    from oirl.serve.app import create_app

    served = tmp_path / "served"
    shutil.copytree(hashing_bundles["a"], served)
    old = version_of(served)
    app = create_app(load_bundle(served), api_key="", model_dir=served)

    def break_model_file():
        model_file = next(p for p in served.iterdir() if p.name.startswith("model"))
        model_file.write_bytes(model_file.read_bytes()[:-10])

    def drop_prompts():
        meta = json.loads((served / "bundle.json").read_text())
        del meta["prompts"]
        (served / "bundle.json").write_text(json.dumps(meta))

    async def scenario(client):
        answers = []
        for damage in (break_model_file, drop_prompts, lambda: shutil.rmtree(served)):
            put_bundle(hashing_bundles["b"], served) if served.exists() else None
            damage()
            answers.append(await client.post("/v1/admin/reload"))
            answers.append(await client.post("/v1/recommend", json={"queries": ["still answered"]}))
        return answers

    with caplog.at_level(logging.INFO, logger="oirl.serve"):
        answers = run_app(app, scenario)
    refusals, recommends = answers[0::2], answers[1::2]
    assert [r.status_code for r in refusals] == [409, 409, 409]
    details = [r.json()["detail"] for r in refusals]
    assert "does not match the hash" in details[0] and "bundle.json: prompts: Field required" in details[1]
    assert "no such model bundle directory" in details[2]
    assert all(d.startswith("reload refused: ") and d.endswith(f"still serving {old}") for d in details)
    assert not any(str(tmp_path) in d or "Traceback" in d for d in details)  # no server path, no internals
    assert all(r.status_code == 200 and r.json()["model_version"] == old for r in recommends)
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(logged) == 3 and all("\n" not in line for line in logged)  # one line each


# --------------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def second_minilm_bundle(minilm_bundle, gsm8k_slice):
    """Another LightGBM bundle on the same MiniLM vectors (the first one's cache): a new version."""
    from oirl.data.logs import training_rows
    from oirl.learn.train import train_recommender

    train = training_rows(gsm8k_slice, "split", "train", source="slice")
    keep = train["query_id"].drop_duplicates().head(300)
    rec = train_recommender(train[train["query_id"].isin(keep)], model="lightgbm", model_params={"n_estimators": 40},
                            cache_dir=minilm_bundle.parent / "emb")
    return save_bundle(rec, minilm_bundle.parent / "model-b")


def test_reload_under_load_from_16_clients(minilm_bundle, second_minilm_bundle, tmp_path):
    """POST /v1/admin/reload (A to B), then SIGHUP (B to A), while 16 threads keep asking."""
    served, decisions = tmp_path / "served", tmp_path / "decisions.sqlite"
    shutil.copytree(minilm_bundle, served)
    a, b = version_of(minilm_bundle), version_of(second_minilm_bundle)
    process, base = start_server(served, extra_args=("--decisions", decisions))
    answers, failures, stop_asking = [], [], threading.Event()
    lock = threading.Lock()

    def ask(client_number: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            n = 0
            while not stop_asking.is_set():
                n += 1
                sent = time.monotonic()
                try:
                    response = client.post("/v1/recommend", json={"queries": [f"Client {client_number} asks question {n}: what is {n} + 7?"]})
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                received = time.monotonic()
                with lock:
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        body = response.json()
                        answers.append((sent, received, body["model_version"], body["results"][0]["decision_id"]))

    def wait_for_answers(count: int) -> None:
        deadline = time.monotonic() + 120
        while len(answers) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        with httpx.Client(base_url=base, timeout=60) as admin, ThreadPoolExecutor(16) as pool:
            for i in range(16):
                pool.submit(ask, i)
            wait_for_answers(50)
            put_bundle(second_minilm_bundle, served)
            started = time.monotonic()
            reload = admin.post("/v1/admin/reload")
            first_switch = (started, time.monotonic())
            wait_for_answers(len(answers) + 50)
            put_bundle(minilm_bundle, served)
            started = time.monotonic()
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while admin.get("/v1/model").json()["model_version"] != a and time.monotonic() < deadline:
                time.sleep(0.02)
            second_switch = (started, time.monotonic())
            wait_for_answers(len(answers) + 50)
            stop_asking.set()
        model = httpx.get(f"{base}/v1/model").json()
    finally:
        stop_asking.set()
        stop(process)
    output = process.stdout.read()

    assert reload.status_code == 200 and reload.json() == {"status": "reloaded", "model_version": b, "previous_version": a}
    assert failures == [] and len(answers) >= 150
    assert model["model_version"] == a
    # each answer comes from the bundle served while it was asked for: A before the first reload began,
    # B from its end to the SIGHUP, A after the second switch; either one while a switch was under way
    for sent, received, version, _ in answers:
        if received < first_switch[0] or sent > second_switch[1]:
            assert version == a
        elif first_switch[1] < sent and received < second_switch[0]:
            assert version == b
        else:
            assert version in (a, b)
    assert {version for _, _, version, _ in answers} == {a, b}
    with sqlite3.connect(decisions) as db:
        recorded = dict(db.execute("SELECT decision_id, model_version FROM decisions"))
    assert {decision: recorded[decision] for *_, decision in answers} == {decision: version for _, _, version, decision in answers}
    assert "reload (POST /v1/admin/reload): now serving bundle" in output and "reload (SIGHUP): now serving bundle" in output


def test_sighup_to_the_supervisor_replaces_every_worker(hashing_bundles, tmp_path):
    """--workers 2: SIGHUP to the parent makes uvicorn replace each worker by one that loads the
    bundle at the directory; POST /v1/admin/reload checks the bundle and asks for the same."""
    served = tmp_path / "served"
    shutil.copytree(hashing_bundles["a"], served)
    a, b = version_of(hashing_bundles["a"]), version_of(hashing_bundles["b"])
    process, base = start_server(served, extra_args=("--workers", "2"))

    def versions_seen(count: int = 40) -> set[str]:
        seen = set()
        for _ in range(count):  # a new connection each time: the kernel spreads them over the workers
            try:
                seen.add(httpx.get(f"{base}/v1/model", headers={"Connection": "close"}).json()["model_version"])
            except httpx.TransportError:  # a worker the supervisor is replacing may drop a fresh connection (README)
                continue
        return seen

    def wait_until_only(version: str) -> set[str]:
        deadline = time.monotonic() + 600  # a hang guard: each restart starts two processes
        while (seen := versions_seen()) != {version} and time.monotonic() < deadline:
            time.sleep(0.2)
        return seen

    try:
        assert versions_seen() == {a}
        put_bundle(hashing_bundles["b"], served)
        process.send_signal(signal.SIGHUP)
        after_hangup = wait_until_only(b)
        put_bundle(hashing_bundles["a"], served)
        reload = httpx.post(f"{base}/v1/admin/reload")
        after_admin = wait_until_only(a)
        shutil.rmtree(served)  # a broken deploy: the restart is refused and the workers keep serving
        refused = httpx.post(f"{base}/v1/admin/reload")
        still = versions_seen(10)
    finally:
        stop(process)
    output = process.stdout.read()
    assert after_hangup == {b} and after_admin == {a} and still == {a}
    assert reload.status_code == 202 and reload.json() == {"status": "restarting", "model_version": a, "previous_version": b}
    assert refused.status_code == 409 and "no such model bundle directory" in refused.json()["detail"]
    assert output.count("Received SIGHUP, restarting processes") == 2


def test_one_sighup_to_the_process_group_restarts_the_workers_once(hashing_bundles, tmp_path):
    """--workers 2 and `kill -HUP -PGID` (a terminal hanging up, a service manager signalling the
    group): the supervisor restarts the workers once; the workers, which get the signal too,
    leave the restart to it (forwarding it would queue one more restart per worker)."""
    import os

    served = tmp_path / "served"
    shutil.copytree(hashing_bundles["a"], served)
    b = version_of(hashing_bundles["b"])
    process, base = start_server(served, extra_args=("--workers", "2"), new_session=True)

    def versions_seen() -> set[str]:
        seen = set()
        for _ in range(20):  # a new connection each time: the kernel spreads them over the workers
            try:
                seen.add(httpx.get(f"{base}/v1/model", headers={"Connection": "close"}).json()["model_version"])
            except httpx.TransportError:  # a worker being replaced may drop a fresh connection (README)
                continue
        return seen

    try:
        put_bundle(hashing_bundles["b"], served)
        os.killpg(process.pid, signal.SIGHUP)  # its own session: the group is the supervisor and its workers
        deadline = time.monotonic() + 120  # a hang guard
        while (seen := versions_seen()) != {b} and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a SIGHUP forwarded by a worker would be in the supervisor's queue by now, before the SIGTERM below
    finally:
        stop(process)
    output = process.stdout.read()
    assert seen == {b}
    assert output.count("Received SIGHUP, restarting processes") == 1, output
    assert "process died unexpectedly" not in output, output  # the supervisor's helper process survives the SIGHUP


def test_serving_on_a_port_in_use_is_one_line_error(minilm_bundle):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(minilm_bundle), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: port {port} is in use (stop what uses it or choose another --port)\n"


def test_bench_serve_reload_runs_at_toy_size(data_dir, hashing_bundles, tmp_path):
    from experiment_scripts import load

    out = tmp_path / "reload.json"
    result = load("bench_serve_reload").main(["--data-dir", str(data_dir), "--bundles", str(hashing_bundles["a"]), str(hashing_bundles["b"]),
                                              "--clients", "4", "--reloads", "2", "--interval", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["failed_requests"] == 0 and result["mismatched_versions"] == 0 and result["decisions_with_another_version"] == 0
    assert result["requests"] > 0 and result["final_version"] == result["expected_final_version"] == version_of(hashing_bundles["a"])
    assert [r["by"] for r in result["reload_seconds"]] == ["POST", "SIGHUP"] and len(result["answers_by_version"]) == 2


def test_the_version_windows_of_the_reload_bench():
    from experiment_scripts import load

    allowed = load("bench_serve_reload").allowed_versions
    switches = [(10.0, 11.0, "B"), (20.0, 21.0, "A")]
    assert allowed(1, 2, "A", switches) == {"A"}
    assert allowed(9, 10.5, "A", switches) == {"A", "B"}  # under way during the first switch
    assert allowed(12, 13, "A", switches) == {"B"}
    assert allowed(12, 25, "A", switches) == {"A", "B"}
    assert allowed(22, 23, "A", switches) == {"A"}
    assert allowed(1, 2, "A", []) == {"A"}
