import numpy as np
import pytest

from oirl.errors import OirlError
from oirl.policy.policies import choose

INF = float("inf")
# Three queries, three candidates; candidate 0 has the best training prior.
SCORES = np.array(
    [
        [0.50, 0.52, 0.10],  # candidate 1 beats the default by 0.02
        [0.40, 0.30, 0.70],  # candidate 2 beats it by 0.30
        [0.60, 0.55, 0.20],  # the default is also the argmax
    ]
)
PRIOR = np.array([0.30, 0.25, 0.10])


def test_argmax_picks_the_highest_score():
    assert choose("argmax", SCORES).tolist() == [1, 2, 0]


@pytest.mark.parametrize("margin, expected", [(0.0, [1, 2, 0]), (0.05, [0, 2, 0]), (0.5, [0, 0, 0]), (INF, [0, 0, 0])])
def test_conservative_switches_only_past_the_margin(margin, expected):
    assert choose("conservative", SCORES, prior=PRIOR, margin=margin).tolist() == expected


def test_conservative_default_is_the_best_prior_among_available_candidates():
    mask = np.ones_like(SCORES, dtype=bool)
    mask[0, 0] = False  # candidate 0 not available for query 0: candidate 1 is its default
    assert choose("conservative", SCORES, mask=mask, prior=PRIOR, margin=INF).tolist() == [1, 0, 0]
    # No candidate with a prior (all never trained on): conservative falls back to argmax.
    assert choose("conservative", SCORES, prior=np.full(3, np.nan), margin=INF).tolist() == [1, 2, 0]


def test_fallback_uses_new_prompts_only_below_the_threshold():
    in_bundle = np.array([True, True, False])
    # Query 0: best bundle score .52 >= .5 keeps bundle prompt 1; query 1: best bundle
    # score .40 < .5 goes to the new prompt 2; query 2: .60 keeps prompt 0.
    assert choose("fallback", SCORES, in_bundle=in_bundle, threshold=0.5).tolist() == [1, 2, 0]
    assert choose("fallback", SCORES, in_bundle=in_bundle, threshold=0.9).tolist() == [2, 2, 2]
    # Without new prompts it is argmax over the bundle prompts.
    assert choose("fallback", SCORES, in_bundle=np.ones(3, bool), threshold=0.9).tolist() == [1, 2, 0]


def test_unknown_policy_lists_the_choices():
    with pytest.raises(OirlError, match="unknown policy 'best' .*argmax, conservative, fallback"):
        choose("best", SCORES)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_score_is_an_error_not_a_pick(bad):
    scores = SCORES.copy()
    scores[1, 2] = bad
    with pytest.raises(OirlError, match="non-finite score .* query 1, candidate 2"):
        choose("argmax", scores)


def test_unavailable_candidates_are_masked_explicitly():
    mask = np.array([[True, False, True], [True, True, False], [False, True, True]])
    assert choose("argmax", SCORES, mask=mask).tolist() == [0, 0, 1]
    with pytest.raises(OirlError, match="query 0 has no available candidate"):
        choose("argmax", SCORES, mask=np.zeros_like(mask))


@pytest.mark.parametrize("cost", [None, np.array([1.0, np.nan, 2.0]), np.array([1.0, np.inf, 2.0])])
def test_cost_aware_refuses_unknown_or_infinite_costs(cost):
    with pytest.raises(OirlError, match="finite cost for every candidate"):
        choose("cost-aware", SCORES, cost=cost, cost_weight=0.1)


def test_cost_aware_trades_reward_for_cost():
    cost = np.array([0.0, 0.0, 10.0])
    assert choose("cost-aware", SCORES, cost=cost, cost_weight=0.0).tolist() == [1, 2, 0]
    assert choose("cost-aware", SCORES, cost=cost, cost_weight=0.1).tolist() == [1, 0, 0]


def test_argmax_breaks_exact_ties_by_the_training_prior():
    scores = np.array([[0.4, 0.4, 0.1], [0.2, 0.3, 0.3], [0.5, 0.5, 0.5]])
    prior = np.array([0.1, 0.3, 0.2])
    assert choose("argmax", scores, prior=prior).tolist() == [1, 1, 1]
    assert choose("argmax", scores, prior=np.array([0.3, np.nan, 0.2])).tolist() == [0, 2, 0]
    assert choose("argmax", scores).tolist() == [0, 1, 0]  # without a prior: the first


def test_fallback_breaks_ties_by_prior_and_new_prompts_by_order():
    scores = np.array([[0.6, 0.6, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3]])
    prior = np.array([0.2, 0.4, np.nan, np.nan])
    picks = choose("fallback", scores, in_bundle=np.array([True, True, False, False]), prior=prior, threshold=0.5)
    assert picks.tolist() == [1, 2]  # bundle tie -> better prior; new-prompt tie -> first


def test_epsilon_greedy_explores_around_the_policy_pick():
    from oirl.policy.explore import exploration_probabilities

    probabilities = exploration_probabilities(SCORES, np.array([1, 2, 0]), "epsilon", 0.3)
    np.testing.assert_allclose(probabilities[0], [0.1, 0.8, 0.1])  # 1 - .3 + .3/3 for the pick, .3/3 otherwise
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(exploration_probabilities(SCORES, np.array([1, 2, 0]), "epsilon", 0.0)[1], [0, 0, 1])


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a tiny temperature must not overflow noisily
def test_softmax_draws_in_proportion_to_exp_score_over_temperature():
    from oirl.policy.explore import exploration_probabilities

    probabilities = exploration_probabilities(SCORES, np.zeros(3, dtype=int), "softmax", 0.1)
    expected = np.exp(SCORES[0] / 0.1) / np.exp(SCORES[0] / 0.1).sum()
    np.testing.assert_allclose(probabilities[0], expected)
    hot = exploration_probabilities(np.array([[1000.0, 0.0]]), np.zeros(1, dtype=int), "softmax", 1e-3)
    np.testing.assert_allclose(hot, [[1.0, 0.0]])  # no overflow
    tiny = exploration_probabilities(np.array([[0.7, 0.2]]), np.zeros(1, dtype=int), "softmax", 1e-310)
    np.testing.assert_array_equal(tiny, [[1.0, 0.0]])  # no inf - inf = NaN at a temperature near zero


def test_draws_follow_the_probabilities_and_report_them():
    from oirl.policy.explore import draw

    probabilities = np.tile([[0.2, 0.5, 0.3]], (20000, 1))
    choices, propensity = draw(probabilities, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(choices, minlength=3) / 20000, [0.2, 0.5, 0.3], atol=0.01)
    np.testing.assert_array_equal(propensity, probabilities[np.arange(20000), choices])


@pytest.mark.parametrize("text, message", [("epsilon:2", "epsilon must be in"), ("softmax:0", "temperature must be"),
                                           ("greedy:0.1", "unknown exploration method"), ("epsilon", "bad exploration")])
def test_bad_exploration_settings_are_named(text, message):
    from oirl.policy.explore import parse_exploration

    with pytest.raises(OirlError, match=message):
        parse_exploration(text)
    assert parse_exploration("softmax:0.05") == ("softmax", 0.05)
