"""A short load against a real `oirl serve`: small requests from 8 clients with a client at
the pair cap mixed in, and a 256 x 256 request. `python experiments/bench_serve_load.py`
runs the full version (32 clients, both caps, 60 s)."""

import json

from experiment_scripts import load


def test_small_requests_under_load_with_a_cap_client_and_an_oversize_request(data_dir, minilm_bundle, tmp_path):
    out = tmp_path / "load.json"
    result = load("bench_serve_load").main(["--data-dir", str(data_dir), "--model-dir", str(minilm_bundle), "--clients", "8",
                                            "--duration", "5", "--caps", "pair", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    small = result["small"]
    assert small["requests"] >= 8 and small["errors"] == 0, small["statuses"]
    too_big = result["too_big_256x256"]
    assert too_big["status"] == 422 and too_big["embedding_512_texts_status"] == 200
    assert too_big["ms"] < too_big["embedding_512_texts_ms"]  # refused before embedding: faster than embedding its texts
    assert set(result["caps"]["pair_cap"]["statuses"]) == {"200"}
    assert result["server_rss_mb"]["peak_hwm"] <= result["designed_bound_mb"]["total_mb"]
