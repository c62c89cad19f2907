"""The gateway's overhead: the same chat completions, straight to a stand-in upstream and through `oirl serve --upstream`.

    python experiments/bench_gateway.py [--embedder hashing:384|minilm-static|minilm] [--decisions] [--requests 200]
                                        [--streams 32] [--delay-ms 20] [--out REPORT.json]

A stand-in OpenAI-compatible upstream (stdlib, threaded, in this process) answers each
chat completion after a fixed ``--delay-ms``, as JSON, or with ``"stream": true`` as five
server-sent events 5 ms apart. The gateway serves a bundle made by ``oirl init`` with the
six Prompt-OIRL training prompts and ``--embedder`` (a cold-start bundle: every prompt
scores alike, so the gateway's own work is what is timed: embedding the message, scoring,
drawing, recording with ``--decisions``, forwarding). Each query is new (no vector cache
hit). Measured:

* added latency: ``--requests`` non-streaming requests, one at a time, alternating
  direct and through the gateway; the median of the paired differences (and both p50s);
* for reference, the p50 of ``/v1/recommend`` for one new query (the decision alone),
  each sent after a direct call, so the server has idled as long as before a gateway request;
* the raw embedding time of one such query with the same embedder, in this process,
  ``--delay-ms`` apart (a model that waited runs slower on a shared machine than one in a
  tight loop);
* ``--streams`` concurrent streaming clients (4 requests each): errors, complete streams
  (each must end with ``[DONE]`` and carry every event), and the p50 time to the first
  event, direct and through the gateway.

Writes experiments/results/bench_gateway[-EMBEDDER][-decisions].json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_fuzz import start_server, stop_server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EVENTS = 5


def stand_in(delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real upstream

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body in separate writes: no Nagle wait

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            time.sleep(delay)
            if not body.get("stream"):
                data = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": body.get("model"),
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "8"}, "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(EVENTS + 1):
                event = "data: [DONE]\n\n" if i == EVENTS else "data: " + json.dumps(
                    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"{i} "}}]}) + "\n\n"
                raw = event.encode()
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                self.wfile.flush()
                time.sleep(0.005)
            self.wfile.write(b"0\r\n\r\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def query(i: int) -> str:
    return (f"A baker makes {i} loaves every morning and sells {i % 7 + 2} of them before noon to the cafe across the street. "
            f"How many loaves are left for the afternoon if {i % 5} are set aside for the staff?")


def chat(client: httpx.Client, url: str, text: str) -> float:
    started = time.perf_counter()
    answer = client.post(url, json={"model": "m", "messages": [{"role": "user", "content": text}]})
    answer.raise_for_status()
    return time.perf_counter() - started


def stream(client: httpx.Client, url: str, text: str) -> tuple[float, bool]:
    """Time to the first event, and whether the stream was complete."""
    started, first, events = time.perf_counter(), None, []
    with client.stream("POST", url, json={"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("data: "):
                first = first or time.perf_counter() - started
                events.append(line)
    return first, len(events) == EVENTS + 1 and events[-1] == "data: [DONE]"


def make_bundle(work: Path, embedder: str) -> Path:
    from click.testing import CliRunner

    from oirl.cli.main import cli
    from oirl.data.importers.prompt_oirl import PROMPTS, TRAINING_PROMPTS

    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": p, "prompt": PROMPTS[p]}) + "\n" for p in TRAINING_PROMPTS))
    result = CliRunner().invoke(cli, ["init", "--prompts", str(prompts), "--out", str(work / "model"), "--embedder", embedder,
                                      "--cache-dir", str(work / "emb")])
    if result.exit_code:
        raise SystemExit(result.output)
    return work / "model"


def embedding_ms(embedder: str, n: int, gap: float) -> float:
    """The p50 of embedding one new query in this process, ``gap`` seconds apart (idle as the gateway is
    while the upstream works: on a shared machine a model that waited runs slower than one in a tight loop)."""
    from oirl.embed.registry import get_embedder

    model = get_embedder(embedder)
    model.embed(["warm up"])
    times = []
    for i in range(n):
        time.sleep(gap)
        started = time.perf_counter()
        model.embed([query(10_000 + i)])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="hashing:384")
    parser.add_argument("--decisions", action="store_true", help="Record every decision (oirl serve --decisions).")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None, help="Report file [default: experiments/results/bench_gateway….json].")
    args = parser.parse_args(argv)
    upstream = stand_in(args.delay_ms / 1000)
    direct = f"http://127.0.0.1:{upstream.server_address[1]}/v1/chat/completions"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = make_bundle(work, args.embedder)
        extra = ("--upstream", f"http://127.0.0.1:{upstream.server_address[1]}/v1",
                 *(("--decisions", work / "decisions.sqlite") if args.decisions else ()))
        with open(work / "server.log", "wb") as log:
            process, base = start_server(bundle, log, extra_args=extra)
            try:
                via = f"{base}/v1/chat/completions"
                with httpx.Client(timeout=60) as client:
                    for i in range(10):  # warm both paths
                        chat(client, direct, query(-i)), chat(client, via, query(-100 - i))
                    pairs, recommend = [], []
                    for i in range(args.requests):
                        pairs.append((chat(client, direct, query(3 * i)), chat(client, via, query(3 * i + 1))))
                        chat(client, direct, query(-1))  # the server idles as long as before a gateway request, then:
                        started = time.perf_counter()  # the decision alone, for reference: /v1/recommend of one new query
                        client.post(f"{base}/v1/recommend", json={"queries": [query(3 * i + 2)], "top_k": 1}).raise_for_status()
                        recommend.append(time.perf_counter() - started)

                def one_client(c: int) -> list[tuple[str, float, bool]]:
                    out = []
                    with httpx.Client(timeout=60) as client:
                        for r in range(4):
                            for name, url in (("direct", direct), ("gateway", via)):
                                try:
                                    first, complete = stream(client, url, query(100_000 + 10 * c + r))
                                    out.append((name, first, complete))
                                except httpx.HTTPError:
                                    out.append((name, float("nan"), False))
                    return out

                with ThreadPoolExecutor(args.streams) as pool:
                    streamed = [row for rows in pool.map(one_client, range(args.streams)) for row in rows]
            finally:
                stop_server(process)
        server_log = (work / "server.log").read_text(errors="replace")
    upstream.shutdown()
    through = [row for row in streamed if row[0] == "gateway"]
    report = {
        "embedder": args.embedder, "decisions": args.decisions, "upstream_delay_ms": args.delay_ms, "requests": args.requests,
        "p50_direct_ms": round(1000 * statistics.median(d for d, _ in pairs), 2),
        "p50_gateway_ms": round(1000 * statistics.median(g for _, g in pairs), 2),
        "p50_added_ms": round(1000 * statistics.median(g - d for d, g in pairs), 2),
        "p90_added_ms": round(1000 * statistics.quantiles([g - d for d, g in pairs], n=10)[-1], 2),
        "p50_recommend_ms": round(1000 * statistics.median(recommend), 2),
        "raw_embedding_ms_one_query": round(embedding_ms(args.embedder, 100, args.delay_ms / 1000), 2),
        "streams": {"clients": args.streams, "requests_through_gateway": len(through),
                    "errors": sum(1 for _, first, ok in through if not ok),
                    "p50_first_event_direct_ms": round(1000 * statistics.median(f for n, f, ok in streamed if n == "direct" and ok), 2),
                    "p50_first_event_gateway_ms": round(1000 * statistics.median(f for _, f, ok in through if ok), 2)},
        "tracebacks_in_server_log": server_log.count("Traceback"),
    }
    name = "bench_gateway" + ("" if args.embedder == "hashing:384" else f"-{args.embedder}") + ("-decisions" if args.decisions else "")
    out = args.out or RESULTS / f"{name.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
