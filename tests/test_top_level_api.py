"""The top-level API: ``oirl.read_logs``, ``oirl.train``, ``oirl.load``, ``oirl.evaluate``,
``oirl.Client`` (and a few more), loaded on first use so that ``import oirl`` stays cheap."""

import json
import subprocess
import sys

import pandas as pd
import pytest

import oirl

HEAVY = ("numpy", "pandas", "torch", "sentence_transformers", "lightgbm", "xgboost", "sklearn", "fastapi", "httpx")


def modules_after(code: str) -> list[str]:
    """The heavy modules loaded after running ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(__import__('json').dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_import_oirl_loads_nothing_heavy_and_the_client_only_httpx():
    assert modules_after("import oirl; dir(oirl)") == []
    assert modules_after("import oirl; oirl.Client") == ["httpx"]


def test_the_names_are_the_deep_ones():
    from oirl.client import Client
    from oirl.data.logs import read_logs
    from oirl.evaluation.report import evaluate_recommender
    from oirl.learn.train import train_recommender
    from oirl.recommender.bundle import load_bundle, save_bundle

    assert (oirl.read_logs, oirl.train, oirl.save, oirl.load, oirl.evaluate, oirl.Client) == \
        (read_logs, train_recommender, save_bundle, load_bundle, evaluate_recommender, Client)
    assert {"read_logs", "train", "load", "evaluate", "Client"} <= set(dir(oirl)) and set(oirl.__all__) <= set(dir(oirl))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        oirl.nope  # noqa: B018


def test_a_small_log_goes_through_the_top_level_api(tmp_path):
    """Read, train, save, load, recommend and evaluate on a log written here (hashing vectors: fast)."""
    rows = []
    for i in range(40):
        query = f"{'add' if i % 2 else 'name'} the thing number {i}"
        for prompt_id, prompt in (("math", "Compute step by step: "), ("words", "Answer in words: ")):
            good = (prompt_id == "math") == bool(i % 2)
            rows.append({"query_id": f"q{i}", "query": query, "prompt_id": prompt_id, "prompt": prompt,
                         "reward": float(good), "split": "train" if i < 30 else "test"})
    path = tmp_path / "log.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    logs = oirl.read_logs(path)
    rec = oirl.train(oirl.training_rows(logs, "split", "train", source="log.csv"), model="logistic", embedder="hashing",
                     cache_dir=tmp_path / "emb")
    loaded = oirl.load(oirl.save(rec, tmp_path / "model"))
    [best] = loaded.recommend(["add the thing number 99"], [oirl.Candidate("Compute step by step: "), oirl.Candidate("Answer in words: ")])
    report = oirl.evaluate(loaded, logs[logs["split"] == "test"])
    assert loaded.fingerprint and best.prompt_id in {"math", "words"}
    assert report["queries"] == 10 and report["oracle"] == 1.0
