"""The feedback loop under load, with a crash: nothing acknowledged may be lost.

    python experiments/bench_feedback_loop.py --data-dir ../shared/data

Starts ``oirl serve BUNDLE --decisions DB --explore epsilon:0.2`` on a loopback port;
16 clients make 2,000 recommend calls in all (distinct GSM8K questions, exploring), each
followed by the feedback of its decision. Midway the server is killed with SIGKILL and
started again on the same port and database; clients retry what was not answered.
Then ``oirl export-decisions`` writes the partial log and the run checks that every
acknowledged feedback is in it with its reward, that no decision appears twice, and
that every recorded propensity equals the one returned to the client. Writes
``experiments/results/bench_feedback_loop.json``. Loopback only, bounded in calls and time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_fuzz import free_port  # noqa: E402

from oirl.learn.train import train_recommender


def start(bundle: Path, port: int, decisions: Path, explore: str) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OIRL_API_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "oirl.cli", "serve", str(bundle), "--port", str(port), "--decisions", str(decisions),
                                "--explore", explore], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited at start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start in 120 s")


def default_bundle(data_dir: Path, work: Path, cache_dir: Path) -> Path:
    """A neighbour-model bundle on 500 GSM8K training questions (real MiniLM vectors)."""
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    logs = build_logs(data_dir, "gsm8k", TRAINING_PROMPTS)
    train = logs[logs["query_id"].isin(logs.loc[logs["split"] == "train", "query_id"].unique()[:500])]
    from oirl.recommender.bundle import save_bundle

    return save_bundle(train_recommender(train, model="knn", cache_dir=cache_dir), work / "model")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--bundle", type=Path, help="Bundle to serve (default: a knn bundle on 500 GSM8K questions).")
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--explore", default="epsilon:0.2")
    parser.add_argument("--kill-after", type=float, default=0.5, help="Kill the server after this share of the calls.")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_feedback_loop.json"))
    args = parser.parse_args(argv)

    import httpx

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.prompt_oirl import load_questions
    from oirl.data.logs import read_logs
    from oirl.decisions.store import DecisionStore

    questions = load_questions(args.data_dir, "gsm8k")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or default_bundle(args.data_dir, work, args.cache_dir)
        decisions, port = work / "decisions.sqlite", free_port()
        base = f"http://127.0.0.1:{port}"
        server = {"process": start(bundle, port, decisions, args.explore)}
        lock = threading.Lock()
        answered: dict[str, dict] = {}  # decision id -> the result the client got
        acknowledged: dict[str, float] = {}  # decision id -> reward acknowledged with a 200
        counts = {"recommend retries": 0, "feedback retries": 0, "errors": 0, "done": 0}
        restart = {"done": False, "seconds": None}
        kill_at = int(args.calls * args.kill_after)

        def with_retries(client, path, body, what):
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    response = client.post(path, json=body)
                except httpx.HTTPError:
                    with lock:
                        counts[f"{what} retries"] += 1
                    time.sleep(0.2)
                    continue
                if response.status_code == 503:
                    time.sleep(float(response.headers.get("Retry-After", 1)))
                    continue
                return response
            raise RuntimeError(f"{path}: no answer in 180 s")

        def crash_and_restart():
            started = time.perf_counter()
            server["process"].send_signal(signal.SIGKILL)
            server["process"].wait()
            server["process"] = start(bundle, port, decisions, args.explore)
            restart["seconds"] = round(time.perf_counter() - started, 1)

        def one(i: int, client) -> None:
            response = with_retries(client, "/v1/recommend", {"queries": [f"{questions[i % len(questions)]} (call {i})"]}, "recommend")
            if response.status_code != 200:
                with lock:
                    counts["errors"] += 1
                return
            [result] = response.json()["results"]
            reward = float(i % 2)
            with lock:
                answered[result["decision_id"]] = result
            feedback = with_retries(client, "/v1/feedback", {"decision_id": result["decision_id"], "reward": reward}, "feedback")
            with lock:
                if feedback.status_code == 200:
                    acknowledged[result["decision_id"]] = reward
                else:
                    counts["errors"] += 1
                counts["done"] += 1
                crash = counts["done"] == kill_at and not restart["done"]
                if crash:
                    restart["done"] = True
            if crash:
                crash_and_restart()

        started = time.perf_counter()
        clients = [httpx.Client(base_url=base, timeout=60) for _ in range(args.clients)]
        try:
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda i: one(i, clients[i % args.clients]), range(args.calls)))
        finally:
            for client in clients:
                client.close()
            server["process"].terminate()
            server["process"].wait(timeout=30)
        seconds = time.perf_counter() - started

        export = work / "feedback.parquet"
        subprocess.run([sys.executable, "-m", "oirl.cli", "export-decisions", str(decisions), "--out", str(export)], check=True,
                       capture_output=True)
        log = read_logs(export)
        with DecisionStore(decisions) as store:
            stats = store.stats()
        by_id = log.set_index("decision_id")
        lost = [d for d in acknowledged if d not in by_id.index or by_id.loc[d, "reward"] != acknowledged[d]]
        wrong_propensity = [d for d, r in answered.items() if d in by_id.index and abs(by_id.loc[d, "propensity"] - r["propensity"]) > 1e-12]
        report = {
            "calls": args.calls, "clients": args.clients, "explore": args.explore, "seconds": round(seconds, 1),
            "server killed (SIGKILL) after calls": kill_at, "restart seconds": restart["seconds"],
            "recommendations answered": len(answered), "feedback acknowledged": len(acknowledged),
            "decisions recorded": stats["decisions"], "decisions with feedback": stats["with_feedback"],
            "exported rows": int(len(log)), "duplicate decisions in export": int(log["decision_id"].duplicated().sum()),
            "acknowledged feedback missing or changed": len(lost), "propensities differing from the answer": len(wrong_propensity),
            **counts,
        }
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
