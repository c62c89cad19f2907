"""An independent property-based fuzzer against a real `oirl serve`: schemathesis with every
check reads /openapi.json (with the API key) and finds no failure. Short budget here;
`python experiments/bench_serve_fuzz.py` runs it for 150 s."""

import json

import pytest
from experiment_scripts import load

pytest.importorskip("schemathesis", reason="the dev extra's schemathesis (Python >= 3.11)")




def test_schemathesis_all_checks_find_no_failure(minilm_bundle, tmp_path):
    out = tmp_path / "fuzz.json"
    result = load("bench_serve_fuzz").main(["--model-dir", str(minilm_bundle), "--seconds", "40", "--max-examples", "25",
                                            "--seed", "10", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["failures"] == 0 and result["errors"] == 0 and result["exit_code"] == 0, result["output_tail"]
    statuses = result["requests_by_status"]
    assert result["requests"] >= 100 and statuses.get("200", 0) > 0 and statuses.get("422", 0) > 0
    assert statuses.get("401", 0) > 0  # the ignored-auth check: no key, no answer
    assert "500" not in statuses and "503" not in statuses
