import numpy as np
import pandas as pd
import pytest

from oirl.data.matrix import pivot_logs
from oirl.evaluation.report import selection_report
from oirl.evaluation.scored import ScoredLogs
from oirl.policy.policies import PolicyContext
from oirl.reward.metrics import classification_metrics, expected_calibration_error


def test_the_pivot_has_nan_for_unlogged_pairs_and_averages_repeated_cells():
    logs = pd.DataFrame({"query_id": ["a", "a", "b", "b"], "query": ["qa", "qa", "qb", "qb"], "prompt_id": ["p", "q", "q", "q"],
                         "prompt": ["P", "Q", "Q", "Q"], "reward": [1.0, 0.0, 0.5, 1.0]})
    pivot = pivot_logs(logs)
    assert list(pivot.query_ids) == ["a", "b"] and pivot.prompt_ids == ["p", "q"] and pivot.prompt_texts == ["P", "Q"]
    assert list(pivot.instance_texts) == ["qa", "qb"] and pivot.propensity is None
    np.testing.assert_array_equal(pivot.rewards, [[1.0, 0.0], [np.nan, 0.75]])
    only_q = pivot_logs(logs, ["q"])
    np.testing.assert_array_equal(only_q.rewards, [[0.0], [0.75]])


def test_selection_report_on_a_hand_made_matrix():
    rewards = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, np.nan]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4], [0.3, 0.9]])
    scored = ScoredLogs(["a", "b", "c", "d"], np.array(["ta", "tb", "tc", "td"]), ["p", "q"], rewards, scores,
                        PolicyContext.of(["p", "q"], prior=[0.6, 0.4]), np.zeros(4, bool), margin=0.5, threshold=0.5)
    report = selection_report(scored, {name: scored.policy(name) for name in ("argmax", "conservative")})
    assert report["best_single_prompt"] == {"prompt_id": "p", "success_rate": 0.5, "chosen_on": "training data"}
    assert report["oracle"] == 0.75
    assert report["random"] == pytest.approx((0.5 + 0.5 + 0 + 1) / 4)
    # argmax: p, q, p, p (q is not logged for the last query) -> 1, 1, 0, 1.
    assert report["policies"]["argmax"] == 0.75
    # conservative (margin .5): switches only on query 1 (.8 - .2 = .6) -> same picks.
    assert report["policies"]["conservative"] == 0.75
    assert report["gap_recovered"]["argmax"] == pytest.approx(1.0)
    assert report["prompts"] == {"p": 0.5, "q": pytest.approx(1 / 3)}


def test_classification_metrics_with_soft_rewards():
    rewards = np.array([1.0, 0.0, 0.7, 0.2])
    scores = np.array([0.9, 0.1, 0.4, 0.6])
    m = classification_metrics(rewards, scores)
    # Correct = reward >= .5: [T, F, T, F]; predicted = score >= .5: [T, F, F, T].
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5
    assert m["roc_auc"] == 0.75
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.01, 0.09, 0.16]))


def test_calibration_error_is_the_gap_between_mean_score_and_mean_reward_per_bin():
    # One bin (.55): mean reward .5, mean score .55 -> .05; scores equal to the rewards -> 0.
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([0.55, 0.55])) == pytest.approx(0.05)
    assert expected_calibration_error(np.array([0.3, 0.3]), np.array([0.3, 0.3])) == pytest.approx(0.0)
