"""CRUXEval input prediction: import, soft rewards, cost-aware policy and its reproduction."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oirl.cli.main import cli
from oirl.data.importers.cruxeval import arm_id, build_logs, default_cost, import_cruxeval
from oirl.data.logs import read_logs
from oirl.errors import OirlError
from oirl.evaluation.costs import cost_sweep, reward_cost_area
from oirl.learn.train import train_recommender
from oirl.policy.policies import PolicyContext
from oirl.recommender.bundle import save_bundle


@pytest.fixture(scope="module")
def crux(data_dir):
    return build_logs(data_dir, 0.2)


def test_import_has_every_sample_for_every_arm(data_dir, tmp_path, crux):
    summary = import_cruxeval(data_dir, tmp_path)
    assert summary == {"file": str(tmp_path / "cruxeval_input_t0.2.parquet"), "samples": 800, "arms": 37, "rows": 29600,
                       "models": 29, "mean_reward": pytest.approx(crux["reward"].mean())}
    logs = read_logs(tmp_path / "cruxeval_input_t0.2.parquet")
    assert logs.groupby("prompt_id").size().eq(800).all()
    both = logs.groupby("llm")["style"].nunique()
    assert (both == 2).sum() == 8
    row = logs[(logs["query_id"] == "sample_0") & (logs["prompt_id"] == "gpt-4-0613:cot")].iloc[0]
    assert row["query"].endswith("\nassert f(??) == [(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]")
    assert row["prompt"] == "gpt-4-0613 with step-by-step (chain-of-thought) prompting" and row["llm"] == "gpt-4-0613"
    assert import_cruxeval(data_dir, tmp_path, temperature=0.8)["arms"] == 31


def test_soft_rewards_and_reference_figures(crux):
    # Arms differ in generations: claude 1, gpt-4-turbo and gpt-4o 3, the rest 10.
    assert crux.groupby("llm")["n_generations"].first().to_dict()["gpt-4o"] == "3"
    assert ((crux["reward"] > 0) & (crux["reward"] < 1)).any()
    R = crux.pivot(index="query_id", columns="prompt_id", values="reward")
    assert R.mean().max() == pytest.approx(0.755) and R.mean().idxmax() == "gpt-4-0613:cot"
    assert R.max(axis=1).mean() == pytest.approx(0.947, abs=5e-4)
    gpt35 = R[["gpt-3.5-turbo-0613:direct", "gpt-3.5-turbo-0613:cot"]]
    assert gpt35.mean().round(3).tolist() == [0.490, 0.503] and gpt35.max(axis=1).mean() == pytest.approx(0.631, abs=5e-4)


def test_default_costs_price_step_by_step_higher():
    for model in ("gpt-4-0613", "codellama-7b", "claude-3-opus-20240229"):
        assert default_cost(model, "cot") > default_cost(model, "direct") > 0
    assert default_cost("codellama-34b", "direct") > default_cost("codellama-7b", "direct")
    with pytest.raises(OirlError, match="no default cost for model 'mystery'"):
        default_cost("mystery", "direct")
    assert arm_id("phi-2", "direct") == "phi-2:direct"


def test_cost_sweep_trades_reward_for_cost():
    scores = np.array([[0.9, 0.6, 0.1], [0.8, 0.7, 0.2]])
    rewards = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    cost = np.array([10.0, 1.0, 0.0])
    curve = cost_sweep(scores, rewards, PolicyContext.of(['a', 'b', 'c'], cost=cost), np.array([0.0, 0.02, 0.05, 1.0]))
    # lambda .02: the first query's score gap (.3) still beats the cost gap 9 x .02, the second's (.1) does not.
    assert curve["cost"].tolist() == [10.0, 5.5, 1.0, 0.0]
    assert curve["reward"].tolist() == [1.0, 0.5, 0.5, 0.0]
    assert curve["cost"].is_monotonic_decreasing
    area = reward_cost_area(curve, (0.0, 10.0))
    assert area == pytest.approx(0.9 * 0.5, abs=0.01)  # 0 below cost 1, then .5 until the full budget
    assert reward_cost_area(pd.DataFrame({"cost": [0.0], "reward": [1.0]}), (0.0, 10.0)) == pytest.approx(1.0)


def test_soft_reward_training_and_cost_aware_recommendations(crux, tmp_path):

    samples = sorted(crux["query_id"].unique())[:160]
    arms = ["gpt-4-0613:cot", "gpt-4-0613:direct", "codellama-7b:direct", "phi-2:direct"]
    logs = crux[crux["query_id"].isin(samples) & crux["prompt_id"].isin(arms)].reset_index(drop=True)
    rec = train_recommender(logs, model="lightgbm", model_params={"n_estimators": 50}, embedder="hashing", cache_dir=tmp_path)
    assert rec.costs["gpt-4-0613:cot"] == pytest.approx(54.0)
    scores = rec.score(logs["query"].unique()[:20].tolist())
    assert ((scores > 0) & (scores < 1)).all()
    cheap = rec.recommend(["def f(x):\n    return x\nassert f(??) == 3"], policy="cost-aware", cost_weight=1.0)[0]
    rich = rec.recommend(["def f(x):\n    return x\nassert f(??) == 3"], policy="cost-aware", cost_weight=0.0)[0]
    assert rec.costs[cheap.prompt_id] < 1 and rich.prompt_id.startswith("gpt-4")
    save_bundle(rec, tmp_path / "model")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "model"), str(_write(logs, tmp_path)), "--split", "test",
                                      "--cost-weights", "0,0.01,1", "--plot", str(tmp_path / "curve.png"), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["cost_weight"] for p in report["cost_sweep"]["curve"]] == [0.0, 0.01, 1.0]
    assert "cost-aware" in report["policies"] and 0 < report["cost_sweep"]["area"] <= 1
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def _write(logs, tmp_path):
    from oirl.data.logs import write_logs

    return write_logs(logs.assign(split="test"), tmp_path / "crux_slice.parquet")


def test_reproduction_holds_out_whole_samples_and_runs_at_toy_size(data_dir, tmp_path):
    from oirl.reproduce.cruxeval import reproduce_cruxeval, split_logs

    logs = split_logs(data_dir)
    assert logs.groupby("query_id")["split"].nunique().eq(1).all()  # a sample is on one side only
    share = (logs.drop_duplicates("query_id")["split"] == "test").mean()
    assert 0.15 < share < 0.25
    result = reproduce_cruxeval(data_dir, tmp_path / "out", cache_dir=tmp_path / "emb", embedder="hashing", n_boot=100, limit=200, progress=False)
    overall = result["overall"].set_index("method")["expected reward"]
    assert overall["oracle"] >= overall.filter(like="oirl").max() >= overall["random"]
    report = result["report"]
    assert overall[f"oirl default policy ({result['default_policy']})"] == pytest.approx(report["policies"][result["default_policy"]])
    assert len(result["styles"]) == 9  # 8 models + their average
    assert (tmp_path / "out" / "cruxeval_reward_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_training_keeps_each_arms_model_from_the_log(crux, tmp_path):
    """CRUXEval's arms are (model, style): the bundle's arms name the model that earned their
    outcomes (its `llm` column), which the gateway then calls; a prompt id logged with two
    models names none."""
    from oirl.recommender.bundle import load_bundle

    arms = sorted(crux["prompt_id"].unique())[:3]
    logs = crux[crux["prompt_id"].isin(arms) & crux["query_id"].isin(pd.unique(crux["query_id"])[:60])].copy()
    mixed = logs["prompt_id"] == arms[2]
    logs.loc[mixed & (logs.index % 2 == 0), "llm"] = "another-model"  # one prompt id, two models
    rec = train_recommender(logs, model="knn", embedder="hashing", cache_dir=tmp_path / "emb")
    expected = {a: {"model": logs.loc[logs["prompt_id"] == a, "llm"].iloc[0]} for a in arms[:2]}
    assert rec.arms == expected
    loaded = load_bundle(save_bundle(rec, tmp_path / "model"), cache_dir=tmp_path / "emb")
    assert loaded.arms == expected
