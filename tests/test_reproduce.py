"""The Prompt-OIRL reproduction: its splits on the real logs, and one path with the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oirl.cli.main import cli
from oirl.ope.bootstrap import cluster_bootstrap_mean
from oirl.reproduce.prompt_oirl import (
    critique,
    critique_picks,
    critique_rows,
    dataset_logs,
    disjoint_heldout_split,
    leakage,
    protocol_split,
    reproduce,
)


@pytest.fixture(scope="module")
def mawps(data_dir):
    return dataset_logs(data_dir, "mawps")


def test_paper_split_leaks_and_disjoint_split_does_not(mawps):
    six, heldout = mawps
    paper = protocol_split("mawps", six, heldout, "paper")
    assert set(paper.test["query"]) <= set(paper.train["query"])  # the paper split leaks
    assert paper.cv_groups == "instance" and len(paper.test16) == 1685 * 16
    disjoint = protocol_split("mawps", six, heldout, "disjoint")
    assert disjoint.cv_groups == "text" and disjoint.test16 is None
    assert not set(disjoint.train["query"]) & set(disjoint.test["query"])
    assert len(disjoint.train) + len(disjoint.test) == len(six)  # train and test rows pooled
    share = disjoint.test["query"].nunique() / six["query"].nunique()
    assert 0.17 < share < 0.23  # 20% of the question texts
    held = disjoint_heldout_split("mawps", six, heldout)
    assert not set(held.train["query"]) & set(held.test["query"]) and held.train["query"].nunique() == 199


def test_leakage_counts(mawps):
    six, heldout = mawps
    assert leakage(protocol_split("mawps", six, heldout, "paper")) == {
        "dataset": "mawps", "protocol": "paper", "test queries": 1685, "distinct test questions": 1545,
        "test questions also in train": 1545, "test queries whose question is in train": 1685}


def test_self_critique_baseline_matches_the_reference_figure(data_dir, mawps):
    six, _ = mawps
    test = six[six["split"] == "test"]
    pivot = test.pivot(index="query_id", columns="prompt_id", values="reward")
    confidence, _ = critique(data_dir, "mawps")
    conf = critique_rows("mawps", list(pivot.index), list(pivot.columns), confidence)
    rewards = pivot.to_numpy()
    assert rewards[np.arange(len(rewards)), critique_picks(conf, list(pivot.columns))].mean() == pytest.approx(0.555, abs=5e-4)


def test_cluster_bootstrap_mean_resamples_questions():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(200), 5)
    differences = np.repeat(rng.normal(0.1, 1.0, 200), 5)  # rows of one cluster are identical
    mean, low, high = cluster_bootstrap_mean(differences, clusters, n_boot=500)
    assert low < mean < high
    # Resampling 200 clusters, not 1,000 rows: the interval is as wide as for 200 draws.
    assert (high - low) == pytest.approx(2 * 1.96 * differences[::5].std() / np.sqrt(200), rel=0.25)


def test_reproduce_is_the_cli_path(data_dir, mawps, tmp_path):
    """One cell both ways: `oirl reproduce` and `oirl train` + `oirl evaluate` on the same split."""
    out = tmp_path / "results"
    result = reproduce(data_dir, out, datasets=("mawps",), protocols=("paper",), cache_dir=tmp_path / "emb", embedder="hashing",
                       authors_config=False, n_boot=100, limit=150, progress=False)
    for name in ("summary_k6", "model_choice", "bootstrap_k6", "heldout_prompts", "reward_model_quality", "prompts", "leakage",
                 "selection_vs_k_paper_mawps"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    assert (out / "success_vs_k_paper_mawps.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "selection_vs_k_paper_mawps.csv")
    assert table["subsets"].tolist() == [6, 15, 20, 15, 6, 1]
    [row] = result["summary"]
    [heldout_row] = result["heldout"]

    six, heldout = mawps
    split = protocol_split("mawps", six, heldout, "paper", limit=150)
    log = tmp_path / "slice.parquet"
    pd.concat([split.train, split.test, split.test16[split.test16["prompt_id"].str.startswith("gpt4")]]).to_parquet(log)

    def run(*args):
        outcome = CliRunner().invoke(cli, [str(a) for a in args])
        assert outcome.exit_code == 0, outcome.output
        return outcome

    run("train", log, "--out", tmp_path / "model", "--cv-groups", "instance", "--embedder", "hashing", "--cache-dir", tmp_path / "emb")
    six_prompts = tmp_path / "six.parquet"
    pd.concat([split.train, split.test]).to_parquet(six_prompts)
    report = json.loads(run("evaluate", tmp_path / "model", six_prompts, "--cache-dir", tmp_path / "emb").stdout)
    default = report["default_policy"]
    assert row["oirl (default policy)"] == pytest.approx(report["policies"][default], abs=1e-12)
    assert row["oirl argmax"] == pytest.approx(report["policies"]["argmax"], abs=1e-12)
    assert row["best prompt (train)"] == pytest.approx(report["best_single_prompt"]["success_rate"], abs=1e-12)
    report16 = json.loads(run("evaluate", tmp_path / "model", log, "--cache-dir", tmp_path / "emb").stdout)
    assert heldout_row["oirl fallback (<0.5), all 16"] == pytest.approx(report16["policies"]["fallback"], abs=1e-12)
    assert heldout_row["oirl default policy, all 16"] == pytest.approx(report16["policies"][default], abs=1e-12)


def test_other_seeds_hold_out_other_questions_of_the_same_share(mawps):
    from oirl.data.questions import QuestionKey

    six, heldout = mawps
    key = QuestionKey(casefold=True)
    tests = []
    for seed in (0, 1, 2):
        split = protocol_split("mawps", six, heldout, "disjoint", seed=seed)
        train_keys, test_keys = set(key.keys(split.train["query"])), set(key.keys(split.test["query"]))
        assert not train_keys & test_keys and len(split.train) + len(split.test) == len(six)
        assert 0.17 < len(test_keys) / len(train_keys | test_keys) < 0.23
        tests.append(test_keys)
    assert len(tests[0] & tests[1]) < 0.4 * len(tests[0])  # independent draws overlap by about 20%


def test_the_generalization_ablation_runs_at_toy_size(data_dir, tmp_path):
    """One split through `oirl reproduce --benchmark generalize`: a row per family, the
    shipped default among them, values on the held-out questions."""
    result = CliRunner().invoke(cli, ["reproduce", "--benchmark", "generalize", "--datasets", "mawps", "--seeds", "1", "--limit", "120",
                                      "--data-dir", str(data_dir), "--out", str(tmp_path / "g"), "--cache-dir", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "g" / "generalize.json").read_text())["rows"]
    families = [r["family"] for r in rows]
    assert families[0] == "default" and {"knn", "lexical", "lowrank", "lightgbm"} <= set(families)
    for r in rows:
        assert 0 <= r["test value"] <= 1 and r["gain low"] <= r["test gain"] + 1e-12 <= r["gain high"] + 2e-12
        assert r["test gain"] == pytest.approx(r["test value"] - r["best prompt (test)"])
    assert rows[0]["clears 3 SE"] or rows[0]["option (best by CV)"] == "prior"  # the default ships the prior unless an option clears it
    assert (tmp_path / "g" / "generalize_gains.png").is_file() and (tmp_path / "g" / "generalize.md").is_file()
    bad = CliRunner().invoke(cli, ["reproduce", "--benchmark", "generalize", "--seeds", "one", "--data-dir", str(data_dir)])
    assert bad.exit_code == 2 and "--seeds" in bad.output
