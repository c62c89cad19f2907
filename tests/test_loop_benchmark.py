"""The loop benchmark's parts: Vowpal Wabbit learns a planted pattern on the stream it is
given, and the whole loop runs at toy size through the real CLI, service and MiniLM."""

import json

import numpy as np
import pandas as pd
import pytest

from oirl.reproduce.loop_environment import VW_CONFIGS, Environment, vowpal_wabbit_stream

pytest.importorskip("vowpalwabbit")


def planted_environment(n: int, rng: np.random.Generator) -> tuple[Environment, np.ndarray, np.ndarray]:
    """Two kinds of question (the sign of the first feature); prompt 'a' is right for one, 'b' for the other."""
    def half(m: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = rng.normal(size=(m, 8))
        kind = vectors[:, 0] > 0
        rewards = np.column_stack([kind, ~kind, np.full(m, 0.5) > rng.random(m)]).astype(float)
        return vectors, rewards

    (train_vectors, train_rewards), (test_vectors, test_rewards) = half(n), half(n)
    env = Environment("planted", ["a", "b", "c"], ["A", "B", "C"], [f"q{i}" for i in range(n)], train_rewards,
                      [f"t{i}" for i in range(n)], test_rewards, pd.DataFrame(), pd.DataFrame())
    return env, train_vectors, test_vectors


@pytest.mark.parametrize("config", list(VW_CONFIGS))
def test_vowpal_wabbit_learns_a_planted_pattern_from_the_stream(config):
    rng = np.random.default_rng(0)
    env, train_vectors, test_vectors = planted_environment(400, rng)
    orders = [rng.permutation(400) for _ in range(3)]
    rounds = vowpal_wabbit_stream(env, orders, train_vectors, test_vectors, VW_CONFIGS[config])
    assert len(rounds) == 3
    assert env.test_rewards[:, env.best_prompt()].mean() < 0.6  # one prompt for all is near a coin
    assert rounds[-1]["test_value"] > 0.85  # the greedy policy picks by kind
    assert rounds[-1]["stream_reward"] > rounds[0]["stream_reward"]


def test_the_loop_runs_end_to_end_through_the_cli_and_the_service(data_dir, tmp_path):
    from oirl.reproduce.loop import reproduce_loop

    summary = reproduce_loop(data_dir, tmp_path / "out", datasets=["mawps"], rounds=2, clients=4, cache_dir=tmp_path / "emb",
                             embedder="minilm", limit=30, full_information=False)
    rounds = summary["datasets"]["mawps"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and [r["decisions"] for r in rounds] == [30, 60]
    for r in rounds:
        assert r["versions_matching"] == 1.0  # every decision names the bundle that served it
        assert 0 <= r["dr_low"] <= r["dr_estimate"] <= r["dr_high"] <= 1 and 0 <= r["test_value"] <= 1
        assert r["trained"] == "incumbent kept" or r["reloaded_version"] != r["served_version"]
    table = pd.read_csv(tmp_path / "out" / "loop_mawps.csv")
    assert {"vw epsilon 0.05 test", "vw squarecb stream"} <= set(table.columns)
    assert (tmp_path / "out" / "loop_mawps.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "loop.json").read_text())
    refs = saved["datasets"]["mawps"]["references"]
    assert 0 < refs["best_prompt"]["test_value"] <= refs["oracle"] <= 1


def test_a_bad_exploration_is_one_error_line_before_anything_starts(data_dir, tmp_path):
    from click.testing import CliRunner

    from oirl.cli.main import cli

    result = CliRunner().invoke(cli, ["reproduce", "--benchmark", "loop", "--explore", "bogus:1", "--limit", "10", "--rounds", "1",
                                      "--data-dir", str(data_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr.startswith("error:") and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_off_policy_estimate_past_the_reward_range_is_reported_within_it():
    """DR on 30 rounds with propensity 1/6 can come out at 1.2 (seen in the toy loop); a reward
    in [0, 1] is reported within [0, 1], the estimate as well as its interval."""
    from oirl.evaluation.offpolicy import within_range

    assert within_range({"value": 1.2, "ci": [0.7, 1.6]}) == {
        "value": 1.0, "ci": [0.7, 1.0], "clamped": {"into": [0.0, 1.0], "value": 1.2, "ci": [0.7, 1.6]}}
    assert within_range({"value": -0.1, "ci": [-0.3, 0.2]})["ci"] == [0.0, 0.2]
    assert within_range({"value": 0.4, "ci": [0.3, 0.5]}) == {"value": 0.4, "ci": [0.3, 0.5]}  # nothing moved: no note
