"""One notion of "the same question": folds, seen-in-training, splits and clusters agree."""

import numpy as np
import pandas as pd

from oirl.data.matrix import LogMatrix
from oirl.data.questions import QuestionKey
from oirl.data.schema import validate_logs
from oirl.embed.registry import get_embedder
from oirl.learn.crossfit import make_folds
from oirl.learn.train import train_recommender
from oirl.reproduce.prompt_oirl import in_test_fraction

VARIANTS = ["Tom has 3 apples. How many are left?", "tom  has 3 apples.\nHow many are left? ", "TOM HAS 3 APPLES. HOW MANY ARE LEFT?"]


def test_case_and_white_space_variants_are_one_question_when_the_tokenizer_lowercases():
    key = QuestionKey(casefold=True)
    assert len({key(t) for t in VARIANTS}) == 1
    assert key("ﬁve apples") == key("five apples")  # NFKC: the ligature is two letters
    assert len(set(QuestionKey(casefold=False).keys(VARIANTS))) == 3  # case matters to a cased tokenizer
    assert len(set(key.hashes(VARIANTS))) == 1 and len(set(key.groups(VARIANTS + ["Another question"]))) == 2


def test_minilm_lowercases_and_so_its_variants_embed_alike():
    minilm = get_embedder("minilm")
    assert minilm.lowercases
    vectors = minilm.embed(VARIANTS[:2])
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)  # what the key rule claims


def log_with_variants(n=30):
    """n questions, each logged twice (two samples), the second time as a case/space variant."""
    rows = []
    for i in range(n):
        text = f"Question number {i}: Sam has {i} pens and buys {i + 2} more. How many now?"
        for sample, shown in enumerate((text, "  " + text.upper().replace(" ", "  "))):
            for prompt, reward in (("Think step by step.", float((i + sample) % 2)), ("Answer:", float(i % 3 == 0))):
                rows.append({"query_id": f"q{i}-{sample}", "query": shown, "prompt": prompt, "reward": reward})
    return validate_logs(pd.DataFrame(rows).astype(str))


def test_variants_share_a_fold_and_count_as_seen_in_training(tmp_path):
    logs = log_with_variants()
    embedder = get_embedder("hashing")
    matrix = LogMatrix.from_logs(logs, embedder.embed, question_key=QuestionKey(casefold=embedder.lowercases))
    assert len(matrix.texts) == 60 and len(np.unique(matrix.questions)) == 30  # 60 raw texts, 30 questions
    for train, test in make_folds(matrix, 3, "text"):
        assert not set(matrix.questions[train]) & set(matrix.questions[test])
    rec = train_recommender(logs, model="knn", embedder="hashing", cache_dir=tmp_path)
    assert rec.metadata["training"]["question_key"] == {"unicode": "NFKC", "whitespace": "collapsed", "casefold": True}
    unseen = "A question nobody asked before: how many pens?"
    asked = [" question NUMBER 3: sam has 3 pens and buys 5 more.  how many now?", unseen]
    assert rec.seen_in_training(asked).tolist() == [True, False]


def test_the_disjoint_split_keeps_variants_on_one_side():
    texts = pd.Series([v + f" ({i})" for i in range(200) for v in ("Ann reads a book.", "ann  reads a BOOK.")])
    held = in_test_fraction(texts).to_numpy().reshape(-1, 2)
    assert (held[:, 0] == held[:, 1]).all() and 0 < held[:, 0].sum() < 200
