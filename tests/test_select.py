"""Policy objects on hand-made score matrices with exact expected picks."""

import numpy as np
import pytest

from oirl.errors import OirlError
from oirl.policy.explore import EpsilonGreedy, Softmax, draw, explorer, parse_exploration
from oirl.policy.policies import Argmax, Conservative, CostAware, Fallback, PolicyContext, make_policy

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
IDS = ("a", "b", "c")


def context(prior=PRIOR, in_bundle=None, cost=None):
    return PolicyContext.of(IDS, prior=prior, in_bundle=in_bundle, cost=cost)


def test_argmax_picks_the_highest_score():
    assert Argmax(context(prior=None)).choose(SCORES).tolist() == [1, 2, 0]


@pytest.mark.parametrize("margin, expected", [(0.0, [1, 2, 0]), (0.05, [0, 2, 0]), (0.5, [0, 0, 0]), (INF, [0, 0, 0])])
def test_conservative_switches_only_past_the_margin(margin, expected):
    assert Conservative(context(), margin).choose(SCORES).tolist() == expected


def test_conservative_default_is_the_best_prior_among_available_candidates():
    mask = np.ones_like(SCORES, dtype=bool)
    mask[0, 0] = False  # candidate 0 not available for query 0: candidate 1 is its default
    assert Conservative(context(), INF).choose(SCORES, mask).tolist() == [1, 0, 0]
    # No candidate with a prior (all never trained on): conservative falls back to argmax.
    assert Conservative(context(prior=np.full(3, np.nan)), INF).choose(SCORES).tolist() == [1, 2, 0]


def test_fallback_uses_new_prompts_only_below_the_threshold():
    in_bundle = np.array([True, True, False])
    # Query 0: best bundle score .52 >= .5 keeps bundle prompt 1; query 1: best bundle
    # score .40 < .5 goes to the new prompt 2; query 2: .60 keeps prompt 0.
    assert Fallback(context(prior=None, in_bundle=in_bundle), 0.5).choose(SCORES).tolist() == [1, 2, 0]
    assert Fallback(context(prior=None, in_bundle=in_bundle), 0.9).choose(SCORES).tolist() == [2, 2, 2]
    # Without new prompts it is argmax over the bundle prompts.
    assert Fallback(context(prior=None), 0.9).choose(SCORES).tolist() == [1, 2, 0]


def test_make_policy_builds_each_by_name_and_lists_the_choices():
    assert isinstance(make_policy("conservative", context(), margin=0.05), Conservative)
    assert make_policy("conservative", context(), margin=0.05).choose(SCORES).tolist() == [0, 2, 0]
    with pytest.raises(OirlError, match="unknown policy 'best' .*argmax, conservative, fallback"):
        make_policy("best", context())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_score_is_an_error_not_a_pick(bad):
    scores = SCORES.copy()
    scores[1, 2] = bad
    with pytest.raises(OirlError, match="non-finite score .* query 1, candidate 2"):
        Argmax(context()).choose(scores)


def test_unavailable_candidates_are_masked_explicitly():
    mask = np.array([[True, False, True], [True, True, False], [False, True, True]])
    assert Argmax(context(prior=None)).choose(SCORES, mask).tolist() == [0, 0, 1]
    with pytest.raises(OirlError, match="query 0 has no available candidate"):
        Argmax(context()).choose(SCORES, np.zeros_like(mask))


def test_a_policy_refuses_scores_of_another_candidate_set():
    with pytest.raises(OirlError, match="built for 3 candidates, got scores for 2"):
        Argmax(context()).choose(SCORES[:, :2])


@pytest.mark.parametrize("cost", [None, np.array([1.0, np.nan, 2.0]), np.array([1.0, np.inf, 2.0])])
def test_cost_aware_refuses_unknown_or_infinite_costs(cost):
    with pytest.raises(OirlError, match="needs a cost for every candidate"):
        CostAware(context(cost=cost), 0.1)


def test_cost_aware_trades_reward_for_cost():
    cost = np.array([0.0, 0.0, 10.0])
    assert CostAware(context(cost=cost), 0.0).choose(SCORES).tolist() == [1, 2, 0]
    assert CostAware(context(cost=cost), 0.1).choose(SCORES).tolist() == [1, 0, 0]


def test_argmax_breaks_exact_ties_by_the_training_prior():
    scores = np.array([[0.4, 0.4, 0.1], [0.2, 0.3, 0.3], [0.5, 0.5, 0.5]])
    assert Argmax(context(prior=np.array([0.1, 0.3, 0.2]))).choose(scores).tolist() == [1, 1, 1]
    assert Argmax(context(prior=np.array([0.3, np.nan, 0.2]))).choose(scores).tolist() == [0, 2, 0]
    assert Argmax(context(prior=None)).choose(scores).tolist() == [0, 1, 0]  # without a prior: the first


def test_fallback_breaks_ties_by_prior_and_new_prompts_by_order():
    scores = np.array([[0.6, 0.6, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3]])
    ctx = PolicyContext.of(("a", "b", "c", "d"), prior=[0.2, 0.4, np.nan, np.nan], in_bundle=[True, True, False, False])
    assert Fallback(ctx, 0.5).choose(scores).tolist() == [1, 2]  # bundle tie -> better prior; new-prompt tie -> first


def test_a_pick_that_is_not_the_top_of_its_ranking_says_why():
    conservative = Conservative(context(), 0.05)
    assert conservative.explain(SCORES[0], 0) == ("conservative: kept the default prompt 'a'; 'b' is predicted 0.020 better, "
                                                  "not more than the margin 0.05")
    assert conservative.explain(SCORES[1], 2) is None  # the top of the ranking needs no reason
    cost_aware = CostAware(context(cost=np.array([0.0, 0.0, 10.0])), 0.1)
    assert cost_aware.explain(SCORES[1], 0) == "cost-aware: 'c' is predicted 0.300 better but costs 10 more (cost weight 0.1)"


def test_deterministic_policies_put_all_their_mass_on_the_pick():
    np.testing.assert_array_equal(Argmax(context()).probabilities(SCORES), np.eye(3)[[1, 2, 0]])


def test_epsilon_greedy_explores_around_the_policy_pick_among_the_available():
    probabilities = EpsilonGreedy(Argmax(context()), 0.3).probabilities(SCORES)
    np.testing.assert_allclose(probabilities[0], [0.1, 0.8, 0.1])  # 1 - .3 + .3/3 for the pick, .3/3 otherwise
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(EpsilonGreedy(Argmax(context()), 0.0).probabilities(SCORES)[1], [0, 0, 1])
    mask = np.array([[True, True, False]] * 3)
    np.testing.assert_allclose(EpsilonGreedy(Argmax(context()), 0.3).probabilities(SCORES, mask)[1], [0.85, 0.15, 0.0])
    assert EpsilonGreedy(Argmax(context()), 0.3).choose(SCORES).tolist() == [1, 2, 0]  # its mode is the base policy's pick


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a tiny temperature must not overflow noisily
def test_softmax_draws_in_proportion_to_exp_score_over_temperature():
    probabilities = Softmax(Argmax(context()), 0.1).probabilities(SCORES)
    expected = np.exp(SCORES[0] / 0.1) / np.exp(SCORES[0] / 0.1).sum()
    np.testing.assert_allclose(probabilities[0], expected)
    two = PolicyContext.of(("a", "b"))
    hot = Softmax(Argmax(two), 1e-3).probabilities(np.array([[1000.0, 0.0]]))
    np.testing.assert_allclose(hot, [[1.0, 0.0]])  # no overflow
    tiny = Softmax(Argmax(two), 1e-310).probabilities(np.array([[0.7, 0.2]]))
    np.testing.assert_array_equal(tiny, [[1.0, 0.0]])  # no inf - inf = NaN at a temperature near zero


def test_draws_follow_the_probabilities_and_report_them():
    probabilities = np.tile([[0.2, 0.5, 0.3]], (20000, 1))
    choices, propensity = draw(probabilities, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(choices, minlength=3) / 20000, [0.2, 0.5, 0.3], atol=0.01)
    np.testing.assert_array_equal(propensity, probabilities[np.arange(20000), choices])


@pytest.mark.parametrize("text, message", [("epsilon:2", "epsilon must be in"), ("softmax:0", "temperature must be"),
                                           ("greedy:0.1", "unknown exploration method"), ("epsilon", "bad exploration")])
def test_bad_exploration_settings_are_named(text, message):
    with pytest.raises(OirlError, match=message):
        parse_exploration(text)
    assert parse_exploration("softmax:0.05") == ("softmax", 0.05)
    assert isinstance(explorer("epsilon", 0.1, Argmax(context())), EpsilonGreedy)


def test_squarecb_explores_in_inverse_proportion_to_the_predicted_gap():
    scores = np.array([[0.5, 0.4, 0.1], [0.3, 0.3, 0.3]])
    probabilities = explorer("squarecb", 10.0, Argmax(context())).probabilities(scores)
    # Row 0: pick 0; candidate 1 gets 1 / (3 + 10 x .1) = .25, candidate 2 1 / (3 + 10 x .4) = 1/7; the pick the rest.
    np.testing.assert_allclose(probabilities[0], [1 - 0.25 - 1 / 7, 0.25, 1 / 7])
    np.testing.assert_allclose(probabilities[1], [1 / 3] * 3)  # equal scores (a cold bundle): uniform
    greedy = explorer("squarecb", 1e6, Argmax(context())).probabilities(scores)[0]
    assert greedy[0] > 0.999  # the larger gamma, the greedier
    mask = np.array([[True, False, True], [True, True, True]])
    assert explorer("squarecb", 10.0, Argmax(context())).probabilities(scores, mask)[0, 1] == 0.0
    assert parse_exploration("squarecb:50") == ("squarecb", 50.0)
