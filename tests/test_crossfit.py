"""Cross-fitting and model selection on small hand-made matrices."""

import numpy as np
import pytest

from oirl.data.matrix import LogMatrix
from oirl.errors import OirlError
from oirl.learn.candidates import spec
from oirl.learn.crossfit import CrossFit, make_folds, policy_values, prior_values, row_values
from oirl.learn.selection import MIN_SUPPORT, choose_margin, choose_option, one_standard_error_choice, select_model
from oirl.ope.bootstrap import clustered_standard_error

INF = float("inf")


def matrix_from(rewards, texts=None, propensity=None, d=8, seed=0):
    """A LogMatrix over random unit query vectors (one per text) and prompt vectors."""
    rewards = np.asarray(rewards, dtype=float)
    n, m = rewards.shape
    texts = np.arange(n) if texts is None else np.asarray(texts)
    distinct, index = np.unique(texts, return_inverse=True)
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(len(distinct), d))
    p = rng.normal(size=(m, d))
    return LogMatrix(
        query_ids=np.array([f"q{i}" for i in range(n)]), texts=distinct.astype(str), text_index=index.ravel(),
        query_vectors=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        prompt_ids=[f"p{j}" for j in range(m)], prompt_texts=[f"prompt {j}" for j in range(m)],
        prompt_vectors=(p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32),
        rewards=rewards, propensity=propensity,
    )


def test_clustered_standard_error_treats_a_cluster_as_one_observation():
    differences = np.array([1.0, 1.0, 0.0, 0.0])
    # Cluster residual sums +1 and -1: sqrt(2 / 1 * 2) / 4 = 0.5, against 0.289 for independent rows.
    assert clustered_standard_error(differences, np.array(["a", "a", "b", "b"])) == pytest.approx(0.5)
    assert clustered_standard_error(differences, np.arange(4)) == pytest.approx(np.std(differences, ddof=1) / 2 * np.sqrt(4 / 4 * 3 / 3))


def test_one_standard_error_rule_prefers_the_simpler_option_within_the_error():
    values = {"simple": np.array([1.0, 0.0, 1.0, 0.0]), "complex": np.array([1.0, 1.0, 1.0, 0.0])}
    chosen, errors = one_standard_error_choice(values, {"simple": 0, "complex": 1}, np.arange(4))
    # The gain (.25) is within one standard error of the paired difference (.25).
    assert chosen == "simple" and errors["simple"] == pytest.approx(0.25)
    clear = {"simple": np.zeros(40), "complex": np.ones(40)}
    assert one_standard_error_choice(clear, {"simple": 0, "complex": 1}, np.arange(40))[0] == "complex"


def test_the_one_standard_error_rule_clusters_repeated_questions():
    # The complex option wins on 6 of 40 rows and loses on 2; but the 6 are samples of one question.
    simple, complex_ = np.zeros(40), np.zeros(40)
    complex_[:6] = 1
    simple[6:8] = 1
    texts = np.array(["a"] * 6 + [f"t{i}" for i in range(34)])
    options, complexity = {"simple": simple, "complex": complex_}, {"simple": 0, "complex": 1}
    # Gain .1: the independent-row standard error is .07, the clustered one .14.
    assert one_standard_error_choice(options, complexity, np.arange(40))[0] == "complex"  # rows as independent
    assert one_standard_error_choice(options, complexity, texts)[0] == "simple"  # clustered by question


def hand_fit(scores, priors, folds):
    return CrossFit(spec("knn"), np.asarray(scores, float), np.asarray(priors, float), folds)


def test_each_fold_uses_the_prior_of_its_own_training_rows():
    # Prompt 0 is best on rows 0-1, prompt 1 on rows 2-3. Held out by fold, the
    # training prior of rows 0-1's fold favours prompt 1 and vice versa.
    rewards = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    matrix = matrix_from(rewards)
    folds = [(np.array([2, 3]), np.array([0, 1])), (np.array([0, 1]), np.array([2, 3]))]
    priors = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    fit = hand_fit(np.full((4, 2), 0.5), priors, folds)
    # Always the fold's best training prompt: wrong everywhere. The prior of all rows
    # (a tie, broken by column) would have scored 0.5: that was the leak.
    np.testing.assert_array_equal(prior_values(fit, matrix), [0.0, 0.0, 0.0, 0.0])
    # Exact score ties go to the fold's prior too.
    np.testing.assert_array_equal(policy_values(fit, matrix, "argmax"), [0.0, 0.0, 0.0, 0.0])


def test_choose_margin_switches_only_when_the_gain_is_clear():
    n = 60
    rewards = np.tile([[0.0, 1.0]], (n, 1))
    rewards[:5] = [1.0, 0.0]  # the challenger wins on 55 of 60 queries
    matrix = matrix_from(rewards)
    folds = [(np.arange(30, 60), np.arange(30)), (np.arange(30), np.arange(30, 60))]
    fit = hand_fit(np.tile([[0.5, 0.9]], (n, 1)), np.tile([[0.6, 0.4]], (n, 1)), folds)
    margin, values = choose_margin(fit, matrix)
    assert margin == 0.3 and values[margin] == pytest.approx(55 / 60)  # the largest margin below the .4 gap
    assert values[INF] == pytest.approx(5 / 60)


def test_choose_margin_keeps_the_default_on_noise():
    rewards = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    matrix = matrix_from(rewards)
    scores = np.array([[0.50, 0.52, 0.10], [0.40, 0.30, 0.70], [0.60, 0.55, 0.20]])
    fit = hand_fit(scores, np.tile([[0.30, 0.25, 0.10]], (3, 1)), [(np.array([0]), np.arange(3))])
    margin, values = choose_margin(fit, matrix)
    assert values[0.2] == pytest.approx(1.0) and values[INF] == pytest.approx(2 / 3)
    assert margin == INF  # a one-query gain among three is within one standard error


def test_row_values_direct_with_full_information_and_doubly_robust_with_partial_feedback():
    rewards = np.array([[1.0, np.nan], [np.nan, 0.0]])
    propensity = np.array([[0.5, np.nan], [np.nan, 0.25]])
    reference = np.array([[0.6, 0.3], [0.2, 0.4]])
    partial = matrix_from(rewards, propensity=propensity)
    picks = np.array([0, 0])
    # Row 0 picked the logged prompt: .6 + (1 - .6) / .5 = 1.4. Row 1 did not: .2.
    np.testing.assert_allclose(row_values(picks, partial, reference), [1.4, 0.2])
    # Without propensities a partial log cannot be valued: never by a model's own predictions.
    with pytest.raises(OirlError, match="needs propensities"):
        row_values(picks, matrix_from(rewards), reference)
    full = matrix_from(np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(row_values(np.array([1, 1]), full, reference), [0.0, 1.0])


def spread(mean, standard_error, n, seed):
    """(n,) values with exactly this mean and (unclustered) standard error of the mean."""
    z = np.random.default_rng(seed).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + standard_error * np.sqrt(n) * z


def test_an_option_that_clears_the_prior_is_not_lost_to_a_simpler_one_that_does_not():
    """The case of the review: logistic +.085 at 6 standard errors, knn +.070 at 2.8; the
    rule used to pick knn as the simpler option, then drop it for failing 3 SE."""
    n = 2000
    values = {"prior": np.zeros(n), "knn argmax": spread(0.070, 0.070 / 2.8, n, 1), "logistic argmax": spread(0.085, 0.085 / 6, n, 2)}
    chosen, facts = choose_option(values, {"prior": 0, "knn argmax": 2, "logistic argmax": 4}, np.arange(n))
    assert chosen == "logistic argmax"
    assert facts["logistic argmax"]["cleared_baseline"] and not facts["knn argmax"]["cleared_baseline"]
    assert facts["knn argmax"]["gain_over_baseline"] / facts["knn argmax"]["se_vs_baseline"] == pytest.approx(2.8, rel=0.01)


def test_among_the_options_that_clear_the_simplest_within_one_error_wins_and_support_counts():
    n = 2000
    values = {"prior": np.zeros(n), "knn argmax": spread(0.080, 0.01, n, 1), "mlp argmax": spread(0.085, 0.01, n, 2)}
    complexity = {"prior": 0, "knn argmax": 2, "mlp argmax": 10}
    assert choose_option(values, complexity, np.arange(n))[0] == "knn argmax"
    # On partial feedback, a gain resting on too few logged rounds is not a gain.
    supports = {"prior": 0.0, "knn argmax": MIN_SUPPORT - 1, "mlp argmax": 5 * MIN_SUPPORT}
    chosen, facts = choose_option(values, complexity, np.arange(n), supports)
    assert chosen == "mlp argmax" and not facts["knn argmax"]["cleared_baseline"]
    none = {"prior": 0.0, "knn argmax": 0.0, "mlp argmax": 0.0}
    assert choose_option(values, complexity, np.arange(n), none)[0] == "prior"


def test_folds_never_split_a_group_and_need_enough_groups():
    matrix = matrix_from(np.zeros((12, 2)), texts=[i // 3 for i in range(12)])
    for train, test in make_folds(matrix, 3, "text"):
        assert not set(matrix.text_index[train]) & set(matrix.text_index[test])
    assert len(make_folds(matrix, 3, "instance")) == 3
    with pytest.raises(OirlError, match="at least 5 distinct query texts, got 4"):
        make_folds(matrix, 5, "text")


def planted(n_texts=120, repeats=2, signal=True, seed=0):
    """Queries in two clusters; prompt 0 wins on cluster A, prompt 1 on cluster B (or noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, 16))
    cluster = np.arange(n_texts) % 2
    q = centres[cluster] + 0.3 * rng.normal(size=(n_texts, 16))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    text_index = np.repeat(np.arange(n_texts), repeats)
    if signal:
        p_correct = np.where(cluster[text_index, None] == np.array([0, 1]), 0.9, 0.1)
    else:
        p_correct = np.full((len(text_index), 2), 0.5)
    rewards = (rng.random(p_correct.shape) < p_correct).astype(float)
    prompts = rng.normal(size=(2, 16))
    return LogMatrix(
        query_ids=np.array([f"q{i}" for i in range(len(text_index))]), texts=np.array([f"t{i}" for i in range(n_texts)]),
        text_index=text_index, query_vectors=q, prompt_ids=["a", "b"], prompt_texts=["prompt a", "prompt b"],
        prompt_vectors=(prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).astype(np.float32), rewards=rewards,
    )


CANDIDATES = (spec("knn", 1, k=10, query_tau=0.05, alpha=2.0), spec("logistic", 2, C=1.0))


def test_select_model_finds_a_planted_per_query_signal():
    selection = select_model(planted(), CANDIDATES, n_folds=3, cv_groups="text")
    chosen = [r for r in selection.table if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["option"] != "prior"
    assert chosen[0]["value"] > 0.8 and np.mean(selection.values["prior"]) < 0.6


def test_select_model_falls_back_to_the_prior_without_signal():
    selection = select_model(planted(signal=False), CANDIDATES, n_folds=3, cv_groups="text")
    assert [r["option"] for r in selection.table if r["chosen"]] == ["prior"]
    assert selection.policy == "conservative" and selection.margin == INF


def test_logistic_regression_personalises_only_with_interaction_features():
    from oirl.learn.crossfit import fit_on

    matrix = planted()
    picks = {}
    for layout in ("concat", "concat-product"):
        model = fit_on(spec("logistic", 1, layout, C=1.0).make(), matrix, layout)
        picks[layout] = len(np.unique(model.predict_grid(matrix.query_vectors, matrix.prompt_vectors, layout).argmax(axis=1)))
    assert picks["concat"] == 1  # sigma(w.q + v.p + b): the same prompt wins for every query
    assert picks["concat-product"] == 2


def test_a_win_on_a_handful_of_queries_is_not_worth_a_model():
    """Two policies that agree on all but 3 of 3,000 queries: a tiny standard error, no signal."""
    simple, complex_ = np.zeros(3000), np.zeros(3000)
    complex_[:3] = 1
    options, complexity = {"simple": simple, "complex": complex_}, {"simple": 0, "complex": 1}
    assert one_standard_error_choice(options, complexity, np.arange(3000), min_effect=0.0)[0] == "complex"
    assert one_standard_error_choice(options, complexity, np.arange(3000))[0] == "simple"


def test_leaving_the_prior_takes_more_than_one_standard_error():
    """A knn that wins on noise by about two standard errors in CV stays behind the prior."""
    from oirl.learn.selection import PRIOR_Z

    matrix = planted(signal=False, n_texts=300, seed=4)
    selection = select_model(matrix, CANDIDATES, n_folds=3, cv_groups="text")
    best = max(selection.table, key=lambda r: r["value"])
    assert best["option"].startswith("knn")  # on these folds an option looks better than the prior ...
    assert 2 * best["se_vs_baseline"] < best["gain_over_baseline"] <= PRIOR_Z * best["se_vs_baseline"]  # ... by 2.2 standard errors
    assert [r["option"] for r in selection.table if r["chosen"]] == ["prior"]


def test_an_overconfident_model_cannot_vouch_for_itself_on_a_partial_log_without_propensities():
    """One prompt logged per instance by a logger that depends on the query, no propensity
    column: a 'model' that predicts .99 for prompt b everywhere used to be valued at .99 by
    its own predictions and shipped. Valued by doubly robust estimates with the estimated
    logging policy and a reference that is not its own, it is worth what prompt b is."""
    from oirl.learn.logging_policy import with_propensities

    full = planted(n_texts=400, repeats=1, seed=3)
    rng = np.random.default_rng(0)
    cluster = np.arange(400) % 2
    logged_prompt = np.where(rng.random(400) < np.where(cluster == 0, 0.8, 0.2), 0, 1)  # the logger prefers a on cluster A
    rewards = np.full_like(full.rewards, np.nan)
    rewards[np.arange(400), logged_prompt] = full.rewards[np.arange(400), logged_prompt]
    partial = LogMatrix(**{**full.__dict__, "rewards": rewards})
    matrix, diagnostics = with_propensities(partial, 3)
    assert diagnostics["source"] == "estimated" and matrix.propensity_source == "estimated"

    def overconfident(candidate, matrix, folds):
        priors = np.empty(matrix.rewards.shape)
        for train, test in folds:
            priors[test] = matrix.subset(train).prompt_means()
        return CrossFit(candidate, np.tile([[0.98, 0.99]], (len(matrix.rewards), 1)), priors, folds)

    selection = select_model(matrix, (spec("knn", 1),), fitter=overconfident)
    argmax = next(r for r in selection.table if r["option"].endswith("argmax"))
    truth = full.rewards[:, 1].mean()  # always prompt b: about .5
    assert abs(argmax["value"] - truth) < 0.1 and argmax["value"] < 0.8
    assert [r["option"] for r in selection.table if r["chosen"]] == ["prior"]
