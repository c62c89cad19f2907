import numpy as np
import pytest

from oirl.errors import OirlError
from oirl.select import choose, choose_margin, policy_value

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
    scores = SCORES.copy()
    scores[0, 0] = np.nan  # candidate 0 not available for query 0: candidate 1 is its default
    assert choose("conservative", scores, prior=PRIOR, margin=INF).tolist() == [1, 0, 0]
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


def test_choose_margin_takes_the_largest_margin_within_one_standard_error():
    rewards = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    margin, values = choose_margin(SCORES, rewards, PRIOR)
    # Switching on query 0 (by .02) loses, switching on query 1 (by .30) wins.
    assert values[0.0] == pytest.approx(2 / 3) and values[INF] == pytest.approx(2 / 3)
    assert values[0.03] == pytest.approx(1.0) and values[0.2] == pytest.approx(1.0)
    # With three queries a one-query gain is within one standard error (1/3 vs SE 1/3):
    # the rule keeps the most conservative margin.
    assert margin == INF


def test_choose_margin_switches_when_the_gain_is_clear():
    n = 60
    scores = np.tile([[0.5, 0.9]], (n, 1))
    rewards = np.tile([[0.0, 1.0]], (n, 1))
    rewards[:5] = [1.0, 0.0]  # the challenger wins on 55 of 60 queries
    margin, values = choose_margin(scores, rewards, np.array([0.6, 0.4]))
    assert values[margin] == pytest.approx(55 / 60)
    assert margin == 0.3  # the largest margin below the .4 score gap
    assert policy_value(choose("conservative", scores, prior=np.array([0.6, 0.4]), margin=margin), rewards) == pytest.approx(55 / 60)


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
