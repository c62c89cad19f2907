"""Routing on a budget: RouteLLM's router metrics on hand-computed cases, the exact path of
the cost-aware policy over every cost weight, `oirl calibrate` through the CLI on real
CRUXEval bundles, and the live shares counted by a real server."""

import hashlib
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from oirl.cli.main import cli
from oirl.data.logs import write_logs
from oirl.errors import OirlError
from oirl.evaluation.costs import cost_axis
from oirl.evaluation.routing import area_under, blind_apgr, curve_metrics, first_reaching, router_curve, routing_report
from oirl.policy.budget import cost_weight_path, weight_for_limit
from oirl.policy.policies import CostAware, PolicyContext, best_of
from oirl.recommender.bundle import load_bundle

CHEAP, DEAR = "deepseek-base-1.3b:direct", "gpt-4-0613:cot"  # CRUXEval's cheapest and dearest arms (ties: the better mean reward)

# Four queries, arm A (cost 1) and arm B (cost 3): r_A = .25, r_B = .75.
PAIR_SCORES = np.array([[0.2, 0.7], [0.5, 0.6], [0.6, 0.4], [0.3, 0.6]])
PAIR_REWARDS = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
PAIR = PolicyContext.of(["A", "B"], cost=[1.0, 3.0])


def test_pair_metrics_match_the_hand_computed_case():
    """B's predicted gain d = S_B - S_A is .5, .1, -.2, .3, so the cost-aware policy sends q1
    to B for lambda < .5 / (3 - 1) = .25, q4 for lambda < .15, q2 below .05, q3 below -.1.
    In that order the shares of calls to B are 0, .25, .5, .75, 1 and the mean rewards
    .25, .5, .75, .75, .75: PGR 0, .5, 1, 1, 1. APGR = .25 x (0 + .5) / 2 + .25 x (.5 + 1) / 2
    + .25 + .25 = .75. CPT(50%) = .25; CPT(80%) = .25 + (.8 - .5) / (1 - .5) x .25 = .40."""
    curve = router_curve(PAIR_SCORES, PAIR_REWARDS, PAIR, 0, 1)
    np.testing.assert_allclose(curve.x, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(curve.cost_weight, [0.25, 0.15, 0.05, -0.1, -np.inf])
    assert curve_metrics(curve) == pytest.approx({"apgr": 0.75, "cpt50": 0.25, "cpt80": 0.40})
    report = routing_report(PAIR_SCORES, PAIR_REWARDS, PAIR)
    [pair] = report["pairs"]
    assert (pair["cheap"], pair["expensive"], pair["reward"]) == ("A", "B", [0.25, 0.75])
    assert {k: pair[k] for k in ("apgr", "cpt50", "cpt80")} == pytest.approx({"apgr": 0.75, "cpt50": 0.25, "cpt80": 0.40})
    whole = report["all_arms"]  # two arms: the normalised cost is the share of calls to B, and both agree
    assert {k: whole[k] for k in ("apgr", "cpt50", "cpt80")} == pytest.approx({"apgr": 0.75, "cpt50": 0.25, "cpt80": 0.40})


def test_whole_set_metrics_match_the_hand_computed_case():
    """Arms A, B, C cost 0, 1, 2; mean rewards 0, .5, 1: cheap A, expensive (best) C.
    q1 (scores .1, .5, .6) takes C below lambda .1 (where B's line crosses C's), B up to .4,
    then A; q2 (.3, .4, .9) takes C up to .3 (A's line crosses before B's), then A. Mean
    costs and rewards by interval: (2, 1), (1.5, 1), (.5, .5), (0, 0): normalised costs 1,
    .75, .25, 0 with PGR 1, 1, .5, 0. APGR = .25 x .25 + .5 x .75 + .25 x 1 = .6875;
    CPT(50%) = .25; CPT(80%) = .25 + (.8 - .5) / (1 - .5) x .5 = .55."""
    scores = np.array([[0.1, 0.5, 0.6], [0.3, 0.4, 0.9]])
    rewards = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    context = PolicyContext.of(["A", "B", "C"], cost=[0.0, 1.0, 2.0])
    curve = router_curve(scores, rewards, context, 0, 2)
    np.testing.assert_allclose(curve.x, [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(curve.cost_weight, [0.4, 0.3, 0.1, -np.inf])
    whole = routing_report(scores, rewards, context, cost_weight=0.35)["all_arms"]
    assert (whole["cheap"], whole["expensive"]) == ("A", "C")
    assert {k: whole[k] for k in ("apgr", "cpt50", "cpt80")} == pytest.approx({"apgr": 0.6875, "cpt50": 0.25, "cpt80": 0.55})
    # lambda .35 lies in (.3, .4): q1 on B, q2 on A
    at = whole["at_bundle_cost_weight"]
    assert at.pop("shares") == {"A": 0.5, "B": 0.5}
    assert at == pytest.approx({"cost_weight": 0.35, "cost": 0.5, "reward": 0.5, "normalised_cost": 0.25, "pgr": 0.5})


def test_the_query_blind_baseline_is_the_upper_hull_of_the_arms():
    """Arms A, B, C, D cost 0, 1, 2, .5 with mean rewards 0, .5, 1, .75: normalised costs
    0, .5, 1, .25 and PGR 0, .5, 1, .75. B lies below the chord from D to C, so the hull is
    (0, 0), (.25, .75), (1, 1): area .25 x .375 + .75 x .875 = .75. Without D the arms
    are collinear: .5, as for any two arms."""
    rewards = np.array([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5]])
    assert blind_apgr(rewards, np.array([0.0, 1.0, 2.0, 0.5]), 0, 2) == pytest.approx(0.75)
    assert blind_apgr(rewards[:, :3], np.array([0.0, 1.0, 2.0]), 0, 2) == pytest.approx(0.5)
    assert blind_apgr(PAIR_REWARDS, PAIR.cost, 0, 1) == pytest.approx(0.5)
    scores = np.array([[0.1, 0.5, 0.6, 0.2], [0.3, 0.4, 0.9, 0.2]])
    whole = routing_report(scores, rewards, PolicyContext.of(list("ABCD"), cost=[0.0, 1.0, 2.0, 0.5]))["all_arms"]
    assert whole["query_blind_apgr"] == pytest.approx(0.75)


def test_a_router_blind_to_the_query_scores_apgr_one_half_and_gaps_that_are_not_there_are_refused():
    same = np.tile([0.4, 0.6], (4, 1))  # every query alike: they all switch at one weight, a straight line from (0, 0) to (1, 1)
    metrics = curve_metrics(router_curve(same, PAIR_REWARDS, PAIR, 0, 1))
    assert metrics == pytest.approx({"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8})
    context = PolicyContext.of(["A", "B", "C"], cost=[1.0, 1.0, 3.0])
    rewards = np.column_stack([PAIR_REWARDS[:, 1], PAIR_REWARDS[:, 0], PAIR_REWARDS[:, 0]])  # the cheapest arm is the best
    report = routing_report(np.column_stack([PAIR_SCORES, PAIR_SCORES[:, 1]]), rewards, context)
    assert [(p["cheap"], p["expensive"]) for p in report["pairs"]] == [("A", "C"), ("B", "C")]  # A and B cost alike: no pair
    assert all(p["apgr"] is None and "not better" in p["note"] for p in report["pairs"])
    assert report["all_arms"]["apgr"] is None and "cheapest arm is also the best" in report["all_arms"]["note"]
    unlogged = PAIR_REWARDS.copy()
    unlogged[0, 1] = np.nan
    assert routing_report(PAIR_SCORES, unlogged, PAIR) is None  # one arm logged everywhere: nothing to route between


def test_area_and_first_crossing_on_steps_and_curves_that_stop_short():
    x, y = np.array([0.0, 0.5, 0.5, 1.0]), np.array([0.0, 0.2, 0.6, 0.6])  # a vertical step at .5
    assert area_under(x, y) == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert first_reaching(x, y, 0.4) == pytest.approx(0.5)
    assert first_reaching(x, y, 0.7) is None
    assert area_under(np.array([0.2, 0.6]), np.array([0.5, 1.0])) == pytest.approx(0.2 * 0.5 + 0.4 * 0.75 + 0.4 * 1.0)  # flat outside
    assert area_under(np.array([0.0, 2.0]), np.array([0.0, 2.0])) == pytest.approx(0.5)  # only [0, 1] counts


@pytest.mark.parametrize("seed", range(6))
def test_the_path_is_the_cost_aware_policy_at_every_weight(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 8, size=(40, 5)) / 8  # coarse: ties between candidates and between queries, as trees give
    cost = np.array([0.0, 1.0, 1.0, 2.5, 4.0])[rng.permutation(5)]  # two candidates of one price
    prior = rng.random(5)
    context = PolicyContext.of(list("abcde"), prior=prior, cost=cost)
    path = cost_weight_path(scores, cost, prior)
    assert np.all(np.diff(path.breaks) > 0) and np.all(np.diff(path.means(cost)) <= 1e-12)  # the mean cost only falls
    dearest = (cost == cost.max()).astype(float)
    assert np.all(np.diff(path.means(dearest)) <= 1e-12)  # and so does the dearest candidate's share
    for t, (low, high) in enumerate(zip(path.lower, path.upper, strict=True)):
        weight = (low + high) / 2 if np.isfinite(low) and np.isfinite(high) else (high - 1 if np.isfinite(high) else low + 1)
        expected = best_of(scores - weight * cost[None, :], np.ones(scores.shape, dtype=bool), prior)[0]
        assert path.picks(t).tolist() == expected.tolist(), (t, weight)
        if weight >= 0:
            assert path.picks(t).tolist() == CostAware(context, weight).choose(scores).tolist()
        assert path.means(cost)[t] == pytest.approx(cost[expected].mean())


def test_the_smallest_weight_within_a_limit_by_hand():
    """The pair case: B's share is .75 at lambda = 0, .5 on (.05, .15), .25 on (.15, .25), 0 above .25."""
    share_of_b = np.array([0.0, 1.0])
    assert weight_for_limit(PAIR_SCORES, PAIR, share_of_b, 0.8).cost_weight == 0.0
    for limit, weight, measured in ((0.5, 0.10, 0.5), (0.3, 0.20, 0.25), (0.0, 0.50, 0.0)):
        found = weight_for_limit(PAIR_SCORES, PAIR, share_of_b, limit)
        assert (found.cost_weight, found.measured) == pytest.approx((weight, measured))
    found = weight_for_limit(PAIR_SCORES, PAIR, PAIR.cost, 2.0)  # mean cost 1 + 2 x share of B
    assert (found.cost_weight, found.measured) == pytest.approx((0.10, 2.0))
    with pytest.raises(OirlError, match="no cost weight keeps it within 0.5: even the cheapest candidates give 1"):
        weight_for_limit(PAIR_SCORES, PAIR, PAIR.cost, 0.5)


# --------------------------------------------------------------------------- oirl calibrate on real bundles


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def digest(directory):
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_queries(texts, path):
    path.write_text("".join(json.dumps({"query": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def crux_split(data_dir):
    from oirl.reproduce.cruxeval import split_logs

    return split_logs(data_dir)


@pytest.fixture(scope="module")
def two_arms(crux_split, tmp_path_factory):
    """A knn bundle (hashing embedder) on CRUXEval's cheapest and dearest arms, 300 training
    functions; calibration queries: 120 held-out functions."""
    work = tmp_path_factory.mktemp("two_arms")
    logs = crux_split[crux_split["prompt_id"].isin([CHEAP, DEAR])]
    train_ids = logs.loc[logs["split"] == "train", "query_id"].drop_duplicates().head(300)
    log = write_logs(logs[logs["query_id"].isin(train_ids)], work / "two.parquet")
    ok("train", log, "--out", work / "model", "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    texts = logs.loc[logs["split"] == "test"].drop_duplicates("query_id")["query"].head(120).tolist()
    return work, write_queries(texts, work / "queries.jsonl"), texts


def shares_of(stdout):
    picks = [json.loads(line)["prompt_id"] for line in stdout.splitlines()]
    return {arm: picks.count(arm) / len(picks) for arm in (CHEAP, DEAR)}


def test_calibrate_caps_the_dearest_arms_share_and_writes_a_new_bundle(two_arms):
    work, queries, texts = two_arms
    before = digest(work / "model")
    summary = json.loads(ok("calibrate", work / "model", "--queries", queries, "--max-share", f"{DEAR}=0.3", "--out", work / "capped",
                            "--cache-dir", work / "emb").stdout)
    assert digest(work / "model") == before  # --out: the original stays as it was
    policy = json.loads((work / "capped" / "bundle.json").read_text())["policy"]
    assert policy["default"] == summary["default_policy"] == "cost-aware" and policy["cost_weight"] == summary["cost_weight"] > 0
    calibration = policy["calibration"]
    assert {k: calibration[k] for k in ("target", "prompt_id", "limit", "queries", "source", "seen_in_training")} == {
        "target": "max_share", "prompt_id": DEAR, "limit": 0.3, "queries": 120, "source": "queries.jsonl", "seen_in_training": 0}
    assert 0.3 - 0.05 < calibration["measured"] <= 0.3 and calibration["shares"][DEAR] == calibration["measured"]
    assert summary["before"] == {"default_policy": load_bundle(work / "model").default_policy, "cost_weight": None}
    # The bundle's default policy is now the calibrated one: recommend gives the measured share on the same queries.
    served = shares_of(ok("recommend", work / "capped", "--queries", queries, "--cache-dir", work / "emb").stdout)
    assert served[DEAR] == pytest.approx(calibration["measured"])
    argmax = shares_of(ok("recommend", work / "capped", "--queries", queries, "--cost-weight", "0", "--cache-dir", work / "emb").stdout)
    assert argmax[DEAR] > calibration["measured"]  # an explicit weight still wins over the bundle's
    original, capped = load_bundle(work / "model"), load_bundle(work / "capped")
    np.testing.assert_array_equal(original.score(texts[:10]), capped.score(texts[:10]))  # the model travels unchanged
    assert capped.fingerprint != original.fingerprint


def test_calibrating_on_training_questions_warns_and_says_so_in_the_record(two_arms, tmp_path):
    work, _, _ = two_arms
    trained = pd.read_parquet(work / "two.parquet").drop_duplicates("query_id")["query"].head(50).tolist()
    result = ok("calibrate", work / "model", "--queries", write_queries(trained, tmp_path / "seen.jsonl"), "--budget", "20",
                "--out", tmp_path / "model", "--cache-dir", work / "emb")
    assert "warning: seen.jsonl: 50 of 50 calibration queries are questions the bundle was trained on" in result.stderr
    assert load_bundle(tmp_path / "model").calibration["seen_in_training"] == 50


def test_calibrate_in_place_to_a_budget_and_evaluate_reports_the_routing_metrics(two_arms, crux_split, tmp_path):
    work, queries, _ = two_arms
    target = tmp_path / "model"
    ok("calibrate", work / "model", "--queries", queries, "--budget", "1e9", "--out", target, "--cache-dir", work / "emb")  # a copy to rewrite
    assert load_bundle(target).cost_weight == 0.0  # argmax is within any budget over the dearest arm's cost
    summary = json.loads(ok("calibrate", target, "--queries", queries, "--budget", "20", "--cache-dir", work / "emb").stdout)
    rec = load_bundle(target)
    assert summary["bundle"] == str(target) and rec.cost_weight == summary["cost_weight"] > 0
    assert rec.calibration["target"] == "budget" and rec.calibration["prompt_id"] is None
    assert rec.calibration["measured"] == pytest.approx(rec.calibration["mean_cost"]) and rec.calibration["measured"] <= 20
    assert not [p for p in tmp_path.iterdir() if p.name != "model"]  # no temporary directory left behind
    logs = crux_split[crux_split["prompt_id"].isin([CHEAP, DEAR]) & (crux_split["split"] == "test")]
    log = write_logs(logs, tmp_path / "test.parquet")
    report = json.loads(ok("evaluate", target, log, "--cache-dir", work / "emb", "--plot", tmp_path / "curve.png").stdout)
    [pair] = report["routing"]["pairs"]
    whole = report["routing"]["all_arms"]
    assert (pair["cheap"], pair["expensive"]) == (CHEAP, DEAR) and pair["apgr"] == whole["apgr"] and pair["cpt50"] == whole["cpt50"]
    assert 0 <= whole["cpt50"] <= whole["cpt80"] <= 1
    at = whole["at_bundle_cost_weight"]
    assert at["cost_weight"] == rec.cost_weight and report["policies"]["cost-aware"] == pytest.approx(at["reward"])
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_on_dask_values_the_cost_aware_policy_at_the_calibrated_weight(two_arms, crux_split, tmp_path):
    """Issue 21, item 7: --dask valued the cost-aware policy at lambda = 0; both engines now
    build the report with one function, at the bundle's calibrated lambda."""
    pytest.importorskip("distributed")
    work, queries, _ = two_arms
    ok("calibrate", work / "model", "--queries", queries, "--max-share", f"{DEAR}=0.3", "--out", tmp_path / "capped",
       "--cache-dir", work / "emb")
    assert load_bundle(tmp_path / "capped").cost_weight > 0
    logs = crux_split[crux_split["prompt_id"].isin([CHEAP, DEAR]) & (crux_split["split"] == "test")]
    log = write_logs(logs, tmp_path / "test.parquet")
    memory, dask = (json.loads(ok("evaluate", tmp_path / "capped", log, "--cache-dir", work / "emb", *extra).stdout)
                    for extra in ((), ("--dask", "local:1")))
    at = memory["routing"]["all_arms"]["at_bundle_cost_weight"]
    assert memory["policies"]["cost-aware"] == pytest.approx(at["reward"]) != pytest.approx(memory["policies"]["argmax"])
    for key in ("policies", "gap_recovered", "oracle", "random", "cost_sweep", "routing"):
        assert flat(dask[key]) == pytest.approx(flat(memory[key])), key


def flat(value, prefix=""):
    """A nested report block as {path: number} (pytest.approx compares flat mappings)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}.").items()}
    return {prefix: value}


def test_calibrate_every_arm_to_a_budget(crux_split, tmp_path):
    ids = crux_split.loc[crux_split["split"] == "train", "query_id"].drop_duplicates().head(100)
    log = write_logs(crux_split[crux_split["query_id"].isin(ids)], tmp_path / "all.parquet")
    ok("train", log, "--out", tmp_path / "model", "--model", "knn", "--embedder", "hashing", "--cache-dir", tmp_path / "emb")
    texts = crux_split.loc[crux_split["split"] == "test"].drop_duplicates("query_id")["query"].head(80).tolist()
    pd.DataFrame({"query": texts}).to_parquet(tmp_path / "queries.parquet")
    summary = json.loads(ok("calibrate", tmp_path / "model", "--queries", tmp_path / "queries.parquet", "--budget", "5",
                            "--cache-dir", tmp_path / "emb").stdout)
    rec = load_bundle(tmp_path / "model")
    assert len(rec.prompts) == 37 and summary["calibration"]["measured"] <= 5 and rec.cost_weight == summary["cost_weight"]
    picks = [r.prompt_id for r in rec.recommend(texts)]
    assert np.mean([rec.costs[p] for p in picks]) == pytest.approx(summary["calibration"]["measured"])
    assert summary["calibration"]["shares"] == pytest.approx({p: picks.count(p) / 80 for p in rec.costs})


@pytest.fixture(scope="module")
def priceless(two_arms, tmp_path_factory):
    """The two-arm bundle's training log without its cost column, trained the same way."""
    work, _, _ = two_arms
    out = tmp_path_factory.mktemp("priceless")
    log = write_logs(pd.read_parquet(work / "two.parquet").drop(columns="cost"), out / "free.parquet")
    ok("train", log, "--out", out / "model", "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    return out / "model"


def test_plot_without_costs_writes_the_report_and_exits_0(two_arms, priceless, crux_split, tmp_path):
    """Issue 21, item 11: the report was written, then the command exited 2."""
    work, _, _ = two_arms
    logs = crux_split[crux_split["prompt_id"].isin([CHEAP, DEAR]) & (crux_split["split"] == "test")].drop(columns="cost")
    log = write_logs(logs, tmp_path / "free.parquet")
    result = ok("evaluate", priceless, log, "--cache-dir", work / "emb", "--plot", tmp_path / "curve.png", "--out", tmp_path / "r.json")
    report = json.loads(result.stdout)
    assert report["plot"]["written"] is False and "needs a cost for every evaluated prompt" in report["plot"]["reason"]
    assert "was not drawn" in result.stderr and not (tmp_path / "curve.png").exists()
    assert json.loads((tmp_path / "r.json").read_text())["policies"] == report["policies"]


@pytest.mark.parametrize("costs, unit, scale", [((0.5, 4.0), "dollars per call", "linear"), ((0.0195, 54.0), None, "log")])
def test_the_cost_axis_has_ticks_and_the_unit_it_is_given(two_arms, crux_split, tmp_path, costs, unit, scale):
    """Issue 21, item 11: symlog above 0.1 left one tick (10^0) for costs within a decade,
    and the axis said milli-dollars whatever the costs were in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work, _, _ = two_arms
    logs = crux_split[crux_split["prompt_id"].isin([CHEAP, DEAR]) & (crux_split["split"] == "test")]
    log = write_logs(logs, tmp_path / "test.parquet")
    (tmp_path / "costs.json").write_text(json.dumps(dict(zip((CHEAP, DEAR), costs, strict=True))))
    report = json.loads(ok("evaluate", work / "model", log, "--cache-dir", work / "emb", "--costs", tmp_path / "costs.json",
                           "--plot", tmp_path / "curve.png", *(("--cost-unit", unit) if unit else ())).stdout)
    axis = report["plot"]
    assert axis["written"] and axis["x_scale"] == scale and (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "milli" not in axis["x_label"] and (unit or "the unit of the costs given") in axis["x_label"]
    fig, ax = plt.subplots()  # the ticks matplotlib shows within the arms' range, on the axis oirl sets
    ax.plot(list(costs), [0, 1])
    cost_axis(ax, np.array(costs), unit)
    fig.canvas.draw()
    shown = [t for t in ax.xaxis.get_majorticklocs() if costs[0] <= t <= costs[1]]
    plt.close(fig)
    assert len(shown) >= 3, shown


@pytest.mark.parametrize("options, message", [
    (["--max-share", "nope:arm=0.3"], "--max-share: unknown prompt 'nope:arm' (the bundle's: "),
    (["--max-share", f"{DEAR}=1.5"], "the share must be within [0, 1], got 1.5"),
    (["--max-share", f"{DEAR}=-0.1"], "the share must be within [0, 1], got -0.1"),
    (["--max-share", f"{DEAR}=lots"], "the share 'lots' is not a number"),
    (["--max-share", "0.3"], "expected ARM=SHARE"),
    (["--max-share", f"{CHEAP}=0.3"], "caps the share of the dearest prompt"),
    (["--budget", "0.001"], "--budget 0.001 is below the cheapest prompt's cost (0.0195)"),
    (["--budget", "1", "--max-share", f"{DEAR}=0.3"], "give exactly one of --max-share ARM=SHARE or --budget COST"),
    ([], "give exactly one of"),
    (["--max-share", f"{DEAR}=0.3", "--priceless"], "the bundle has no cost for prompt(s)"),
    (["--budget", "5", "--queries-missing"], "no such file"),
])
def test_a_bad_target_is_one_error_line_and_leaves_the_bundle_untouched(two_arms, priceless, options, message):
    work, queries, _ = two_arms
    model = priceless if "--priceless" in options else work / "model"
    options = [o for o in options if o != "--priceless"]
    if "--queries-missing" in options:
        options, queries = [o for o in options if o != "--queries-missing"], work / "absent.jsonl"
    before = digest(model)
    siblings = sorted(p.name for p in model.parent.iterdir())
    result = run("calibrate", model, "--queries", queries, *options, "--cache-dir", work / "emb")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert digest(model) == before and sorted(p.name for p in model.parent.iterdir()) == siblings


def test_calibrate_end_to_end_with_minilm_on_cruxeval(crux_split, tmp_path):
    """The real MiniLM at small size: train on 150 functions, calibrate on 60 held-out ones, evaluate on 60 others."""
    logs = crux_split[crux_split["prompt_id"].isin([CHEAP, DEAR])]
    train_ids = logs.loc[logs["split"] == "train", "query_id"].drop_duplicates().head(150)
    test = logs[logs["split"] == "test"]
    test_ids = test["query_id"].drop_duplicates()
    log = write_logs(logs[logs["query_id"].isin(train_ids)], tmp_path / "train.parquet")
    ok("train", log, "--out", tmp_path / "model", "--model", "knn", "--cache-dir", tmp_path / "emb")
    queries = write_queries(test[test["query_id"].isin(test_ids.head(60))].drop_duplicates("query_id")["query"].tolist(), tmp_path / "q.jsonl")
    summary = json.loads(ok("calibrate", tmp_path / "model", "--queries", queries, "--max-share", f"{DEAR}=0.5",
                            "--cache-dir", tmp_path / "emb").stdout)
    assert load_bundle(tmp_path / "model").embedder_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert 0.4 < summary["calibration"]["measured"] <= 0.5
    held_out = write_logs(test[test["query_id"].isin(test_ids.iloc[60:120])], tmp_path / "test.parquet")
    report = json.loads(ok("evaluate", tmp_path / "model", held_out, "--cache-dir", tmp_path / "emb").stdout)
    whole = report["routing"]["all_arms"]
    assert whole["expensive"] == DEAR and whole["apgr"] is not None and whole["curve"][0]["normalised_cost"] == pytest.approx(0, abs=1e-12)
    assert 0 < whole["at_bundle_cost_weight"]["shares"].get(DEAR, 0) < 1


def test_bench_calibrate_runs_at_toy_size(data_dir, tmp_path):
    from experiment_scripts import load

    out = tmp_path / "bench.json"
    result = load("bench_calibrate").main(["--data-dir", str(data_dir), "--embedder", "hashing", "--model", "knn", "--limit", "160",
                                           "--splits", "3", "--cache-dir", str(tmp_path / "emb"), "--out", str(out)])
    assert json.loads(out.read_text()) == result
    capped = result["max_share"]
    cheapest = {"deepseek-base-1.3b:direct", "deepseek-instruct-1.3b:direct", "phi-1:direct", "phi-1.5:direct"}  # 0.0195 a call
    assert capped["arms"][0] in cheapest and capped["arms"][1] == DEAR  # the better of the cheapest on these 120 functions
    assert sum(capped["queries"]) == result["queries"] > 50 and result["trained_on"] + result["queries"] == 160
    assert capped["on_calibration_half"] <= 0.3
    assert capped["within_3_points"] == (abs(capped["on_other_half"] - 0.3) <= 0.03)
    assert len(capped["repeated"]["values"]) == 3 and result["budget"]["arms"] == 37 and result["budget"]["on_calibration_half"] <= 5


# --------------------------------------------------------------------------- the live share, on a real server


def test_a_server_counts_what_it_served_beside_the_calibration(two_arms):
    import httpx
    from test_serve import start_server, stop

    work, queries, texts = two_arms
    ok("calibrate", work / "model", "--queries", queries, "--max-share", f"{DEAR}=0.3", "--out", work / "served", "--cache-dir", work / "emb")
    process, base = start_server(work / "served")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get("/v1/model").json()["live"]["calls"] == 0
            served = []
            for start in range(0, 100, 25):  # the bundle's default: the calibrated cost-aware policy
                answer = client.post("/v1/recommend", json={"queries": texts[start:start + 25], "top_k": 1})
                assert answer.status_code == 200 and answer.json()["policy"] == "cost-aware"
                served += [r["prompt_id"] for r in answer.json()["results"]]
            argmax = client.post("/v1/recommend", json={"queries": texts[:10], "policy": "cost-aware", "cost_weight": 0, "top_k": 1}).json()
            served += [r["prompt_id"] for r in argmax["results"]]
            described = client.get("/v1/model").json()
    finally:
        stop(process)
    live, counts = described["live"], Counter(served)
    assert live["calls"] == 110 and live["per"] == "worker process"
    assert {p: v["calls"] for p, v in live["prompts"].items()} == dict(counts)
    assert live["expensive"] == {"prompt_id": DEAR, "share": pytest.approx(counts[DEAR] / 110), "calibrated_limit": 0.3}
    assert live["mean_cost"] == pytest.approx((counts[DEAR] * 54.0 + counts[CHEAP] * 0.0195) / 110)
    calibration = described["policy"]["calibration"]
    assert described["policy"]["default"] == "cost-aware" and calibration["limit"] == 0.3 and calibration["source"] == "queries.jsonl"
    assert served[:100] == [r.prompt_id for r in load_bundle(work / "served").recommend(texts[:100])]  # the calibrated policy served
