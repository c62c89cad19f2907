"""The Prompt-OIRL reproduction on the real logs, with the fast hashing embedder."""

import numpy as np
import pytest

from oirl.embed import CachedEmbedder, HashingEmbedder
from oirl.reproduce.prompt_oirl import (
    heldout_fold,
    leakage,
    load_dataset,
    protocol_folds,
    reproduce,
    run_folds,
    selection_vs_k,
)
from oirl.reproduce.report import paired_cluster_bootstrap


@pytest.fixture(scope="module")
def mawps(data_dir, tmp_path_factory):
    return load_dataset(data_dir, "mawps", CachedEmbedder(HashingEmbedder(), tmp_path_factory.mktemp("emb")))


def test_subsets_cover_every_non_empty_subset_of_six_prompts(mawps):
    table, k6 = selection_vs_k(mawps, run_folds(mawps, "paper"), "paper")
    assert table["subsets"].tolist() == [6, 15, 20, 15, 6, 1]
    assert len(k6["oracle"]) == 1685


def test_baselines_match_direct_computations(mawps):
    table, _ = selection_vs_k(mawps, run_folds(mawps, "paper"), "paper")
    k6 = table.iloc[-1]
    test = mawps.split == "test"
    rewards, confidence = mawps.rewards[test][:, :6], mawps.confidence[test][:, :6]
    assert k6["random mean"] == pytest.approx(rewards.mean())
    assert k6["oracle mean"] == pytest.approx(rewards.max(axis=1).mean())
    assert k6["best prompt (train) mean"] == pytest.approx(0.646, abs=5e-4)  # 'nan' is best on train and on test
    assert k6["self-critique (argmax) mean"] == pytest.approx(rewards[np.arange(len(rewards)), confidence.argmax(axis=1)].mean())
    assert k6["self-critique (argmax) mean"] == pytest.approx(0.555, abs=5e-4)  # the reference figure
    # K = 1: each method is the single prompt itself, so all but the critique agree.
    k1 = table.iloc[0]
    assert k1["oirl argmax mean"] == pytest.approx(k1["random mean"]) == pytest.approx(k1["oracle mean"])


def test_disjoint_protocol_never_shares_a_question(mawps):
    folds = protocol_folds(mawps, "disjoint")
    assert len(folds) == 5
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(mawps.texts)))  # every row tested once
    for fold in folds:
        assert not set(mawps.texts[fold.train]) & set(mawps.texts[fold.test])
    held = heldout_fold(mawps, "disjoint")
    assert not set(mawps.texts[held.train]) & set(mawps.texts[held.test])
    assert len(set(mawps.texts[held.train])) == 199
    paper = protocol_folds(mawps, "paper")[0]
    assert set(mawps.texts[paper.test]) <= set(mawps.texts[paper.train])  # the paper split leaks


def test_leakage_counts(mawps, data_dir, tmp_path):
    assert leakage(mawps) == {"dataset": "mawps", "test queries": 1685, "distinct test questions": 1545,
                              "test questions also in train (paper)": 1545, "test queries whose question is in train (paper)": 1685,
                              "shared questions (disjoint)": 0}


def test_paired_cluster_bootstrap_resamples_questions():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(200), 5)
    differences = np.repeat(rng.normal(0.1, 1.0, 200), 5)  # rows of one cluster are identical
    mean, low, high = paired_cluster_bootstrap(differences, clusters, n_boot=500)
    assert low < mean < high
    # Resampling 200 clusters, not 1,000 rows: the interval is as wide as for 200 draws.
    assert (high - low) == pytest.approx(2 * 1.96 * differences[::5].std() / np.sqrt(200), rel=0.25)


def test_reproduce_writes_tables_and_plots(data_dir, tmp_path):
    out = tmp_path / "results"
    result = reproduce(data_dir, out, datasets=("mawps",), protocols=("paper", "disjoint"),
                       embedder=CachedEmbedder(HashingEmbedder(), tmp_path / "emb"), authors_config=False, n_boot=100, progress=False)
    for name in ("summary_k6", "bootstrap_k6", "heldout_prompts", "reward_model_quality", "prompts", "leakage", "cost",
                 "selection_vs_k_paper_mawps", "selection_vs_k_disjoint_mawps"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    assert (out / "success_vs_k_paper_mawps.png").read_bytes()[:4] == b"\x89PNG"
    assert {r["protocol"] for r in result["summary"]} == {"paper", "disjoint"}
    # On the paper split even a bag-of-words neighbour model finds each question's repeats.
    paper = next(r for r in result["summary"] if r["protocol"] == "paper")
    assert paper["oirl argmax"] > paper["best prompt (train)"]
    assert paper["conservative >= best (train) at every K"]
