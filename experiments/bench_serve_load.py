"""Load with requests at the caps mixed in, against a real `oirl serve` on 127.0.0.1.

    python experiments/bench_serve_load.py --data-dir ../shared/data [--model-dir models/gsm8k]

For ``--duration`` seconds:
- ``--clients`` (32) clients send small requests back to back: 1 query never sent
  before x 6-16 candidates (the 6 bundle prompts first, then held-out ones);
- one client sends /v1/recommend at the pair cap: 64 new queries x 256 candidates =
  16,384 pairs (the same 256 candidate texts each time);
- one client sends /v1/score at the text cap: 512 pairs of new queries and new prompts
  = 1,024 distinct texts;
- once, after 2 s, a 256 x 256 /v1/recommend, which must get its 422 at once.
A thread samples the server's VmRSS and VmHWM (/proc/PID/status) every 0.1 s.

Prints and writes experiments/results/bench_serve_load.json (atomically): the small
requests' errors (any status but 200, or no answer), p50/p95/p99 latency and rate; each
cap client's statuses and latencies; the 256 x 256 request's status and latency; the
server's RSS at start and its peak, against the bound the service is designed for.
Without --model-dir it trains a small bundle (LightGBM on 300 GSM8K train queries).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_fuzz import start_server, stop_server, train_small_bundle  # noqa: E402

# Memory the service is designed to need beyond its start-up RSS, per component (MB).
# The query cache: 50,000 vectors of 384 float32 plus key and object overhead (~1.8 KB).
CACHE_MB_PER_ITEM = 1.8e-3
SCORING_MB = 120  # one scoring thread: a 16,384-pair feature matrix and LightGBM's copy (measured ~96 MB)
EMBEDDING_MB = 120  # one model call: 48 texts, 16 at a time, up to 256 tokens each
REQUEST_MB = 24  # one request under way: a 1 MiB body parsed (~3 MB), 1,024 vectors (1.5 MB), an answer of <= 4 M characters rendered (~16 MB)


def rss_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.max_rss = 0.0
        self.hwm = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                sample = rss_mb(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.max_rss = max(self.max_rss, sample["VmRSS"])
            self.hwm = max(self.hwm, sample["VmHWM"])
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)} | {"max": round(max(values), 1)}


async def run_load(base: str, queries: list[str], candidates: list[str], *, clients: int, duration: float, caps: set[str],
                   seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    todo = iter(queries)
    small: list[tuple[float, int | str]] = []
    cap_results: dict[str, list[tuple[float, int | str]]] = collections.defaultdict(list)
    big: dict = {}
    started = time.perf_counter()
    deadline = started + duration

    async def timed(client, path, body):
        t = time.perf_counter()
        try:
            status: int | str = (await client.post(path, json=body)).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        return (time.perf_counter() - t) * 1000, status

    async def small_client(client):
        while time.perf_counter() < deadline:
            query = next(todo, None)
            if query is None:
                return
            body = {"queries": [query], "candidates": candidates[: rng.randint(6, 16)], "top_k": 3}
            small.append(await timed(client, "/v1/recommend", body))

    async def pair_cap_client(client):
        prompts = [f"Candidate prompt number {j}: answer carefully and show the result." for j in range(256)]
        round_ = 0
        while time.perf_counter() < deadline:
            qs = [f"Pair-cap round {round_}, question {i}: what is {i} times {round_ + 3}?" for i in range(64)]
            cap_results["pair_cap"].append(await timed(client, "/v1/recommend", {"queries": qs, "candidates": prompts, "top_k": 1}))
            round_ += 1

    async def text_cap_client(client):
        round_ = 0
        while time.perf_counter() < deadline:
            pairs = [{"query": f"Text-cap round {round_}, question {i}: how many apples are left?",
                      "prompt": f"Text-cap round {round_}, prompt {i}: reply with a number."} for i in range(512)]
            cap_results["text_cap"].append(await timed(client, "/v1/score", {"pairs": pairs}))
            round_ += 1

    async def too_big(client):
        await asyncio.sleep(2)
        body = {"queries": [f"Too big {i}?" for i in range(256)], "candidates": [f"Too big prompt {j}." for j in range(256)]}
        ms, status = await timed(client, "/v1/recommend", body)
        big.update(status=status, ms=round(ms, 1))

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        await client.post("/v1/recommend", json={"queries": ["Warm the candidate cache."], "candidates": candidates})
        started = time.perf_counter()
        deadline = started + duration
        tasks = [small_client(client) for _ in range(clients)] + [too_big(client)]
        tasks += [pair_cap_client(client)] if "pair" in caps else []
        tasks += [text_cap_client(client)] if "text" in caps else []
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started

    latencies = [ms for ms, _ in small]
    statuses = collections.Counter(str(s) for _, s in small)
    return {
        "small": {"requests": len(small), "errors": sum(n for s, n in statuses.items() if s != "200"),
                  "statuses": dict(statuses), "requests_per_second": round(len(small) / elapsed, 1), "ms": percentiles(latencies)},
        "caps": {kind: {"requests": len(rows), "statuses": dict(collections.Counter(str(s) for _, s in rows)),
                        "ms": percentiles([ms for ms, _ in rows])} for kind, rows in cap_results.items()},
        "too_big_256x256": big,
        "seconds": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model-dir", type=Path, help="A trained bundle (default: train a small one).")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load (requests under way then finish).")
    parser.add_argument("--caps", default="pair,text", help="Clients at the caps: pair, text, both (pair,text) or none.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_serve_load.json"))
    args = parser.parse_args(argv)

    import httpx

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.prompt_oirl import PROMPTS, load_questions

    queries = list(dict.fromkeys(load_questions(args.data_dir, "gsm8k") + load_questions(args.data_dir, "svamp")))
    random.Random(args.seed).shuffle(queries)
    candidates = list(PROMPTS.values())  # the 6 bundle prompts, then the 10 held-out ones

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or train_small_bundle(args.data_dir, work)
        with open(work / "server.log", "wb") as log:
            process, base = start_server(model_dir, log)
            try:
                limits = httpx.get(f"{base}/v1/model", timeout=30).json()["limits"]
                start_rss = rss_mb(process.pid)["VmRSS"]
                sampler = RssSampler(process.pid)
                sampler.start()
                load = asyncio.run(run_load(base, queries, candidates, clients=args.clients, duration=args.duration,
                                            caps=set(args.caps.split(",")) - {"none"}, seed=args.seed))
                sampler.stop()
                end = rss_mb(process.pid)
            finally:
                stop_server(process)

    bound = {
        "start_mb": round(start_rss, 1),
        "query_cache_mb": round(limits.get("query_cache_items", 50_000) * CACHE_MB_PER_ITEM, 1),
        "scoring_mb": SCORING_MB,
        "embedding_mb": EMBEDDING_MB,
        "requests_mb": limits.get("concurrent_requests", 64) * REQUEST_MB,
    }
    bound["total_mb"] = round(sum(bound.values()), 1)
    result = {
        "clients": args.clients,
        "duration": args.duration,
        "cap_clients": args.caps,
        **load,
        "server_rss_mb": {"start": round(start_rss, 1), "peak_sampled": round(max(sampler.max_rss, end["VmRSS"]), 1),
                          "peak_hwm": round(max(sampler.hwm, end["VmHWM"]), 1), "end": round(end["VmRSS"], 1)},
        "designed_bound_mb": bound,
        "limits": limits,
    }
    print(json.dumps(result, indent=2))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
