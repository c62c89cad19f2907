"""Fuzz the HTTP service: schemathesis, every check, against a real `oirl serve` on 127.0.0.1.

    python experiments/bench_serve_fuzz.py [--model-dir models/gsm8k] [--seconds 150]

Starts the server with an API key, decision logging and epsilon-greedy exploration (the
whole API), runs ``schemathesis run <base>/openapi.json --checks
all`` (the schema fetched with the key) for ``--seconds``, and prints and writes
experiments/results/bench_serve_fuzz.json: test cases generated, requests the server
answered (by status, from its access log), failures by schemathesis code, errors.
Without --model-dir it trains a small bundle (LightGBM on 300 GSM8K train queries, as
the tests do) first. Needs the dev extra (schemathesis, Python >= 3.11).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oirl.learn.train import train_recommender
from oirl.recommender.bundle import save_bundle

ACCESS_LINE = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE|CONNECT|[A-Z]+) \S* HTTP/[\d.]+" (\d{3})')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log_file, api_key: str | None = None, extra_args: tuple = ()) -> tuple[subprocess.Popen, str]:
    """``oirl serve`` on a free loopback port; waits for /health."""
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OIRL_API_KEY", None)
    if api_key:
        env["OIRL_API_KEY"] = api_key
    process = subprocess.Popen([sys.executable, "-m", "oirl.cli", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                *map(str, extra_args)],
                               env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start in 120 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def train_small_bundle(data_dir: Path, work: Path) -> Path:
    from oirl.data.importers import import_prompt_oirl
    from oirl.data.logs import read_logs, training_rows

    import_prompt_oirl(data_dir, work / "logs", datasets=("gsm8k",))
    train = training_rows(read_logs(work / "logs" / "gsm8k.parquet"), "split", "train", source="gsm8k")
    keep = train["query_id"].drop_duplicates().head(300)
    rec = train_recommender(train[train["query_id"].isin(keep)], model="lightgbm", model_params={"n_estimators": 100}, cache_dir=work / "emb")
    return save_bundle(rec, work / "model")


def fuzz(model_dir: Path, work: Path, *, seconds: int, workers: int, max_examples: int | None, seed: int | None) -> dict:
    """One schemathesis run against a fresh server; the figures of :func:`main`."""
    api_key = secrets.token_hex(16)
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        # The whole API: decisions recorded (so /v1/feedback answers) and exploring by default.
        process, base = start_server(model_dir, log, api_key, ("--decisions", work / "decisions.sqlite", "--explore", "epsilon:0.1"))
        try:
            command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json", "--checks", "all",
                       "--max-time", str(seconds), "--workers", str(workers), "-H", f"Authorization: Bearer {api_key}",
                       "--report", "json", "--report-dir", str(work / "report")]
            if max_examples:
                command += ["--max-examples", str(max_examples)]
            if seed is not None:
                command += ["--seed", str(seed)]
            started = time.perf_counter()
            run = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=seconds + 600,
                                 env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"})
            elapsed = time.perf_counter() - started
        finally:
            stop_server(process)
    reports = sorted((work / "report").glob("*.json"))
    if not reports:
        raise RuntimeError(f"schemathesis wrote no report (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    report = json.loads(reports[-1].read_text())
    statuses = collections.Counter(m.group(1) for m in ACCESS_LINE.finditer(log_path.read_text(errors="replace")))
    failures = {f["code"]: f["count"] for f in report["failures"]}
    return {
        "schemathesis_version": report["schemathesis_version"],
        "checks": "all",
        "seed": report["seed"],
        "workers": workers,
        "max_examples": max_examples,
        "seconds": round(elapsed, 1),
        "stop_reason": report["stop_reason"],
        "phases": {name: phase["status"] for name, phase in report["phases"].items()},
        "test_cases": report["test_cases"]["generated"],
        "requests": sum(statuses.values()),
        "requests_by_status": dict(sorted(statuses.items())),
        "failures": sum(failures.values()),
        "failures_by_code": failures,
        "errors": len(report["errors"]),
        "exit_code": run.returncode,
        "output_tail": run.stdout[-6000:] if failures or report["errors"] else "",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model-dir", type=Path, help="A trained bundle (default: train a small one).")
    parser.add_argument("--seconds", type=int, default=150, help="schemathesis --max-time.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-examples", type=int, help="schemathesis --max-examples (per operation and phase).")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_serve_fuzz.json"))
    args = parser.parse_args(argv)

    from oirl._atomic import write_text_atomic

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or train_small_bundle(args.data_dir, work)
        result = fuzz(model_dir, work, seconds=args.seconds, workers=args.workers, max_examples=args.max_examples, seed=args.seed)
    print(json.dumps({k: v for k, v in result.items() if k != "output_tail"}, indent=2))
    if result["output_tail"]:
        print(result["output_tail"])
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
