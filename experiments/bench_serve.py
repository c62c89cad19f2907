"""Load benchmark of the HTTP service against a local server on 127.0.0.1.

    python experiments/bench_serve.py --data-dir ../shared/data [--model-dir models/gsm8k]

Every request carries a query never sent before (no cache hits). Prints and writes
experiments/results/bench_serve.json with:
- raw batched embedding speed of the model (queries/s, batches of 64, in-process);
- (a) latency: one client, sequential requests of 1 query x 16 candidates (the 6
  bundle prompts + the 10 held-out prompts): p50 / p95 / p99 ms;
- (b) throughput: 32 concurrent clients, a bounded number of requests (default
  5,000), same request shape: requests/s, p50 / p99 ms and the error count.
Without --model-dir it trains a bundle on 1,000 GSM8K train queries first (every default,
with --embedder: minilm, or minilm-static for the fast path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_fuzz import start_server, stop_server  # noqa: E402

from oirl.learn.train import train_recommender
from oirl.recommender.bundle import load_bundle


async def _sequential(base: str, queries: list[str], candidates: list[str]) -> list[float]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    latencies = []
    try:
        for query in queries:
            body = json.dumps({"queries": [query], "candidates": candidates, "top_k": 3}).encode()
            started = time.perf_counter()
            status = await _post(reader, writer, f"{host}:{port}", "/v1/recommend", body)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"/v1/recommend answered {status}")
    finally:
        writer.close()
    return latencies


REQUEST_TIMEOUT_SECONDS = 120


class ConnectionClosing(Exception):
    """The server answered with `Connection: close` (the status is carried along)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, body: bytes) -> int:
    """One HTTP/1.1 POST on a kept-alive connection; returns the status (the body is read
    and dropped). The server always sends Content-Length (JSON answers, never chunked)."""

    async def exchange() -> int:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await reader.readexactly(int(headers["content-length"]))
        status = int(lines[0].split()[1])
        if headers.get("connection", "").lower() == "close":
            raise ConnectionClosing(status)
        return status

    return await asyncio.wait_for(exchange(), REQUEST_TIMEOUT_SECONDS)


async def _concurrent(base: str, queries: list[str], candidates: list[str], clients: int) -> tuple[list[float], int, float]:
    """``clients`` kept-alive connections sending the requests one after another each.

    The client is a few lines over asyncio streams rather than httpx: on 2 cores the
    load generator shares the machine with the server, and httpx spends more CPU per
    request than the server does, so it would measure itself."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    todo = iter(queries)

    async def client_loop():
        nonlocal errors
        connection = None
        try:
            for query in todo:  # a shared iterator: the request count stays bounded
                body = json.dumps({"queries": [query], "candidates": candidates, "top_k": 3}).encode()
                started = time.perf_counter()
                try:
                    connection = connection or await asyncio.open_connection(host, int(port))
                    ok = await _post(*connection, f"{host}:{port}", "/v1/recommend", body) == 200
                except ConnectionClosing as closing:
                    ok = closing.status == 200
                    connection[1].close()
                    connection = None
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, KeyError):
                    ok = False
                    if connection is not None:
                        connection[1].close()
                    connection = None  # reconnect for the next request
                errors += not ok
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            if connection is not None:
                connection[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model-dir", type=Path, help="A trained bundle (default: train one on 1,000 GSM8K queries).")
    parser.add_argument("--embedder", default="minilm", help="Embedder of the bundle trained without --model-dir.")
    parser.add_argument("--cache-dir", type=Path, default=Path("embeddings"), help="Embedding cache (and where minilm-static is built).")
    parser.add_argument("--sequential", type=int, default=300, help="Requests in the latency run.")
    parser.add_argument("--requests", type=int, default=5000, help="Requests in the throughput run.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--embed-texts", type=int, default=2000, help="Texts in the raw embedding measurement.")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_serve.json"))
    args = parser.parse_args(argv)

    from oirl._atomic import write_text_atomic
    from oirl.data.importers.prompt_oirl import PROMPTS, load_questions
    from oirl.data.logs import read_logs, training_rows

    # Distinct texts, disjoint between the three measurements so none hits a cache.
    gsm8k = list(dict.fromkeys(load_questions(args.data_dir, "gsm8k")))
    svamp = list(dict.fromkeys(load_questions(args.data_dir, "svamp")))
    texts = gsm8k + svamp
    need = args.embed_texts + args.sequential + args.requests
    if len(texts) < need:
        raise SystemExit(f"only {len(texts)} distinct questions for {need} requests")
    raw_texts = texts[: args.embed_texts]
    seq_texts = texts[args.embed_texts : args.embed_texts + args.sequential]
    load_texts = texts[args.embed_texts + args.sequential : need]
    candidates = list(PROMPTS.values())

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from oirl.data.importers import import_prompt_oirl

            import_prompt_oirl(args.data_dir, Path(tmp) / "logs", datasets=("gsm8k",))
            train = training_rows(read_logs(Path(tmp) / "logs" / "gsm8k.parquet"), "split", "train", source="gsm8k")
            keep = train["query_id"].drop_duplicates().head(1000)
            model_dir = train_recommender(train[train["query_id"].isin(keep)], embedder=args.embedder,
                                          cache_dir=args.cache_dir).save(Path(tmp) / "model")

        embedder = load_bundle(model_dir).embedder  # the bundle's own (a static one travels inside it)
        embedder.embed(["load the model before timing"])
        started = time.perf_counter()
        embedder.embed(raw_texts, batch_size=64)
        raw_speed = len(raw_texts) / (time.perf_counter() - started)
        del embedder

        process, base = start_server(model_dir, subprocess.DEVNULL)
        try:
            sequential = asyncio.run(_sequential(base, seq_texts, candidates))
            concurrent, errors, elapsed = asyncio.run(_concurrent(base, load_texts, candidates, args.clients))
        finally:
            stop_server(process)

    result = {
        "embedder": load_bundle(model_dir).embedder_spec if args.model_dir else args.embedder,
        "raw_embedding_queries_per_second": round(raw_speed, 1),
        "latency_one_client": {"requests": len(sequential), "candidates": len(candidates), "ms": _percentiles(sequential)},
        "throughput": {
            "clients": args.clients,
            "requests": len(concurrent),
            "errors": errors,
            "requests_per_second": round(len(concurrent) / elapsed, 1),
            "successful_requests_per_second": round((len(concurrent) - errors) / elapsed, 1),
            "ms": _percentiles(concurrent),
        },
    }
    result["throughput_over_raw_embedding"] = round(result["throughput"]["requests_per_second"] / raw_speed, 2)
    print(json.dumps(result, indent=2))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
