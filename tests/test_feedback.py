"""Partial feedback: evaluation and training on logs with one prompt per query, and the export of served decisions."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oirl.cli.main import cli
from oirl.data.logs import read_logs, write_logs
from oirl.errors import OirlError
from oirl.learn.train import train_recommender
from oirl.recommender.bundle import load_bundle, save_bundle


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_prompt_per_instance(frame: pd.DataFrame, seed: int = 0, propensity: bool = True) -> pd.DataFrame:
    """A uniform logger's partial log: one of the logged prompts per query instance."""
    rng = np.random.default_rng(seed)
    prompts = list(pd.unique(frame["prompt_id"]))
    chosen = {q: prompts[i] for q, i in zip(pd.unique(frame["query_id"]), rng.integers(0, len(prompts), frame["query_id"].nunique()), strict=True)}
    part = frame[frame["prompt_id"] == frame["query_id"].map(chosen)]
    return part.assign(propensity=1.0 / len(prompts)) if propensity else part


@pytest.fixture(scope="module")
def mawps(data_dir, tmp_path_factory):
    """A MAWPS slice (400 train, 300 test instances) and a knn bundle trained on its train rows."""
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    logs = build_logs(data_dir, "mawps", TRAINING_PROMPTS)
    train = logs[logs["query_id"].isin(pd.unique(logs.loc[logs["split"] == "train", "query_id"])[:400])]
    test = logs[logs["query_id"].isin(pd.unique(logs.loc[logs["split"] == "test", "query_id"])[:300])]
    work = tmp_path_factory.mktemp("feedback")
    rec = train_recommender(train, model="knn", embedder="hashing", cache_dir=work / "emb")
    save_bundle(rec, work / "model")
    return work, train.reset_index(drop=True), test.reset_index(drop=True)


def evaluate(work, frame, name):
    path = write_logs(frame, work / f"{name}.parquet")
    result = run("evaluate", work / "model", path, "--cache-dir", work / "emb")
    return json.loads(result.stdout), result.stderr


def test_on_full_information_the_estimators_agree_with_the_direct_count(mawps):
    work, _, test = mawps
    report, _ = evaluate(work, test, "full")
    assert report["feedback"] == "full" and report["ope"]["rounds"] == 6 * 300
    for policy in ("argmax", "conservative", "fallback"):
        for estimator in ("ips", "snips", "dr"):  # switch-dr's tuned tau may trade a little bias for variance
            assert report["ope"]["estimates"][policy][estimator]["value"] == pytest.approx(report["policies"][policy], abs=1e-9)
    for prompt, value in report["prompts"].items():
        assert report["ope"]["estimates"][f"prompt:{prompt}"]["dr"]["value"] == pytest.approx(value, abs=1e-9)


def test_a_partial_log_refuses_full_information_figures_and_estimates_off_policy(mawps):
    work, _, test = mawps
    full, _ = evaluate(work, test, "full")
    report, _ = evaluate(work, one_prompt_per_instance(test), "partial")
    assert report["feedback"] == "partial"
    assert report["oracle"] is None and report["gap_recovered"] is None and report["policies"] is None
    assert "partial-feedback log" in report["refused"]["oracle"]
    estimates = report["ope"]["estimates"]
    assert set(estimates) >= {"argmax", "conservative", "fallback", "prompt:nan", "prompt:CoT"}
    assert set(estimates["argmax"]) == {"support", "dm", "ips", "snips", "dr", "switch-dr", "dr-os"}
    assert estimates["argmax"]["support"] == 1.0  # a uniform logger (propensity 1/6) could play every prompt
    for policy in ("argmax", "conservative"):
        low, high = estimates[policy]["dr"]["ci"]
        assert low < estimates[policy]["dr"]["value"] < high
        assert low - 0.05 < full["policies"][policy] < high + 0.05  # one simulated log: the truth lies near its interval
    assert report["ope"]["reward_model"].startswith("the bundle's model, trained on other")


def test_a_partial_log_without_propensities_gets_its_logging_policy_estimated(mawps):
    work, _, test = mawps
    full, _ = evaluate(work, test, "full")
    report, _ = evaluate(work, one_prompt_per_instance(test, propensity=False), "nopropensity")
    assert report["ope"]["propensities"] == "estimated"
    argmax = report["ope"]["estimates"]["argmax"]
    assert argmax["support"] == 1.0 and argmax["ips"]["value"] is not None
    low, high = argmax["dr"]["ci"]
    assert low - 0.05 < full["policies"]["argmax"] < high + 0.05


def deterministic_logger(frame: pd.DataFrame, prompt: str, propensity: bool) -> pd.DataFrame:
    """A deployed system that never explored: the same prompt on every query."""
    rows = frame[frame["prompt_id"] == prompt]
    return rows.assign(propensity=1.0) if propensity else rows


@pytest.mark.parametrize("propensity", [True, False])
def test_a_logger_that_never_explored_gives_no_certain_value_for_prompts_it_never_played(mawps, propensity):
    work, _, test = mawps
    report, stderr = evaluate(work, deterministic_logger(test, "CoT", propensity), f"deterministic-{propensity}")
    assert report["feedback"] == "partial"  # one prompt of the bundle's six: not full information
    assert report["candidates"]["never_logged"] == ["nan", "APE", "Dis", "ToT", "Decomp"]
    estimates = report["ope"]["estimates"]
    assert estimates["prompt:CoT"]["support"] == 1.0 and estimates["prompt:CoT"]["ips"]["value"] == pytest.approx(
        test.loc[test["prompt_id"] == "CoT", "reward"].mean())
    unplayed = estimates["prompt:nan"]
    assert unplayed["support"] == 0.0
    assert unplayed["ips"]["value"] is None and "support < 1" in unplayed["ips"]["refused"]
    assert unplayed["snips"]["value"] is None
    low, high = unplayed["dr"]["ci"]
    assert unplayed["dr"]["extrapolated"] and unplayed["dr"]["unsupported_share"] == 1.0
    assert high - low > 0.9  # the log says nothing about a prompt never played: the whole range of rewards
    for block in estimates.values():
        for name in ("dm", "dr", "switch-dr", "dr-os", "ips", "snips"):
            if block[name]["ci"] is not None:
                assert 0.0 <= block[name]["ci"][0] <= block[name]["ci"][1] <= 1.0  # within the reward's range
    warnings = [line for line in stderr.splitlines() if "never played" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")


def test_an_estimated_logger_that_was_deterministic_in_the_query_supports_only_what_it_played(mawps):
    """Issue 21, item 9: a logger that served CoT on one side of the queries' first principal
    direction and APE on the other (deterministic in the query, as a deployed argmax is),
    logged without propensities. Its estimate gives the unplayed prompt a small positive
    probability, which the .05 floor turned into "supported everywhere", so IPS and SNIPS
    were never refused. Support now comes from the estimate before clipping, and the report
    says the estimated logger is near-deterministic."""
    from oirl.embed.registry import get_embedder

    work, _, test = mawps
    texts = test.drop_duplicates("query_id")
    vectors = get_embedder("hashing").embed(texts["query"].tolist())
    z = (vectors - vectors.mean(axis=0)) / (vectors.std(axis=0) + 1e-6)
    side = z @ np.linalg.svd(z, full_matrices=False)[2][0]
    rule = pd.Series(np.where(side > np.median(side), "CoT", "APE"), index=texts["query_id"])
    served = test[test["prompt_id"] == test["query_id"].map(rule)]
    report, stderr = evaluate(work, served, "deterministic-in-the-query")
    ope = report["ope"]
    assert ope["propensities"] == "estimated" and ope["logger"]["near_deterministic_share"] > 0.2
    assert "near-deterministic" in ope["logger"]["near_deterministic"]
    assert len([line for line in stderr.splitlines() if "the estimated logger is near-deterministic" in line]) == 1
    for prompt in ("CoT", "APE"):
        block = ope["estimates"][f"prompt:{prompt}"]
        assert 0 < block["support"] < 1 and block["ips"]["value"] is None and "support < 1" in block["ips"]["refused"]
        assert block["dr"]["extrapolated"]
    path = write_logs(served.assign(split="train"), work / "deterministic-train.parquet")
    result = run("train", path, "--out", work / "deterministic-model", "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    propensities = json.loads(result.stdout)["training"]["propensities"]
    assert propensities["near_deterministic_share"] > 0.2 and "near-deterministic" in result.stderr


def test_each_decision_is_valued_over_the_candidates_it_offered(mawps):
    work, _, test = mawps
    partial = deterministic_logger(test, "CoT", True)
    only_two = partial.assign(candidate_ids=json.dumps(["CoT", "nan"]))
    report, _ = evaluate(work, only_two, "offered")
    assert report["ope"]["candidates"].startswith("the candidates each decision offered")
    assert set(report["ope"]["estimates"]) >= {"prompt:CoT", "prompt:nan"} and "prompt:APE" not in report["ope"]["estimates"]
    assert report["ope"]["estimates"]["argmax"]["support"] < 1


def test_evaluating_training_instances_cross_fits_the_reward_model(mawps):
    work, train, _ = mawps
    report, _ = evaluate(work, one_prompt_per_instance(train).assign(split="test"), "trained_on")
    assert report["ope"]["reward_model"].startswith("the bundle's model kind, cross-fitted on the evaluated log")


def test_training_on_a_partial_log_uses_doubly_robust_cross_validation(mawps, tmp_path):
    work, train, _ = mawps
    partial = one_prompt_per_instance(train)
    rec = train_recommender(partial, model="knn", embedder="hashing", cache_dir=work / "emb", importance_weights=True)
    assert rec.metadata["training"]["feedback"] == "partial" and rec.metadata["training"]["importance_weights"]
    cv = rec.metadata["metrics"]["cross_validation"]["selection"]
    assert cv["oracle"] is None and 0 < cv["best_single_prompt"] < 1
    # The prior is the importance-weighted mean of each prompt's logged rewards.
    logged = partial.groupby("prompt_id")["reward"].mean()
    assert rec.prior == pytest.approx(logged.to_dict())
    save_bundle(rec, tmp_path / "model")
    assert load_bundle(tmp_path / "model").metadata["training"]["importance_weights"]
    with pytest.raises(OirlError, match="importance weighting needs a propensity column"):
        train_recommender(partial.drop(columns="propensity"), model="knn", embedder="hashing", cache_dir=work / "emb", importance_weights=True)


def test_export_decisions_writes_a_partial_log_that_trains(tmp_path):
    from oirl.decisions.store import Decision, DecisionStore

    store_path = tmp_path / "decisions.sqlite"
    prompts = {"a": "Answer directly.", "b": "Think step by step."}
    with DecisionStore(store_path) as store:
        decisions = [Decision(query=f"What is {i} plus {i % 3}?", candidate_ids=list(prompts), candidate_prompts=list(prompts.values()),
                              prompt_id="ab"[i % 2], prompt=prompts["ab"[i % 2]], score=0.5, policy="argmax", model_version="m",
                              propensity=0.5) for i in range(12)]
        store.record(decisions)
        for i, d in enumerate(decisions[:10]):
            store.feedback(d.decision_id, float(i % 2))
    result = run("export-decisions", store_path, "--out", tmp_path / "feedback.parquet")
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["pending"], summary["feedback_window_seconds"]) == (10, 2, 86_400)  # two may still get theirs
    logs = read_logs(tmp_path / "feedback.parquet")
    assert len(logs) == 10 and logs["propensity"].eq(0.5).all() and logs["query_id"].nunique() == 10
    assert all(json.loads(ids) == ["a", "b"] for ids in logs["candidate_ids"])  # what off-policy evaluation may choose from
    missing = run("export-decisions", tmp_path / "none.sqlite", "--out", tmp_path / "x.parquet", ok=False)
    assert missing.exit_code == 2 and "no such decision database" in missing.stderr and not (tmp_path / "x.parquet").exists()


def test_export_decisions_refuses_an_existing_file_unless_forced(tmp_path):
    from oirl.decisions.store import Decision, DecisionStore

    store_path = tmp_path / "decisions.sqlite"
    with DecisionStore(store_path) as store:
        decision = Decision(query="What is 2 plus 2?", candidate_ids=["a"], candidate_prompts=["Answer directly."], prompt_id="a",
                            prompt="Answer directly.", score=0.5, policy="argmax", model_version="m")
        store.record([decision])
        store.feedback(decision.decision_id, 1.0)
    existing = tmp_path / "results.csv"
    existing.write_text("someone's spreadsheet\n")
    refused = run("export-decisions", store_path, "--out", existing, ok=False)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: ") and "results.csv: already exists" in refused.stderr and "--force" in refused.stderr
    assert existing.read_text() == "someone's spreadsheet\n"
    run("export-decisions", store_path, "--out", existing, "--force")
    assert read_logs(existing)["decision_id"].tolist() == [decision.decision_id]
    filled = run("export-decisions", store_path, "--out", tmp_path / "filled.jsonl", "--feedback-window", "0.5", "--missing-reward", "0")
    assert json.loads(filled.stdout)["missing_reward"] == 0.0
    bad = run("export-decisions", store_path, "--out", tmp_path / "x.jsonl", "--feedback-window", "0", ok=False)
    assert bad.exit_code == 2 and "--feedback-window" in bad.stderr and not (tmp_path / "x.jsonl").exists()


def test_the_ope_simulation_runs_at_toy_size(data_dir, tmp_path):
    from oirl.reproduce.ope_simulation import reproduce_ope

    result = reproduce_ope(data_dir, tmp_path / "out", datasets=("mawps",), repetitions=20, learn_repetitions=1, n_boot=100,
                           cache_dir=tmp_path / "emb", embedder="hashing", limit=300, progress=False)
    summary = result["summary"]
    uniform = summary[(summary["logger"] == "uniform") & (summary["policy"] == "argmax") & (summary["size"] == 300)].set_index("estimator")
    assert abs(uniform.loc["dr", "bias"]) < 0.03 and uniform.loc["dr", "rmse"] < uniform.loc["ips", "rmse"]
    assert uniform.loc["dm", "coverage"] < uniform.loc["dr", "coverage"]  # the model alone is biased
    assert (tmp_path / "out" / "ope_rmse_vs_size_mawps.png").read_bytes()[:4] == b"\x89PNG"
    assert len(result["learning"]) == 1
