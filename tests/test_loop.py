"""The feedback loop's training side: a cold start, several logs in one training, the
incumbent as the baseline a retrained bundle must beat, and the off-policy comparison of two
bundles. Real MAWPS rows; the hashing embedder keeps it fast."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oirl.cli.main import cli
from oirl.data.logs import write_logs
from oirl.policy.explore import explorer
from oirl.recommender.bundle import load_bundle


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def mawps(data_dir, tmp_path_factory):
    """500 train and 300 test MAWPS instances, the six prompts, and their prompt file."""
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    logs = build_logs(data_dir, "mawps", TRAINING_PROMPTS)
    train = logs[logs["query_id"].isin(pd.unique(logs.loc[logs["split"] == "train", "query_id"])[:500])].reset_index(drop=True)
    test = logs[logs["query_id"].isin(pd.unique(logs.loc[logs["split"] == "test", "query_id"])[:300])].reset_index(drop=True)
    work = tmp_path_factory.mktemp("loop")
    prompts = work / "prompts.jsonl"
    table = train.drop_duplicates("prompt_id")
    prompts.write_text("".join(json.dumps({"prompt_id": p, "prompt": t}) + "\n" for p, t in zip(table["prompt_id"], table["prompt"], strict=True)))
    return work, train, test, prompts


def served_log(frame: pd.DataFrame, picks: dict[str, str], propensity: float) -> pd.DataFrame:
    """What a deployment logged: the prompt it served per instance, with its propensity."""
    rows = frame[frame["prompt_id"] == frame["query_id"].map(picks)]
    return rows.drop(columns="split").assign(propensity=propensity)


def test_a_cold_bundle_serves_its_default_and_explores_uniformly(mawps):
    work, _, test, prompts = mawps
    result = run("init", "--prompts", prompts, "--out", work / "cold", "--default", "CoT", "--embedder", "hashing", "--cache-dir", work / "emb")
    assert json.loads(result.stdout)["default_prompt_id"] == "CoT"
    cold = load_bundle(work / "cold", cache_dir=work / "emb")
    assert cold.model is None and cold.metadata["training"] is None
    queries = test["query"].drop_duplicates().head(5).tolist()
    assert {r.prompt_id for r in cold.recommend(queries)} == {"CoT"}
    scores = cold.score(queries)
    assert (scores == 0.5).all()
    uniform = explorer("softmax", 0.1, cold.policy()).probabilities(scores)
    np.testing.assert_allclose(uniform, 1 / 6)
    report = json.loads(run("evaluate", work / "cold", write_logs(test, work / "test.parquet"), "--cache-dir", work / "emb").stdout)
    assert report["policies"]["argmax"] == pytest.approx(test.loc[test["prompt_id"] == "CoT", "reward"].mean())
    refused = run("init", "--prompts", prompts, "--out", work / "x", "--default", "nope", "--embedder", "hashing", ok=False)
    assert refused.exit_code == 2 and "--default 'nope' is not one of the prompts" in refused.stderr


def test_several_logs_train_together_with_the_harness_log_weighed_as_uniform(mawps):
    work, train, _, _ = mawps
    rng = np.random.default_rng(0)
    prompts = list(pd.unique(train["prompt_id"]))
    half = pd.unique(train["query_id"])
    harness = write_logs(train[train["query_id"].isin(half[:250])], work / "harness.parquet")
    picks = {q: prompts[rng.integers(6)] for q in half[250:]}
    decisions = write_logs(served_log(train, picks, 1 / 6), work / "decisions.parquet")
    result = run("train", harness, decisions, "--out", work / "both", "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    training = json.loads(result.stdout)["training"]
    assert training["query_instances"] == 500 and training["rows"] == 250 * 6 + 250 and training["feedback"] == "partial"
    assert training["propensities"]["source"] == "logged" and training["propensities"]["min"] == pytest.approx(1 / 6)
    nopropensity = write_logs(served_log(train, picks, 1 / 6).drop(columns="propensity"), work / "nop.parquet")
    refused = run("train", nopropensity, decisions, "--out", work / "x", "--embedder", "hashing", ok=False)
    assert refused.exit_code == 2 and "cannot be combined with logs that have one" in refused.stderr


def test_two_logs_numbering_their_cases_alike_keep_their_questions_apart(mawps, data_dir):
    """Issue 21, item 2: promptfoo numbers its cases test-0, test-1, ... in every suite. Two
    suites (60 MAWPS and 60 GSM8K questions, the same two prompts) under the same ids are
    120 query instances, not 60 averaged ones; one log holding both is refused in one line."""
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    work, train, _, _ = mawps
    gsm8k = build_logs(data_dir, "gsm8k", TRAINING_PROMPTS)
    gsm8k = gsm8k[gsm8k["split"] == "train"]

    def suite(frame: pd.DataFrame) -> pd.DataFrame:
        rows = frame[frame["query_id"].isin(pd.unique(frame["query_id"])[:60]) & frame["prompt_id"].isin(["CoT", "APE"])]
        number = {q: f"test-{i}" for i, q in enumerate(pd.unique(rows["query_id"]))}
        return rows.assign(query_id=rows["query_id"].map(number)).drop(columns="split").reset_index(drop=True)

    first, second = suite(train), suite(gsm8k)
    assert set(first["query_id"]) == set(second["query_id"]) and not set(first["query"]) & set(second["query"])
    a, b = write_logs(first, work / "suite_a.parquet"), write_logs(second, work / "suite_b.parquet")
    result = run("train", a, b, "--out", work / "two-suites", "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    training = json.loads(result.stdout)["training"]
    assert training["query_instances"] == 120 and training["distinct_queries"] == 120 and training["rows"] == 240
    assert "60 query id(s) name different questions in different logs (e.g. 'test-0'); each log's are kept apart as '<log>/<id>' " \
           "(logs: suite_a, suite_b)" in result.stderr and "averaged" not in result.stderr
    same = run("train", a, write_logs(first, work / "suite_a_again.parquet"), "--out", work / "same-suite", "--model", "knn",
               "--embedder", "hashing", "--cache-dir", work / "emb")
    assert json.loads(same.stdout)["training"]["query_instances"] == 60 and "kept apart" not in same.stderr  # the same questions: shared ids
    both = write_logs(pd.concat([first, second], ignore_index=True), work / "both_suites.parquet")
    refused = run("train", both, "--out", work / "x", "--embedder", "hashing", ok=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 2 and len(errors) == 1 and "column 'query': query_id 'test-0' holds a different question here" in errors[0]


def test_the_incumbent_stays_unless_an_option_beats_it(mawps):
    """A deployment that served the best prompt: its own traffic cannot show a better policy,
    so retraining on it keeps the incumbent and leaves --out as it was."""
    work, train, _, prompts = mawps
    run("init", "--prompts", prompts, "--out", work / "deployed", "--default", "nan", "--embedder", "hashing", "--cache-dir", work / "emb")
    before = (work / "deployed" / "bundle.json").read_bytes()
    greedy = {q: "nan" for q in pd.unique(train["query_id"])}  # served without exploring: only 'nan' is ever logged
    log = write_logs(served_log(train, greedy, 1.0), work / "greedy.parquet")
    result = run("train", log, "--out", work / "deployed", "--incumbent", work / "deployed", "--embedder", "hashing",
                 "--cache-dir", work / "emb")
    summary = json.loads(result.stdout)
    assert summary == {"kept": "incumbent", "incumbent": str(work / "deployed"), "bundle": str(work / "deployed"), "written": False,
                       "reason": "no option beat the deployed bundle's policy by the selection rule; it stays"}
    assert (work / "deployed" / "bundle.json").read_bytes() == before and "| incumbent |" in result.stderr


def test_a_policy_that_beats_the_incumbent_replaces_it_and_the_comparison_says_by_how_much(mawps):
    """Uniform exploration around a poor default ('Decomp'): the best prompt clears it."""
    work, train, test, prompts = mawps
    run("init", "--prompts", prompts, "--out", work / "poor", "--default", "Decomp", "--embedder", "hashing", "--cache-dir", work / "emb")
    rng = np.random.default_rng(1)
    names = list(pd.unique(train["prompt_id"]))
    uniform = {q: names[rng.integers(6)] for q in pd.unique(train["query_id"])}
    log = write_logs(pd.concat([served_log(train, uniform, 1 / 6)] * 1), work / "uniform.parquet")
    result = run("train", log, "--out", work / "next", "--incumbent", work / "poor", "--embedder", "hashing", "--cache-dir", work / "emb")
    summary = json.loads(result.stdout)
    assert summary["chosen"]["option"] != "incumbent" and (work / "next" / "bundle.json").is_file()
    table = load_bundle(work / "next", cache_dir=work / "emb").metadata["metrics"]["model_selection"]
    assert {r["option"] for r in table} >= {"incumbent", "prior"} and next(r for r in table if r["chosen"])["cleared_baseline"]
    report = json.loads(run("evaluate", work / "next", write_logs(test, work / "test2.parquet"), "--against", work / "poor",
                            "--cache-dir", work / "emb").stdout)
    against = report["against"]
    truth = report["policies"][report["default_policy"]] - test.loc[test["prompt_id"] == "Decomp", "reward"].mean()
    assert against["difference"]["value"] == pytest.approx(truth, abs=1e-9)  # full information: the logged rewards themselves
    low, high = against["difference"]["ci"]
    assert low < against["difference"]["value"] < high and low > 0  # the new bundle is better, and the interval says so
    assert against["support"] == 1.0 and against["current"]["default_policy"] == "argmax"


def test_an_estimate_clamped_into_the_reward_range_says_so(mawps):
    """Issue 21, item 8: a log that claims each served prompt had a 10% chance makes IPS of
    a good prompt come out above 1; it is reported as 1, and its block says it was clamped."""
    work, _, test, prompts = mawps
    run("init", "--prompts", prompts, "--out", work / "cold8", "--default", "CoT", "--embedder", "hashing", "--cache-dir", work / "emb")
    rng = np.random.default_rng(8)
    names = list(pd.unique(test["prompt_id"]))
    served = served_log(test.assign(split="test"), {q: names[rng.integers(6)] for q in pd.unique(test["query_id"])}, 0.1)
    report = json.loads(run("evaluate", work / "cold8", write_logs(served, work / "claimed.parquet"), "--cache-dir", work / "emb").stdout)
    blocks = [block[name] for block in report["ope"]["estimates"].values() for name in ("ips", "dr", "dm", "snips")
              if isinstance(block.get(name), dict)]
    clamped = [b for b in blocks if "clamped" in b]
    assert clamped and all(b["clamped"]["into"] == [0, 1] for b in clamped)
    assert any(b["clamped"]["value"] > 1 and b["value"] == 1 for b in clamped)
    assert all(0 <= b["value"] <= 1 for b in blocks if b["value"] is not None)
    unclamped = [b for b in blocks if "clamped" not in b and b["value"] is not None]
    assert unclamped and all(0 <= b["ci"][0] and b["ci"][1] <= 1 for b in unclamped)


@pytest.fixture(scope="module")
def greedy_comparison(mawps):
    """A knn bundle trained on the 500 training instances against a cold bundle serving
    'Decomp', evaluated on what that deployment logged for the 300 test instances: 'Decomp'
    every time, propensity 1. (MAWPS' test instances are new samples of training questions.)"""
    work, train, test, prompts = mawps
    run("init", "--prompts", prompts, "--out", work / "decomp8", "--default", "Decomp", "--embedder", "hashing", "--cache-dir", work / "emb")
    run("train", write_logs(train, work / "train8.parquet"), "--out", work / "knn8", "--model", "knn", "--embedder", "hashing",
        "--cache-dir", work / "emb")
    greedy = served_log(test.assign(split="test"), {q: "Decomp" for q in pd.unique(test["query_id"])}, 1.0)
    result = run("evaluate", work / "knn8", write_logs(greedy, work / "greedy8.parquet"), "--against", work / "decomp8",
                 "--cache-dir", work / "emb")
    return json.loads(result.stdout), result.stderr


def test_the_comparison_on_a_log_that_never_played_the_new_pick_is_the_identified_set(greedy_comparison):
    """Issue 21, item 8: a deployment that served 'Decomp' to every test question cannot say
    how the new bundle's other picks would have done; the difference's interval spans what
    the log leaves open (each unsupported pick's reward anywhere in [0, 1]), not the reward
    model's guess, as every ope block does."""
    report, _ = greedy_comparison
    against = report["against"]
    difference = against["difference"]
    share = 1 - against["support"]
    assert against["picks_differ"] > 0 and share == pytest.approx(against["picks_differ"] / against["decisions"])
    assert difference["extrapolated"] and difference["unsupported_share"] == pytest.approx(share)
    low, high = difference["ci"]
    assert high - low >= share and -1 <= low <= difference["value"] <= high <= 1
    assert against["new"]["extrapolated"] and "extrapolated" not in against["current"]


def test_the_comparisons_reward_model_says_it_was_trained_on_these_questions(greedy_comparison):
    """Issue 21, item 6: the label said "trained on other rows" while the same run warned that
    most evaluated questions were trained on; it now says so, with the count the warning
    gives, and the difference says what it rests on."""
    report, stderr = greedy_comparison
    seen = report["seen_in_training"]
    assert 0 < seen["query_instances"] <= seen["of"] == 300
    assert f"{seen['query_instances']} of 300 evaluated query instances have a question text the model was trained on" in stderr
    note = report["against"]["reward_model"]
    assert note == report["ope"]["reward_model"]
    assert f"trained on other rows of the same questions for {seen['query_instances']} of the 300" in note
    rests_on = report["against"]["difference"]["rests_on"]
    assert "logged propensities" in rests_on and note in rests_on and "identified set" in rests_on
    assert report["ope"]["dr_rests_on"] == rests_on


def test_the_chosen_options_cv_value_is_labelled_optimistic_beside_a_held_out_fold_figure(mawps):
    """Issue 21, item 10: the CV value shown for the chosen option was measured on the folds
    that chose it. Beside it, labelled, the selection rule valued fold by fold: each fold by
    the option the rule chose on the other folds."""
    from oirl.data.matrix import LogMatrix
    from oirl.embed.cached import CachedEmbedder
    from oirl.embed.registry import get_embedder
    from oirl.learn.candidates import AUTO_CANDIDATES
    from oirl.learn.selection import select_model

    work, train, _, _ = mawps
    result = run("train", write_logs(train, work / "train10.parquet"), "--out", work / "knn10", "--model", "knn", "--embedder", "hashing",
                 "--cache-dir", work / "emb")
    chosen = json.loads(result.stdout)["cv_selection"]["chosen"]
    assert chosen["cv_value_is"].startswith("optimistic") and len(chosen["held_out_fold_choices"]) == 3
    assert 0 <= chosen["held_out_fold_value"] <= 1 and chosen["held_out_fold_se"] > 0
    assert f"the chosen option's CV value ({chosen['cv_value']:.4f}) is optimistic" in result.stderr
    assert f"the selection is worth {chosen['held_out_fold_value']:.4f}" in result.stderr
    # The figure is what its label says, on the same matrix and folds.
    matrix = LogMatrix.from_logs(train.drop(columns="split"), CachedEmbedder(get_embedder("hashing"), work / "emb").embed)
    selection = select_model(matrix, tuple(c for c in AUTO_CANDIDATES if c.model == "knn")[:3])
    held = np.empty(len(matrix.query_ids))
    for (_, test), option in zip(selection.fit.folds, selection.held_out["fold_choices"], strict=True):
        held[test] = selection.values[option][test]
    assert selection.held_out["value"] == pytest.approx(held.mean())
    picked = next(r for r in selection.table if r["chosen"])
    if set(selection.held_out["fold_choices"]) == {picked["option"]}:
        assert selection.held_out["value"] == pytest.approx(picked["value"])


def test_retraining_on_a_per_kind_deployments_own_traffic_never_ships_a_worse_bundle(tmp_path):
    """The case that made retraining worse: a bundle that serves each kind of question its own
    prompt; its greedy traffic (one prompt per query, propensity 1) alone would make the
    best logged prompt look best. With --incumbent, what retraining ships is never worse on
    new questions than what served."""
    rng = np.random.default_rng(0)
    correct = {("apples", "fruit"): 0.9, ("apples", "travel"): 0.2, ("apples", "plain"): 0.5,
               ("miles", "fruit"): 0.2, ("miles", "travel"): 0.9, ("miles", "plain"): 0.5}
    texts = {"fruit": "Count the fruit step by step.", "travel": "Use distance = speed x time.", "plain": "Answer."}

    def full_log(n: int, start: int, split: str) -> pd.DataFrame:
        rows = []
        for i in range(start, start + n):
            kind = "apples" if i % 2 else "miles"
            query = f"Question {i}: Tom has {i % 17} {kind} and gets {i % 5} more {kind}. How many {kind}?"
            for prompt_id, text in texts.items():
                rows.append({"query_id": f"q{i}", "query": query, "prompt_id": prompt_id, "prompt": text,
                             "reward": float(rng.random() < correct[kind, prompt_id]), "split": split})
        return pd.DataFrame(rows)

    train, served_traffic, test = full_log(400, 0, "train"), full_log(400, 1000, "train"), full_log(400, 5000, "test")
    options = ("--embedder", "hashing", "--cache-dir", tmp_path / "emb")
    run("train", write_logs(train, tmp_path / "train.parquet"), "--out", tmp_path / "deployed", "--model", "logistic", *options)
    deployed = load_bundle(tmp_path / "deployed", cache_dir=tmp_path / "emb")
    queries = served_traffic.drop_duplicates("query_id")
    picks = dict(zip(queries["query_id"], [r.prompt_id for r in deployed.recommend(queries["query"].tolist())], strict=True))
    log = write_logs(served_log(served_traffic, picks, 1.0), tmp_path / "decisions.parquet")
    assert log.exists() and len(set(picks.values())) == 2  # the deployment chooses by kind

    run("train", log, "--out", tmp_path / "naive", *options)  # without the incumbent
    run("train", log, "--out", tmp_path / "next", "--incumbent", tmp_path / "deployed", *options)
    test_log = write_logs(test, tmp_path / "test.parquet")

    def test_value(bundle: str) -> float:
        report = json.loads(run("evaluate", tmp_path / bundle, test_log, "--cache-dir", tmp_path / "emb").stdout)
        return report["policies"][report["default_policy"]]

    served_value = test_value("deployed")
    assert served_value > 0.8  # the per-kind choice works on new questions
    assert test_value("naive") < served_value - 0.2  # the trap: its own traffic alone ships one prompt for all
    assert not (tmp_path / "next").exists() or test_value("next") >= served_value - 0.01


def test_a_cold_incumbent_is_replaced_by_a_bundle_with_the_same_choice_and_a_reward_model(mawps):
    """A cold bundle serving the best prompt, explored uniformly: nothing beats its choice, but
    keeping it would keep exploration uniform forever. The new bundle makes the same choice
    and carries a reward model whose rankings exploration follows."""
    work, train, _, prompts = mawps
    rng = np.random.default_rng(2)
    names = list(pd.unique(train["prompt_id"]))
    uniform = pd.concat([served_log(train, {q: names[rng.integers(6)] for q in pd.unique(train["query_id"])}, 1 / 6)
                         .assign(query_id=lambda f, k=k: f["query_id"] + f"-{k}") for k in range(3)])
    best = uniform.groupby("prompt_id")["reward"].mean().idxmax()
    arms = work / "arms-best.jsonl"  # the best arm names a model: the retrained bundle keeps it (the log cannot say it)
    arms.write_text("".join(json.dumps({**json.loads(line), **({"model": "small-llm", "params": {"temperature": 0.2}}
                                                                if json.loads(line)["prompt_id"] == best else {})}) + "\n"
                            for line in prompts.read_text().splitlines()))
    run("init", "--prompts", arms, "--out", work / "cold-best", "--default", best, "--embedder", "hashing", "--cache-dir", work / "emb")
    log = write_logs(uniform, work / "uniform3.parquet")
    result = run("train", log, "--out", work / "cold-best", "--incumbent", work / "cold-best", "--embedder", "hashing",
                 "--cache-dir", work / "emb")
    summary = json.loads(result.stdout)
    assert "kept" not in summary, result.stderr
    assert summary["chosen"]["option"] == "prior"
    new = load_bundle(work / "cold-best", cache_dir=work / "emb")
    assert new.model is not None and new.default_prompt_id == best
    # The incumbent's explicit arm stays; the other arms name the model the log says earned their outcomes.
    assert new.arms == {p: {"model": "small-llm", "params": {"temperature": 0.2}} if p == best else {"model": "llama-2-7b-chat"}
                        for p in names}
    table = {r["option"]: r for r in new.metadata["metrics"]["model_selection"]}
    assert not table["incumbent"]["chosen"] and table["prior"]["chosen"] and not table["prior"]["cleared_baseline"]


def test_a_cold_incumbent_whose_default_is_the_clear_winner_is_replaced_without_a_crash(mawps):
    """Issue 21, item 1: a cold bundle whose default ('CoT', reward 1) beats the only other
    prompt ('APE', reward 0) on every question. No model beats the prior, the prior has the
    best value in the table, and the new bundle must still carry a model (no KeyError)."""
    work, train, _, _ = mawps
    keep = pd.unique(train["query_id"])[:120]
    rows = train[train["query_id"].isin(keep) & train["prompt_id"].isin(["CoT", "APE"])]
    rows = rows.assign(reward=(rows["prompt_id"] == "CoT").astype(float))
    prompts = work / "two-prompts.jsonl"
    table = rows.drop_duplicates("prompt_id")
    prompts.write_text("".join(json.dumps({"prompt_id": p, "prompt": t}) + "\n" for p, t in zip(table["prompt_id"], table["prompt"], strict=True)))
    run("init", "--prompts", prompts, "--out", work / "cold-cot", "--default", "CoT", "--embedder", "hashing", "--cache-dir", work / "emb")
    log = write_logs(rows.drop(columns="split"), work / "cot-wins.parquet")
    result = run("train", log, "--out", work / "after-cot", "--incumbent", work / "cold-cot", "--model", "knn", "--embedder", "hashing",
                 "--cache-dir", work / "emb")
    summary = json.loads(result.stdout)
    assert summary["chosen"]["option"] == "prior" and summary["reward_model"]["kind"] == "knn"
    new = load_bundle(work / "after-cot", cache_dir=work / "emb")
    assert new.model is not None and new.default_prompt_id == "CoT"


def test_an_incumbent_trained_on_these_decisions_is_valued_by_its_recipe_out_of_fold(mawps):
    """Retraining on decisions the deployed bundle already learned from: its own picks there
    rest on outcomes it has seen (in sample), so its recipe is cross-fitted like every
    option instead, and it cannot win by memory."""
    from oirl.learn.engine import InMemoryEngine, TrainOptions
    from oirl.learn.selection import IncumbentKept
    from oirl.learn.train import incumbent_recipe, train_recommender

    work, train, _, _ = mawps
    rng = np.random.default_rng(3)
    names = list(pd.unique(train["prompt_id"]))
    log = served_log(train, {q: names[rng.integers(6)] for q in pd.unique(train["query_id"])}, 1 / 6)
    options = {"embedder": "hashing", "cache_dir": work / "emb", "model": "knn"}
    deployed = train_recommender(log, **options)
    engine, settings = InMemoryEngine(), TrainOptions(**options)
    matrix, _ = engine.with_propensities(engine.prepare(log, settings).matrix, settings)
    recipe = incumbent_recipe(deployed, matrix)
    assert recipe is not None and recipe[0].model == "knn" and recipe[1:] == (deployed.default_policy, deployed.margin)
    try:
        table = train_recommender(log, incumbent=deployed, **options).metadata["metrics"]["model_selection"]
    except IncumbentKept as kept:
        table = kept.rows
    incumbent = next(r for r in table if r["option"] == "incumbent")
    assert "recipe cross-fitted" in incumbent["policy"]
    same = next(r for r in table if r["option"] == f"knn {deployed.default_policy}")
    if deployed.default_policy == "argmax":
        assert incumbent["value"] == pytest.approx(same["value"])  # the same recipe on the same folds


def test_arms_carry_a_model_and_generation_parameters_through_init_and_the_bundle(mawps, tmp_path):
    """`oirl init --prompts` takes "model" and "params"; the bundle keeps them; bad ones are one line naming the record."""
    work, *_ = mawps
    arms = tmp_path / "arms.jsonl"
    arms.write_text(json.dumps({"prompt_id": "cot-cold", "prompt": "Let's think step by step: ", "model": "small-llm",
                                "params": {"temperature": 0.2, "max_tokens": 64}}) + "\n"
                    + json.dumps({"prompt_id": "cot-warm", "prompt": "Let's think step by step: ", "params": {"temperature": 1}}) + "\n"
                    + json.dumps({"prompt_id": "plain", "prompt": "The answer is:"}) + "\n")
    result = run("init", "--prompts", arms, "--out", tmp_path / "b", "--embedder", "hashing", "--cache-dir", work / "emb")
    assert json.loads(result.stdout)["arms"] == {"cot-cold": {"model": "small-llm", "params": {"temperature": 0.2, "max_tokens": 64}},
                                                 "cot-warm": {"params": {"temperature": 1.0}}}
    bundle = load_bundle(tmp_path / "b", cache_dir=work / "emb")
    assert bundle.arms == json.loads(result.stdout)["arms"] and "plain" not in bundle.arms
    entries = json.loads((tmp_path / "b" / "bundle.json").read_text())["prompts"]
    assert "model" not in entries[2] and "params" not in entries[2]  # an arm without settings: the entry as before
    for bad, needle in (({"params": {"temperature": 3}}, "field 'params.temperature'"), ({"params": {"seed": 1}}, "field 'params.seed'"),
                        ({"model": ""}, "field 'model'")):
        arms.write_text(json.dumps({"prompt_id": "x", "prompt": "Answer: ", **bad}) + "\n")
        refused = run("init", "--prompts", arms, "--out", tmp_path / "x", "--embedder", "hashing", ok=False)
        assert refused.exit_code == 2 and f"arms.jsonl, record 1, {needle}" in refused.stderr and "Traceback" not in refused.output
