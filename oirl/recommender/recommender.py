"""The fitted recommender: a reward model, its embedder, the prompt table and the policy
settings, used by the CLI, the HTTP service and evaluation alike::

    from oirl.recommender.bundle import load_bundle

    rec = load_bundle("models/mawps")
    [r] = rec.recommend(["Tom has 3 apples ..."])            # the bundle's default policy
    scores = rec.score(["Tom has 3 apples ..."])             # (1, n_prompts) predicted rewards
    policy = rec.policy("conservative")                      # a policy object for the bundle's prompts

Training lives in :mod:`oirl.learn.train`, the bundle format in :mod:`oirl.recommender.bundle`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oirl.data.questions import QuestionKey
from oirl.data.schema import text_hashes64, text_id
from oirl.embed.base import revision_of
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.embed.static import StaticEmbedder
from oirl.errors import BundleError, OirlError, UnknownPromptError
from oirl.policy.policies import DEFAULT_POLICY, DEFAULT_THRESHOLD, Policy, PolicyContext, make_policy
from oirl.reward.base import RewardModel, check_predictions
from oirl.reward.features import pair_features


@dataclass(frozen=True)
class Candidate:
    """A prompt to choose from. ``prompt_id`` defaults to one derived from the text;
    ``cost`` (one call with it, for the cost-aware policy) overrides the bundle's."""

    prompt: str
    prompt_id: str = ""
    cost: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise OirlError(f"candidate {self.prompt_id or '(no id)'}: empty prompt text")
        if not self.prompt_id:
            object.__setattr__(self, "prompt_id", text_id(self.prompt, "p"))


@dataclass
class Recommendation:
    """The policy's pick for one query and the candidates ranked by predicted reward."""

    query: str
    prompt_id: str
    prompt: str
    score: float
    ranking: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None  # why the pick is not the top of the ranking (None when it is)

    def to_dict(self) -> dict[str, Any]:
        out = {"query": self.query, "prompt_id": self.prompt_id, "prompt": self.prompt, "score": self.score, "ranking": self.ranking}
        return out if self.reason is None else {**out, "reason": self.reason}


class Recommender:
    """A fitted recommender: the reward model, its embedder, the prompt table and the
    policy settings that cross-validation chose. Immutable once built (by
    :func:`oirl.learn.train.train_recommender` or :func:`oirl.recommender.bundle.load_bundle`):
    it scores, ranks and recommends, and never changes. ``model`` may be None (a bundle
    made by ``oirl init`` before any training): every query then scores each bundle prompt
    at its prior."""

    def __init__(
        self, *, model: RewardModel | None, embedder_spec: str, embedder_id: str, embedder_revision: str, layout: str,
        prompts: list[Candidate], prompt_vectors: np.ndarray, prior: dict[str, float], margin: float,
        default_policy: str = DEFAULT_POLICY, threshold: float = DEFAULT_THRESHOLD, costs: dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None, train_text_hashes: np.ndarray | None = None,
        train_instance_hashes: np.ndarray | None = None, cache_dir: str | Path | None = None, embedder_bundle_files: dict[str, bytes] | None = None,
        embedder_directory: str | Path | None = None, question_key: QuestionKey | None = None, fingerprint: str | None = None,
        cost_weight: float | None = None, calibration: dict[str, Any] | None = None, arms: dict[str, dict[str, Any]] | None = None,
    ):
        set_ = super().__setattr__
        set_("model", model)
        set_("embedder_spec", embedder_spec)
        set_("embedder_id", embedder_id)
        set_("embedder_revision", embedder_revision)
        set_("layout", layout)
        set_("prompts", tuple(prompts))
        set_("prompt_vectors", np.asarray(prompt_vectors))
        set_("prior", dict(prior))
        set_("margin", margin)
        set_("default_policy", default_policy)
        set_("threshold", threshold)
        set_("costs", dict(costs or {}))  # prompt id -> cost of one call, for the cost-aware policy
        set_("arms", {k: v for k, v in (arms or {}).items() if v})  # prompt id -> {"model"?, "params"?} (oirl.recommender.arms)
        set_("cost_weight", cost_weight)  # the cost-aware policy's lambda when none is asked for (None: 0)
        set_("calibration", calibration)  # how `oirl calibrate` chose it (oirl.learn.calibration)
        set_("metadata", metadata or {})
        set_("question_key", question_key or QuestionKey())  # how training texts were hashed (same question, same hash)
        set_("train_text_hashes", _sorted_hashes(train_text_hashes))
        set_("train_instance_hashes", _sorted_hashes(train_instance_hashes))
        set_("fingerprint", fingerprint)  # the hash of the bundle.json it was loaded from (None before it is saved)
        set_("_cache_dir", cache_dir)
        set_("_embedder_bundle_files", dict(embedder_bundle_files or {}))
        set_("_embedder_directory", embedder_directory)  # a static embedder carried inside the bundle
        set_("_live", {})  # the embedders, built on first use (a cache, not state)
        set_("_by_id", {p.prompt_id: p for p in prompts})
        set_("_by_text", {p.prompt: p for p in prompts})
        set_("_index", {p.prompt_id: i for i, p in enumerate(prompts)})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a Recommender is immutable once built (tried to set {name!r}); build another one instead")

    def with_cost_policy(self, cost_weight: float, calibration: dict[str, Any] | None = None) -> Recommender:
        """The same recommender with the cost-aware policy as its default, at ``cost_weight``
        (and the record of how that weight was chosen); unsaved, so without a fingerprint."""
        twin = copy.copy(self)
        for name, value in (("default_policy", "cost-aware"), ("cost_weight", float(cost_weight)), ("calibration", calibration),
                            ("fingerprint", None)):
            object.__setattr__(twin, name, value)
        twin.policy("cost-aware")  # every bundle prompt needs a cost: refuse the bundle now, not at the first request
        return twin

    def with_query_embedder(self, embedder) -> Recommender:
        """The same recommender, embedding queries with ``embedder`` (anything with
        ``embed(texts) -> (n, d)``, e.g. an in-memory cache in front of the model)."""
        twin = copy.copy(self)
        object.__setattr__(twin, "_live", {**self._live, "query": embedder})
        return twin

    def embedder_files(self) -> dict[str, bytes]:
        """Files of an embedder that travels inside the bundle (none for hub models)."""
        return dict(self._embedder_bundle_files)

    def check_embedder(self, *, where: str) -> None:
        """Refuse a live embedder other than the one the bundle was trained with."""
        live = self.embedder
        if live.model_id != self.embedder_id or revision_of(live) != self.embedder_revision:
            raise BundleError(
                f"{where}: trained with embedder {self.embedder_id} (revision {self.embedder_revision}), "
                f"but {self.embedder_spec!r} is now {live.model_id} (revision {revision_of(live)}); retrain the bundle"
            )

    # ------------------------------------------------------------------ scoring

    @property
    def default_prompt_id(self) -> str:
        """The prompt with the best mean training reward (the conservative default)."""
        return max(self.prompts, key=lambda p: self.prior[p.prompt_id]).prompt_id

    @property
    def embedder(self):
        """The live embedder: the one carried inside the bundle, else the one its spec names."""
        if "model" not in self._live:
            if self._embedder_directory is not None:

                self._live["model"] = StaticEmbedder.from_directory(self._embedder_directory)
            else:
                self._live["model"] = get_embedder(self.embedder_spec)
        return self._live["model"]

    @property
    def query_embedder(self):
        """What embeds queries and new prompts: the live embedder behind the disk cache."""
        if "query" not in self._live:
            self._live["query"] = CachedEmbedder(self.embedder, self._cache_dir)
        return self._live["query"]

    def resolve_candidates(self, candidates: list[Candidate] | None = None, candidate_ids: list[str] | None = None) -> list[Candidate]:
        """The candidate set: the bundle's prompts by default; passed ones replace them.

        ``candidate_ids`` name bundle prompts (unknown ids raise UnknownPromptError).
        A passed candidate whose text is a bundle prompt's takes that prompt's id; one
        that reuses a bundle prompt's id with another text is refused, as is a set
        naming one prompt twice.
        """
        if candidate_ids:
            unknown = [i for i in candidate_ids if i not in self._by_id]
            if unknown:
                raise UnknownPromptError(unknown, list(self._by_id))
        chosen = [self._by_id[i] for i in candidate_ids or []]
        for c in candidates or []:
            known = self._by_id.get(c.prompt_id)
            if known is not None and known.prompt != c.prompt:
                raise OirlError(f"candidate id {c.prompt_id!r} names a bundle prompt with another text; use a new id or the bundle's text")
            chosen.append(self._by_text.get(c.prompt, c))
        for key, what in ((lambda c: c.prompt_id, "id"), (lambda c: c.prompt, "text")):
            values = [key(c) for c in chosen]
            if len(set(values)) != len(values):  # one prompt twice would split its chance of being served
                twice = sorted({v for v in values if values.count(v) > 1})
                raise OirlError(f"candidate {what}(s) given twice: {', '.join(repr(t[:60]) for t in twice[:5])}")
        return chosen if (candidates or candidate_ids) else list(self.prompts)

    def candidate_costs(self, candidates: list[Candidate] | None) -> dict[str, float]:
        """Costs given with candidates, by the id each resolves to (a bundle text keeps the bundle's id)."""
        return {(self._by_text[c.prompt].prompt_id if c.prompt in self._by_text else c.prompt_id): float(c.cost)
                for c in candidates or [] if c.cost is not None}

    def as_candidate(self, text: str) -> Candidate:
        """The bundle prompt with this text, or a new candidate."""
        return self._by_text.get(text) or Candidate(text)

    def is_bundle_prompt(self, candidate: Candidate) -> bool:
        known = self._by_id.get(candidate.prompt_id)
        return known is not None and known.prompt == candidate.prompt

    def texts_to_embed(self, candidates: list[Candidate]) -> list[str]:
        """Texts of the candidates whose vectors the bundle does not hold (new prompts)."""
        return [c.prompt for c in candidates if not self.is_bundle_prompt(c)]

    def candidate_vectors(self, candidates: list[Candidate], new_vectors: np.ndarray | None = None) -> np.ndarray:
        """Prompt vectors, shape (n_candidates, d): stored ones for bundle prompts.

        ``new_vectors`` holds the vectors of :meth:`texts_to_embed`, in that order;
        without it they are embedded here.
        """
        if new_vectors is None:
            new_texts = self.texts_to_embed(candidates)
            new_vectors = self.query_embedder.embed(new_texts) if new_texts else None
        out = np.empty((len(candidates), self.prompt_vectors.shape[1]), dtype=np.float32)
        position = 0
        for i, c in enumerate(candidates):
            if self.is_bundle_prompt(c):
                out[i] = self.prompt_vectors[self._index[c.prompt_id]]
            else:
                out[i] = new_vectors[position]
                position += 1
        return out

    def score_vectors(self, query_vectors: np.ndarray, candidate_vectors: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """Predicted rewards from vectors: (n_q, d) and (n_c, d) -> (n_q, n_c); ``texts``
        are the queries themselves, which a model that ``reads_texts`` needs."""
        if self.model is None:
            return np.tile(self._prior_scores(candidate_vectors), (len(query_vectors), 1))
        scores = self.model.predict_grid(query_vectors, candidate_vectors, self.layout, texts=texts)
        check_predictions(scores, f"{self.model.name} model")
        return scores

    def score_pairs(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """Predicted reward of row-aligned (query, prompt) pairs: (n, d), (n, d) -> (n,)
        (``texts``: the queries, for a model that ``reads_texts``)."""
        if self.model is None:
            return self._prior_scores(prompt_vectors)
        if self.model.reads_texts:  # each query against the distinct prompts, then its own pair
            prompts, which = np.unique(np.asarray(prompt_vectors, dtype=np.float32), axis=0, return_inverse=True)
            grid = self.model.predict_grid(query_vectors, prompts, self.layout, texts=texts)
            scores = grid[np.arange(len(grid)), which.ravel()]
        else:
            scores = self.model.predict_reward(pair_features(query_vectors, prompt_vectors, self.layout))
        check_predictions(scores[None, :], f"{self.model.name} model")
        return scores

    def _prior_scores(self, prompt_vectors: np.ndarray) -> np.ndarray:
        """Without a reward model: each prompt's prior, matched by its vector (a prompt the
        bundle does not hold scores the mean prior). Shape (n,)."""
        known = np.array([self.prior[p.prompt_id] for p in self.prompts])
        similar = np.asarray(prompt_vectors, dtype=np.float32) @ self.prompt_vectors.T.astype(np.float32)
        exact = similar.max(axis=1) > 1 - 1e-5
        return np.where(exact, known[similar.argmax(axis=1)], known.mean())

    def score(self, queries: list[str], candidates: list[Candidate] | None = None) -> np.ndarray:
        """Predicted reward of every candidate for every query, shape (n_queries, n_candidates)."""
        check_queries(queries)
        candidates = candidates if candidates is not None else self.prompts
        return self.score_vectors(self.query_embedder.embed(list(queries)), self.candidate_vectors(candidates), texts=list(queries))

    def policy(self, name: str | None = None, candidates: list[Candidate] | None = None, *, costs: dict[str, float] | None = None,
               cost_weight: float | None = None) -> Policy:
        """The named policy (None: the bundle's default) for a candidate set (default: the
        bundle's prompts), with what it needs to know: each candidate's training prior,
        bundle membership and cost (``costs``, by prompt id, add to or override the
        bundle's), the cross-validated margin, the fallback threshold and the cost weight
        (None: the bundle's, else 0). Built before any embedding, so that e.g. cost-aware
        without costs fails at once."""
        candidates = self.prompts if candidates is None else candidates
        in_bundle = np.array([self.is_bundle_prompt(c) for c in candidates], dtype=bool)
        known = {**self.costs, **(costs or {})}
        context = PolicyContext(
            ids=tuple(c.prompt_id for c in candidates),
            prior=np.array([self.prior[c.prompt_id] if b else np.nan for c, b in zip(candidates, in_bundle, strict=True)]),
            in_bundle=in_bundle, cost=np.array([known.get(c.prompt_id, np.nan) for c in candidates], dtype=np.float64))
        weight = cost_weight if cost_weight is not None else (self.cost_weight or 0.0)
        return make_policy(name or self.default_policy, context, margin=self.margin, threshold=self.threshold, cost_weight=weight)

    def rank(self, queries: list[str], scores: np.ndarray, candidates: list[Candidate], policy: Policy, *, top_k: int | None = None,
             picks: np.ndarray | None = None, reasons: list[str | None] | None = None) -> list[Recommendation]:
        """``policy``'s pick for each row of a score matrix (n_q, n_c) with the top-k ranking by score.

        ``picks`` (n_q,), if given, replace the policy's (e.g. an exploring service's draws),
        with their ``reasons``; otherwise a pick that is not the top of its ranking says why
        (:meth:`Policy.explain`)."""
        if picks is None:
            picks = policy.choose(scores)
            reasons = [policy.explain(row, int(pick)) for row, pick in zip(scores, picks, strict=True)]
        reasons = reasons or [None] * len(picks)
        prior = np.nan_to_num(policy.context.prior, nan=-1.0)
        results = []
        for query, row, pick, reason in zip(queries, scores, picks, reasons, strict=True):
            order = np.lexsort((-prior, -row))[: top_k or None]  # by score, ties by training prior (as the policies)
            ranking = [{"prompt_id": candidates[j].prompt_id, "prompt": candidates[j].prompt, "score": float(row[j])} for j in order]
            c = candidates[int(pick)]
            results.append(Recommendation(query, c.prompt_id, c.prompt, float(row[pick]), ranking, reason))
        return results

    def recommend(
        self, queries: list[str], candidates: list[Candidate] | None = None, *, candidate_ids: list[str] | None = None,
        policy: str | None = None, top_k: int | None = None, cost_weight: float | None = None,
    ) -> list[Recommendation]:
        """Best-of-N per query: the policy's pick plus the top-k ranking by score (candidates'
        own costs, if given, override the bundle's)."""
        chosen = self.resolve_candidates(candidates, candidate_ids)
        rule = self.policy(policy, chosen, costs=self.candidate_costs(candidates), cost_weight=cost_weight)
        return self.rank(queries, self.score(queries, chosen), chosen, rule, top_k=top_k)

    def seen_in_training(self, texts: list[str] | np.ndarray) -> np.ndarray:
        """(n,) True where a query text is the same question (:mod:`oirl.data.questions`) as a training query."""
        return _member(self.question_key.hashes(texts), self.train_text_hashes)

    def trained_on_instances(self, query_ids: list[str] | np.ndarray) -> np.ndarray:
        """(n,) True where a query instance (id) was among the training rows."""
        return _member(text_hashes64(query_ids), self.train_instance_hashes)

def _sorted_hashes(hashes: np.ndarray | None) -> np.ndarray:
    return np.sort(np.asarray(hashes, dtype="<u8")) if hashes is not None else np.zeros(0, dtype="<u8")


def _member(hashes: np.ndarray, sorted_hashes: np.ndarray) -> np.ndarray:
    if not len(sorted_hashes):
        return np.zeros(len(hashes), dtype=bool)
    at = np.clip(np.searchsorted(sorted_hashes, hashes), 0, len(sorted_hashes) - 1)
    return sorted_hashes[at] == hashes


def check_queries(queries: list[str]) -> None:
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise OirlError(f"query {i}: empty query text")


__all__ = ["Candidate", "Recommendation", "Recommender"]
