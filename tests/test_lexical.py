"""The lexical reward model: ridge heads per prompt on the words of real questions.

The questions are real GSM8K texts; the outcomes are planted on their wording (one prompt
wins where a question asks about "each", the other elsewhere), so a model that reads the
words must find it on questions it never saw, and one that cannot must not.
"""

import re

import httpx
import numpy as np
import pandas as pd
import pytest

from oirl.errors import BundleError, OirlError
from oirl.learn.train import train_recommender
from oirl.recommender.bundle import load_bundle, save_bundle
from oirl.reward.lexical import LexicalReward, normalise


@pytest.fixture(scope="module")
def planted(gsm8k_slice) -> tuple[pd.DataFrame, list[str]]:
    """400 training questions x prompts CoT / APE, CoT right exactly on the questions with
    "each" (about half of GSM8K), and 200 other questions to test on."""
    texts = gsm8k_slice["query"].drop_duplicates().tolist()
    train_texts, test_texts = texts[:400], texts[400:600]
    rows = []
    for i, text in enumerate(train_texts):
        each = has_each(text)
        for prompt_id, prompt, wins in (("CoT", "Let's think step by step.", each), ("APE", "Let's work this out in a step by step way.", not each)):
            rows.append({"query_id": f"q{i}", "query": text, "prompt_id": prompt_id, "prompt": prompt, "reward": float(wins)})
    return pd.DataFrame(rows), test_texts


def has_each(text: str) -> bool:
    return re.search(r"\beach\b", text, flags=re.IGNORECASE) is not None


def right_picks(picks: list[str], texts: list[str]) -> float:
    return float(np.mean([(p == "CoT") == has_each(t) for p, t in zip(picks, texts, strict=True)]))


def test_normalise_makes_every_number_one_token():
    assert normalise("Tom has 3 apples and 12.5 kg, 1,000 in ALL").split() == ["tom", "has", "num", "apples", "and", "num", "kg,", "num", "in", "all"]


def test_the_heads_find_a_wording_pattern_on_new_questions_and_round_trip(planted):
    logs, test_texts = planted
    X = logs[["query", "prompt"]].to_numpy()
    model = LexicalReward(alpha=1.0, min_df=2).fit(X, logs["reward"].to_numpy())
    pairs = np.array([[t, p] for t in test_texts for p in ("Let's think step by step.", "Let's work this out in a step by step way.")], dtype=object)
    scores = model.predict(pairs).reshape(len(test_texts), 2)
    assert right_picks(["CoT" if s[0] > s[1] else "APE" for s in scores], test_texts) > 0.85  # a word-presence rule through a linear model of length-normalised tf-idf; chance is .5
    assert ((scores >= 0) & (scores <= 1)).all()
    loaded = LexicalReward.from_bytes(model.to_bytes(), model.get_params())
    np.testing.assert_array_equal(loaded.predict(pairs), model.predict(pairs))
    # A prompt text never trained on borrows evenly from both heads.
    unknown = model.predict(np.array([[test_texts[0], "Answer directly."]], dtype=object))
    assert unknown[0] == pytest.approx(scores[0].mean())


def test_auto_ships_the_lexical_model_where_only_words_carry_the_signal(planted, tmp_path):
    """The shipped path: cross-validation by question finds it, the bundle saves and loads
    (an .npz, no pickle), and recommendations on new questions follow the pattern."""
    logs, test_texts = planted
    rec = train_recommender(logs, cache_dir=tmp_path / "emb", source="planted")
    assert rec.model.name == "lexical" and rec.default_policy in ("argmax", "conservative") and np.isfinite(rec.margin)
    path = save_bundle(rec, tmp_path / "model")
    assert (path / "model.lexical.npz").is_file()
    loaded = load_bundle(path, cache_dir=tmp_path / "emb")
    picks = [r.prompt_id for r in loaded.recommend(test_texts)]
    assert right_picks(picks, test_texts) > 0.7  # chance is .5; the default penalty and margin are conservative on 400 questions
    np.testing.assert_allclose(loaded.score(test_texts[:5]), rec.score(test_texts[:5]))


def test_a_new_prompt_close_to_a_trained_one_borrows_its_head(planted, tmp_path):
    from oirl.recommender.recommender import Candidate

    logs, test_texts = planted
    rec = train_recommender(logs, model="lexical", cache_dir=tmp_path / "emb", source="planted")
    near_cot = Candidate("Let's think step by step!", "cot-variant")
    scores = rec.score(test_texts, [rec.prompts[0], rec.prompts[1], near_cot])
    cot = [p.prompt_id for p in rec.prompts].index("CoT")
    assert np.corrcoef(scores[:, 2], scores[:, cot])[0, 1] > 0.9


def test_missing_texts_and_corrupt_bytes_are_clear_errors(planted):
    logs, _ = planted
    model = LexicalReward(min_df=1).fit(logs[["query", "prompt"]].to_numpy(), logs["reward"].to_numpy())
    with pytest.raises(OirlError, match="reads query texts"):
        model.predict_grid(np.zeros((1, 4), dtype=np.float32), model.prompts_)
    with pytest.raises(BundleError, match="model.lexical.npz: not a readable"):
        LexicalReward.from_bytes(b"garbage", model.get_params(), where="model.lexical.npz")
    with pytest.raises(ValueError, match=r"rows of \[query text, prompt text\]"):
        model.predict(np.zeros((3, 4)))
    with pytest.raises(OirlError, match="no words"):
        LexicalReward().fit(np.array([["?", "p"], ["!", "p"]], dtype=object), np.array([0.0, 1.0]))


def test_the_service_recommends_and_scores_with_a_lexical_bundle(planted, tmp_path):
    from test_serve import start_server, stop

    logs, test_texts = planted
    rec = train_recommender(logs, model="lexical", cache_dir=tmp_path / "emb", source="planted")
    process, base = start_server(save_bundle(rec, tmp_path / "model"))
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            answer = client.post("/v1/recommend", json={"queries": test_texts[:20]})
            assert answer.status_code == 200, answer.text
            picks = [r["prompt_id"] for r in answer.json()["results"]]
            assert picks == [r.prompt_id for r in rec.recommend(test_texts[:20])]
            pairs = [{"query": test_texts[0], "prompt": p.prompt} for p in rec.prompts]
            scored = client.post("/v1/score", json={"pairs": pairs})
            assert scored.status_code == 200, scored.text
            np.testing.assert_allclose(scored.json()["scores"], rec.score(test_texts[:1])[0], atol=1e-6)
    finally:
        stop(process)
