"""Hot reload under load: clients keep asking while the served bundle is swapped several times.

    python experiments/bench_serve_reload.py --data-dir ../shared/data [--bundles A B] [--reloads 6] [--clients 16]

Starts ``oirl serve SERVED --decisions DB`` on a loopback port, SERVED holding bundle A.
``--clients`` threads send /v1/recommend back to back, each a GSM8K/SVAMP question never
sent before. Every ``--interval`` seconds the run puts the other bundle at SERVED (one
atomic directory swap, as a deploy would) and reloads, alternately by ``POST
/v1/admin/reload`` and by ``SIGHUP``. It counts requests, failed requests (no answer, or
any status but 200), answers whose ``model_version`` is not that of a bundle served
while the request was under way (during a swap either bundle counts), and decisions the
store recorded with another version than the answer gave; and how long each reload took
(the POST's answer; for SIGHUP, until ``/v1/model`` shows the new version). Writes
experiments/results/bench_serve_reload.json. Without --bundles it trains two small
LightGBM bundles (100 and 40 trees on 300 GSM8K train queries, MiniLM vectors).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_fuzz import start_server, stop_server, train_small_bundle  # noqa: E402


def second_bundle(data_dir: Path, work: Path) -> Path:
    """Bundle B: the same rows and vectors as :func:`train_small_bundle`, 40 trees instead of 100."""
    from oirl.data.logs import read_logs, training_rows
    from oirl.learn.train import train_recommender
    from oirl.recommender.bundle import save_bundle

    train = training_rows(read_logs(work / "logs" / "gsm8k.parquet"), "split", "train", source="gsm8k")
    keep = train["query_id"].drop_duplicates().head(300)
    rec = train_recommender(train[train["query_id"].isin(keep)], model="lightgbm", model_params={"n_estimators": 40}, cache_dir=work / "emb")
    return save_bundle(rec, work / "model-b")


def put_bundle(source: Path, served: Path) -> None:
    from oirl._atomic import atomic_directory

    with atomic_directory(served) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def allowed_versions(sent: float, received: float, first: str, switches: list[tuple[float, float, str]]) -> set[str]:
    """The versions served at some moment of [sent, received]: ``first``, then each switch's
    (start, end, new version); during a switch both the old and the new one count."""
    allowed, current, stable_from = set(), first, float("-inf")
    for start, end, new in switches:
        if sent < start and received >= stable_from:  # the stable stretch before this switch
            allowed.add(current)
        if sent <= end and received >= start:  # the switch itself
            allowed |= {current, new}
        current, stable_from = new, end
    if received >= stable_from:
        allowed.add(current)
    return allowed


def run(served: Path, bundles: list[Path], questions: list[str], *, clients: int, reloads: int, interval: float, work: Path) -> dict:
    import httpx

    from oirl.recommender.bundle import load_bundle

    versions = [load_bundle(b).fingerprint for b in bundles]
    decisions = work / "decisions.sqlite"
    todo = iter(questions)
    lock = threading.Lock()
    answers: list[tuple[float, float, str, str]] = []
    statuses: collections.Counter = collections.Counter()
    stop_asking = threading.Event()
    with open(work / "server.log", "wb") as log:
        process, base = start_server(served, log, extra_args=("--decisions", decisions))
        try:
            def ask() -> None:
                with httpx.Client(base_url=base, timeout=120) as client:
                    while not stop_asking.is_set():
                        with lock:
                            question = next(todo, None)
                        if question is None:
                            return
                        sent = time.monotonic()
                        try:
                            response = client.post("/v1/recommend", json={"queries": [question]})
                        except httpx.HTTPError as exc:
                            with lock:
                                statuses[type(exc).__name__] += 1
                            continue
                        received = time.monotonic()
                        with lock:
                            statuses[str(response.status_code)] += 1
                            if response.status_code == 200:
                                body = response.json()
                                answers.append((sent, received, body["model_version"], body["results"][0]["decision_id"]))

            threads = [threading.Thread(target=ask) for _ in range(clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            switches: list[tuple[float, float, str]] = []
            reload_seconds: list[dict] = []
            with httpx.Client(base_url=base, timeout=120) as admin:
                for i in range(reloads):
                    time.sleep(interval)
                    new = (i + 1) % len(bundles)
                    put_bundle(bundles[new], served)
                    how = "POST" if i % 2 == 0 else "SIGHUP"
                    begin = time.monotonic()
                    if how == "POST":
                        admin.post("/v1/admin/reload").raise_for_status()
                    else:
                        process.send_signal(signal.SIGHUP)
                        while admin.get("/v1/model").json()["model_version"] != versions[new]:
                            time.sleep(0.01)
                    end = time.monotonic()
                    switches.append((begin, end, versions[new]))
                    reload_seconds.append({"by": how, "seconds": round(end - begin, 3)})
                time.sleep(interval)
                final_version = admin.get("/v1/model").json()["model_version"]
            stop_asking.set()
            for thread in threads:
                thread.join()
            seconds = time.monotonic() - started
        finally:
            stop_asking.set()
            stop_server(process)
    mismatched = [a for a in answers if a[2] not in allowed_versions(a[0], a[1], versions[0], switches)]
    with sqlite3.connect(decisions) as db:
        recorded = dict(db.execute("SELECT decision_id, model_version FROM decisions"))
    other_version = [d for *_, version, d in answers if recorded.get(d) != version]
    failed = sum(n for status, n in statuses.items() if status != "200")
    return {
        "clients": clients, "reloads": reloads, "interval_seconds": interval, "seconds": round(seconds, 1),
        "requests": sum(statuses.values()), "failed_requests": failed, "statuses": dict(statuses),
        "answers_by_version": dict(collections.Counter(version for _, _, version, _ in answers)),
        "mismatched_versions": len(mismatched), "decisions_recorded": len(recorded),
        "decisions_with_another_version": len(other_version),
        "final_version": final_version, "expected_final_version": switches[-1][2] if switches else versions[0],
        "reload_seconds": reload_seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--bundles", type=Path, nargs=2, metavar=("A", "B"), help="Two bundles to alternate (default: train two).")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--reloads", type=int, default=6)
    parser.add_argument("--interval", type=float, default=3.0, help="Seconds of load before each reload (and after the last).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_serve_reload.json"))
    args = parser.parse_args(argv)

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.prompt_oirl import load_questions

    questions = list(dict.fromkeys(load_questions(args.data_dir, "gsm8k") + load_questions(args.data_dir, "svamp")))
    random.Random(args.seed).shuffle(questions)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundles = list(args.bundles) if args.bundles else [train_small_bundle(args.data_dir, work), None]
        if bundles[1] is None:
            bundles[1] = second_bundle(args.data_dir, work)
        served = work / "served"
        shutil.copytree(bundles[0], served)
        result = run(served, bundles, questions, clients=args.clients, reloads=args.reloads, interval=args.interval, work=work)
    print(json.dumps(result, indent=2))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
