"""The loop benchmark's world: a full-information log as the environment, and Vowpal Wabbit on the same stream.

A full-information log (every prompt's outcome for every training instance) answers
any decision: serving prompt ``p`` for instance ``i`` earns the logged reward of
``(i, p)``. :class:`Environment` holds those matrices for the training instances (the
traffic) and the test instances (the truth a policy is valued on).

:func:`vowpal_wabbit_stream` runs Vowpal Wabbit's contextual bandit
(``--cb_explore_adf``), the reference a bandit engineer reaches for, on the same
stream: the same instances in the same order each round, the same MiniLM query vectors
as shared features, the prompt id as the action feature, ``-q sa`` crossing them. It
learns online from each decision's reward and, after each round, its greedy policy is
valued on the test matrix like oirl's deployed bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Vowpal Wabbit configurations run beside oirl: name -> arguments.
VW_CONFIGS: dict[str, str] = {
    "vw epsilon 0.05": "--cb_explore_adf --epsilon 0.05 -q sa --quiet",
    "vw squarecb": "--cb_explore_adf --squarecb -q sa --quiet",
}


@dataclass(frozen=True)
class Environment:
    """One dataset's full-information matrices: rewards (instances, prompts) by split."""

    name: str
    prompt_ids: list[str]
    prompts: list[str]
    train_questions: list[str]
    train_rewards: np.ndarray
    test_questions: list[str]
    test_rewards: np.ndarray
    test_log: pd.DataFrame  # the test rows as a log, for `oirl evaluate`
    train_log: pd.DataFrame  # the training rows as a log (full information), for the references

    def best_prompt(self) -> int:
        """The prompt with the best mean reward over the training instances (what a team
        would serve for everyone if it had the full log)."""
        return int(np.argmax(self.train_rewards.mean(axis=0)))

    def reward_of(self, instance: int, prompt_id: str) -> float:
        return float(self.train_rewards[instance, self.prompt_ids.index(prompt_id)])


def load_environment(data_dir: Path, name: str, limit: int | None = None) -> Environment:
    """The Prompt-OIRL log of ``name`` (paper split, the six training prompts) as matrices;
    ``limit`` keeps the first N training and N test instances (a toy-size run)."""
    from oirl.data.importers.prompt_oirl import TRAINING_PROMPTS, build_logs

    logs = build_logs(data_dir, name, TRAINING_PROMPTS)
    prompt_ids = list(dict.fromkeys(logs["prompt_id"]))
    prompts = logs.drop_duplicates("prompt_id").set_index("prompt_id").loc[prompt_ids, "prompt"].tolist()

    def matrices(split: str) -> tuple[pd.DataFrame, list[str], np.ndarray]:
        rows = logs[logs["split"] == split]
        instances = list(dict.fromkeys(rows["query_id"]))[:limit]
        rows = rows[rows["query_id"].isin(instances)]
        table = rows.pivot_table(index="query_id", columns="prompt_id", values="reward").loc[instances, prompt_ids]
        questions = rows.drop_duplicates("query_id").set_index("query_id").loc[instances, "query"].tolist()
        return rows.reset_index(drop=True), questions, table.to_numpy(dtype=float)

    train_log, train_questions, train_rewards = matrices("train")
    test_log, test_questions, test_rewards = matrices("test")
    return Environment(name, prompt_ids, prompts, train_questions, train_rewards, test_questions, test_rewards, test_log, train_log)


def _shared_lines(vectors: np.ndarray) -> list[str]:
    return ["shared |s " + " ".join(f"{j}:{v:.5f}" for j, v in enumerate(row)) for row in vectors]


def vowpal_wabbit_stream(env: Environment, orders: Sequence[np.ndarray], train_vectors: np.ndarray, test_vectors: np.ndarray,
                         arguments: str, seed: int = 0) -> list[dict[str, float]]:
    """Vowpal Wabbit online on ``orders`` (one array of training instances per round):
    per round, the stream's mean reward and the greedy policy's test value after it."""
    import vowpalwabbit

    rng = np.random.default_rng(seed)
    vw = vowpalwabbit.Workspace(f"{arguments} --random_seed {seed}")
    train_shared, test_shared = _shared_lines(train_vectors), _shared_lines(test_vectors)
    actions = [f"|a p={prompt_id}" for prompt_id in env.prompt_ids]
    rounds = []
    try:
        for order in orders:
            earned = []
            for i in order:
                pmf = np.asarray(vw.predict([train_shared[i], *actions]), dtype=float)
                pick = int(rng.choice(len(pmf), p=pmf / pmf.sum()))
                reward = float(env.train_rewards[i, pick])
                earned.append(reward)
                labelled = [f"0:{1.0 - reward}:{pmf[pick]} {line}" if a == pick else line for a, line in enumerate(actions)]
                vw.learn([train_shared[i], *labelled])
            greedy = [int(np.argmax(vw.predict([line, *actions]))) for line in test_shared]
            rounds.append({"stream_reward": float(np.mean(earned)),
                           "test_value": float(env.test_rewards[np.arange(len(greedy)), greedy].mean())})
    finally:
        vw.finish()
    return rounds
