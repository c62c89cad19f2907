"""Experiment scripts run at toy size so they cannot rot."""

import importlib.util
import json
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_core_runs_at_toy_size(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = load("bench_core").main(["--data-dir", str(data_dir), "--max-train-queries", "60", "--calls", "5", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["train_queries"] == 60 and result["recommend_calls"] == 5
    assert 0 < result["recommend_ms"]["p50"] <= result["recommend_ms"]["p99"]
