"""Experiment scripts run at toy size so they cannot rot."""

import json

from experiment_scripts import load


def test_bench_core_runs_at_toy_size(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = load("bench_core").main(["--data-dir", str(data_dir), "--max-train-queries", "60", "--calls", "5", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["train_queries"] == 60 and result["recommend_calls"] == 5
    assert 0 < result["recommend_ms"]["p50"] <= result["recommend_ms"]["p99"]


def test_bench_threads_runs_at_toy_size(data_dir, tmp_path):
    out = tmp_path / "threads.json"
    result = load("bench_threads").main(["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "emb"), "--sizes", "12",
                                         "--loads", "idle", "--threads", "1,auto", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    rows = result["results"]
    assert {r["rows"] for r in rows} == {72} and len(rows) == 4
    assert all(r["threads used"] == 1 for r in rows)  # a small fit gets one thread (auto included)


def test_demo_table_summarises_real_reports(data_dir, tmp_path):
    from click.testing import CliRunner

    from oirl.cli.main import cli
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs
    from oirl.data.logs import write_logs

    logs = build_logs(data_dir, "mawps", TRAINING_PROMPTS)
    keep = list(logs.loc[logs["split"] == "train", "query_id"].unique()[:200]) + list(logs.loc[logs["split"] == "test", "query_id"].unique()[:100])
    log = write_logs(logs[logs["query_id"].isin(keep)], tmp_path / "mawps.parquet")
    for args in (["train", log, "--out", tmp_path / "model", "--model", "knn", "--embedder", "hashing"],
                 ["evaluate", tmp_path / "model", log, "--out", tmp_path / "report.json"]):
        result = CliRunner().invoke(cli, [str(a) for a in args] + ["--cache-dir", str(tmp_path / "emb")])
        assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    text = load("demo_table").main([str(tmp_path / "report.json")])
    [row] = text.splitlines()[2:]
    assert row.startswith("| mawps.parquet | 100 |")
    assert f"{report['policies'][report['default_policy']]:.3f} ({report['default_policy']})" in row
    assert f"{report['oracle']:.3f}" in row


def test_demo_table_names_a_missing_or_foreign_report(tmp_path, capsys):
    import pytest

    (tmp_path / "other.json").write_text('{"policies": {}}')
    for path, needle in ((tmp_path / "missing.json", "missing.json: not a readable"), (tmp_path / "other.json", "lacks the field")):
        with pytest.raises(SystemExit) as exit_info:
            load("demo_table").main([str(path)])
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err


def test_compare_embedders_runs_at_toy_size(data_dir, tmp_path):
    import os

    out = tmp_path / "compare.json"
    cache = os.environ["OIRL_EMBEDDINGS_DIR"]  # the session's: minilm-static is distilled once per test session
    result = load("compare_embedders").main(["--data-dir", str(data_dir), "--cache-dir", cache, "--logs", "mawps",
                                             "--limit", "60", "--throughput-texts", "20", "--n-boot", "100", "--out", str(out)])
    [row] = result["rows"]
    assert row["log"] == "mawps" and row["test queries"] == 60
    assert 0 <= row["minilm: default policy"] <= 1 and 0 <= row["minilm-static: default policy"] <= 1
    assert row["95% low"] <= row["static - minilm"] <= row["95% high"]
    assert row["speed-up"] > 1
    assert out.with_suffix(".md").read_text().startswith("### Embedders side by side")


def test_feedback_loop_survives_a_kill_at_toy_size(data_dir, tmp_path, minilm_bundle):
    out = tmp_path / "loop.json"
    report = load("bench_feedback_loop").main(["--data-dir", str(data_dir), "--bundle", str(minilm_bundle), "--calls", "60",
                                               "--clients", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["restart seconds"] is not None  # the server was killed with SIGKILL and came back
    assert report["feedback acknowledged"] == report["recommendations answered"] == 60 and report["errors"] == 0
    assert report["acknowledged feedback missing or changed"] == 0 and report["duplicate decisions in export"] == 0
    assert report["propensities differing from the answer"] == 0 and report["exported rows"] >= 60


def test_bench_serve_runs_at_toy_size_against_a_real_server(data_dir, minilm_bundle, tmp_path):
    out = tmp_path / "serve.json"
    result = load("bench_serve").main(["--data-dir", str(data_dir), "--model-dir", str(minilm_bundle), "--sequential", "5",
                                       "--requests", "40", "--clients", "4", "--embed-texts", "10", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["latency_one_client"]["requests"] == 5
    throughput = result["throughput"]
    assert throughput["requests"] == 40 and throughput["errors"] == 0
    assert throughput["successful_requests_per_second"] > 0


def test_bench_serve_client_reconnects_after_connection_close_and_counts_bad_statuses():
    """A stub HTTP server answers 200 or 503 and closes every other connection; the load
    client must reconnect, count the 503s as errors and lose no request."""
    import asyncio

    bench = load("bench_serve")
    served = []

    async def handle(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            served.append(1)
            status, close = (503, False) if len(served) % 5 == 0 else (200, len(served) % 2 == 0)
            body = b'{"ok": true}'
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode() + body)
            await writer.drain()
            if close:
                break
        writer.close()

    async def scenario():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await bench._concurrent(f"http://127.0.0.1:{port}", [f"q{i}" for i in range(20)], ["p"], clients=3)

    latencies, errors, elapsed = asyncio.run(scenario())
    assert len(latencies) == 20 and len(served) == 20 and errors == 4 and elapsed > 0


def test_bench_gateway_runs_at_toy_size(tmp_path):
    out = tmp_path / "gateway.json"
    report = load("bench_gateway").main(["--requests", "5", "--streams", "2", "--decisions", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["streams"]["requests_through_gateway"] == 8 and report["streams"]["errors"] == 0
    assert report["tracebacks_in_server_log"] == 0 and report["p50_gateway_ms"] > report["upstream_delay_ms"]
