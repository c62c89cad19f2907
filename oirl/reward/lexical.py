"""The lexical model: one ridge head per training prompt over the query's words.

Frozen sentence embeddings place questions by topic, and on the logs we measure the
prompt that wins on a *new* question depends little on its topic (see the README's
ablation). What transfers better is surface form: how many numbers a question holds,
whether it asks "how many more", "left", "each", "in all". This model reads the query
text itself: TF-IDF of word 1-3-grams (lower-cased, every number one token ``num``, a
vocabulary learned from the training questions only), and for each training prompt a
ridge regression of its mean reward per question on those features, weighted by how
often the question was logged. Ridge shrinks toward the prompt's mean, so a question
with no known words scores the prior.

A prompt never trained on borrows the heads of the training prompts by the similarity
of its vector to theirs (:func:`oirl.reward.prompts.borrowed_weights`), as the
neighbour model does.

It needs the query *texts*, so it is a model that ``reads_texts``: training and serving
pass them beside the vectors. Its scikit-learn face, ``fit(X, y)``, takes ``X`` as
rows of ``[query text, prompt text]`` (prompts told apart by their text). The fitted
state is an ``.npz`` of the vocabulary (a unicode array), the idf weights and the
heads: loading never unpickles.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from oirl.errors import BundleError, OirlError
from oirl.reward.base import RewardModel, cell_totals, npz_arrays, npz_bytes, store_parameters
from oirl.reward.prompts import borrowed_weights

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def normalise(text: str) -> str:
    """Lower case, every number one token: "3 apples and 12.5 kg" -> " num  apples and  num  kg"."""
    return _NUMBER.sub(" num ", text.lower())


class LexicalReward(RewardModel):
    """Ridge heads per training prompt on TF-IDF word n-grams of the query text."""

    name = "lexical"
    model_file = "model.lexical.npz"
    reads_texts: ClassVar[bool] = True

    def __init__(self, *, alpha: float = 30.0, ngrams: int = 3, min_df: int = 3, max_features: int = 30_000,
                 new_prompt_tau: float = 0.05):
        store_parameters(self, locals())

    # ------------------------------------------------------------------ fitting

    def fit_matrix(self, query_vectors, text_index, prompt_vectors, rewards, layout, sample_weight=None, texts=None):
        if texts is None:
            raise OirlError("the lexical reward model reads query texts; none were given")
        sums, counts = cell_totals(text_index, rewards, sample_weight, len(texts))
        seen = counts.sum(axis=1) > 0  # this fold's questions only: the vocabulary never sees held-out ones
        return self.fit_counts(np.asarray(texts)[seen], np.asarray(prompt_vectors, dtype=np.float32), sums[seen], counts[seen])

    def fit_counts(self, texts: np.ndarray, prompt_vectors: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> LexicalReward:
        """Fit from aggregated logs: reward sums and counts (n_texts, n_prompts) of distinct query texts."""
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import Ridge

        if len(texts) == 0:
            raise OirlError("the lexical reward model needs at least one logged query")
        # A tiny log has few words seen min_df times; then every word counts (ridge still shrinks).
        min_df = self.min_df if len(texts) >= 10 * self.min_df else 1
        counter = CountVectorizer(preprocessor=normalise, ngram_range=(1, self.ngrams), min_df=min_df, max_features=self.max_features,
                                  dtype=np.float32)
        try:
            term_counts = counter.fit_transform(list(texts))
        except ValueError:  # "empty vocabulary": no word of two letters in any query
            raise OirlError("the lexical reward model found no words in the training queries") from None
        self.vocabulary_ = counter.get_feature_names_out().astype(str)
        document_frequency = np.asarray((term_counts > 0).sum(axis=0)).ravel()
        self.idf_ = (np.log((1 + len(texts)) / (1 + document_frequency)) + 1).astype(np.float32)  # scikit-learn's smooth idf
        X = self._weigh(term_counts)
        m = sums.shape[1]
        self.coef_ = np.zeros((m, len(self.vocabulary_)), dtype=np.float32)
        self.intercept_ = np.zeros(m)
        total = sums.sum() / max(counts.sum(), 1e-12)
        for j in range(m):
            rows = counts[:, j] > 0
            if not rows.any():  # a prompt this fold never logged: its mean is unknown, say the overall mean
                self.intercept_[j] = total
                continue
            target = sums[rows, j] / counts[rows, j]
            head = Ridge(alpha=self.alpha).fit(X[rows], target, sample_weight=counts[rows, j])
            self.coef_[j], self.intercept_[j] = head.coef_, head.intercept_
        self.prompts_ = np.asarray(prompt_vectors, dtype=np.float32)
        self._counter = None
        return self

    def _weigh(self, term_counts):
        """Sublinear tf x idf, rows L2-normalised (scikit-learn's TfidfVectorizer with ``sublinear_tf``)."""
        from sklearn.preprocessing import normalize

        X = term_counts.astype(np.float32).tocsr(copy=True)
        X.data = 1 + np.log(X.data)
        X = X.multiply(self.idf_[None, :]).tocsr()
        return normalize(X, copy=False)

    def features(self, texts: list[str]):
        """(n, vocabulary) TF-IDF rows of query texts (sparse)."""
        from sklearn.feature_extraction.text import CountVectorizer

        self._check_fitted()
        if getattr(self, "_counter", None) is None:  # built once per fitted model: a 30k-term dictionary
            self._counter = CountVectorizer(preprocessor=normalise, ngram_range=(1, self.ngrams), dtype=np.float32,
                                            vocabulary={t: i for i, t in enumerate(self.vocabulary_.tolist())})
        return self._weigh(self._counter.transform(list(texts)))

    # ------------------------------------------------------------------ scoring

    def head_scores(self, texts: list[str]) -> np.ndarray:
        """(n, n_train_prompts) each training prompt's head on each query."""
        return np.asarray(self.features(texts) @ self.coef_.T) + self.intercept_[None, :]

    def predict_grid(self, query_vectors, prompt_vectors, layout="concat", texts=None):
        if texts is None:
            raise OirlError("the lexical reward model reads query texts; none were given")
        if len(texts) != len(query_vectors):
            raise ValueError(f"{len(texts)} query texts for {len(query_vectors)} query vectors")
        v = borrowed_weights(np.asarray(prompt_vectors, dtype=np.float32), self.prompts_, known_tau=0.0, new_tau=self.new_prompt_tau)
        return np.clip(self.head_scores(texts) @ v.T, 0.0, 1.0)

    # ------------------------------------------------------------------ scikit-learn's face: X = [[query text, prompt text], ...]

    def fit(self, X, y, sample_weight=None):
        queries, prompts = _text_pairs(X)
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(queries):
            raise ValueError(f"X has {len(queries)} rows, y has {len(y)}")
        if np.any((y < 0) | (y > 1)):
            raise ValueError("`y` must hold rewards in [0, 1]")
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        texts, qi = np.unique(queries, return_inverse=True)
        self.prompt_texts_, pi = np.unique(prompts, return_inverse=True)
        sums = np.zeros((len(texts), len(self.prompt_texts_)))
        counts = np.zeros_like(sums)
        np.add.at(sums, (qi, pi), weight * y)
        np.add.at(counts, (qi, pi), weight)
        # Prompts by text: one-hot "vectors", so a text never trained on borrows evenly.
        return self.fit_counts(texts, np.eye(len(self.prompt_texts_), dtype=np.float32), sums, counts)

    def predict(self, X):
        self._check_fitted()
        queries, prompts = _text_pairs(X)
        index = {t: i for i, t in enumerate(self.prompt_texts_.tolist())}
        v = np.full((len(prompts), len(index)), 1.0 / len(index))
        for row, p in enumerate(prompts):
            if p in index:
                v[row] = 0.0
                v[row, index[p]] = 1.0
        heads = self.head_scores(list(queries))
        return np.clip((heads * v).sum(axis=1), 0.0, 1.0)

    # ------------------------------------------------------------------ bytes

    def to_bytes(self) -> bytes:
        extra = {} if getattr(self, "prompt_texts_", None) is None else {"prompt_texts": self.prompt_texts_}
        return npz_bytes(vocabulary=self.vocabulary_, idf=self.idf_, coef=self.coef_, intercept=self.intercept_, prompts=self.prompts_, **extra)

    @classmethod
    def from_bytes(cls, data, params, *, where="model file"):
        names = ("vocabulary", "idf", "coef", "intercept", "prompts")
        arrays = npz_arrays(data, where, names)
        model = cls(**params)
        model.vocabulary_, model.idf_, model.coef_, model.intercept_, model.prompts_ = (arrays[k] for k in names)
        if "prompt_texts" in arrays:
            model.prompt_texts_ = arrays["prompt_texts"]
        n_terms, m = len(model.vocabulary_), len(model.intercept_)
        if model.vocabulary_.dtype.kind != "U" or model.idf_.shape != (n_terms,) or model.coef_.shape != (m, n_terms) or len(model.prompts_) != m:
            raise BundleError(f"{where}: lexical arrays of inconsistent shapes (vocabulary {model.vocabulary_.shape}, "
                              f"idf {model.idf_.shape}, coef {model.coef_.shape}, prompts {model.prompts_.shape})")
        model._counter = None
        return model


def _text_pairs(X) -> tuple[np.ndarray, np.ndarray]:
    """(query texts, prompt texts) of an (n, 2) array-like of strings."""
    X = np.asarray(X, dtype=object)
    if X.ndim != 2 or X.shape[1] != 2 or len(X) == 0:
        raise ValueError(f"the lexical model takes X as rows of [query text, prompt text]; got shape {X.shape}")
    return X[:, 0].astype(str), X[:, 1].astype(str)
