"""The Python API: train a reward model from logs, save it as a bundle, recommend prompts.

The CLI (:mod:`oirl.cli`) and the HTTP service (:mod:`oirl.serve.app`) are thin shells
over :class:`Recommender`::

    from oirl.logs import read_logs, training_rows
    from oirl.recommender import Recommender

    rec = train_recommender(training_rows(read_logs("logs/mawps.parquet"), "split", "train", source="mawps"))
    save_bundle(rec, "models/mawps")
    rec = load_bundle("models/mawps")
    [r] = rec.recommend(["Tom has 3 apples ..."])          # the bundle's default policy

Training embeds the logs (:mod:`oirl.embed.cached`), pivots them into a
:class:`~oirl.data.matrix.LogMatrix`, lets cross-validation choose the reward model and
policy (:mod:`oirl.learn.crossfit`), and fits the chosen model on every training row. The
bundle format lives in :mod:`oirl.recommender.bundle`, the evaluation in :mod:`oirl.evaluation.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oirl.data.schema import text_hashes64, text_id
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.errors import BundleError, OirlError, UnknownPromptError
from oirl.policy.policies import DEFAULT_POLICY, DEFAULT_THRESHOLD, choose
from oirl.reward.base import RewardModel


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

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "prompt_id": self.prompt_id, "prompt": self.prompt, "score": self.score, "ranking": self.ranking}


class Recommender:
    """A fitted reward model with its embedder, prompt table and policy parameters."""

    def __init__(
        self, *, model: RewardModel, embedder_spec: str, embedder_id: str, embedder_revision: str, layout: str,
        prompts: list[Candidate], prompt_vectors: np.ndarray, prior: dict[str, float], margin: float,
        default_policy: str = DEFAULT_POLICY, threshold: float = DEFAULT_THRESHOLD, costs: dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None, train_text_hashes: np.ndarray | None = None,
        train_instance_hashes: np.ndarray | None = None, cache_dir: str | Path | None = None, embedder_bundle_files: dict[str, bytes] | None = None,
        embedder_directory: str | Path | None = None,
    ):
        self.model = model
        self.embedder_spec = embedder_spec
        self.embedder_id = embedder_id
        self.embedder_revision = embedder_revision
        self.layout = layout
        self.prompts = prompts
        self.prompt_vectors = prompt_vectors
        self.prior = prior
        self.margin = margin
        self.default_policy = default_policy
        self.threshold = threshold
        self.costs = costs or {}  # prompt id -> cost of one call, for the cost-aware policy
        self.metadata = metadata or {}
        self.train_text_hashes = _sorted_hashes(train_text_hashes)
        self.train_instance_hashes = _sorted_hashes(train_instance_hashes)
        self._cache_dir = cache_dir
        self._embedder_bundle_files = embedder_bundle_files or {}
        self._embedder_directory = embedder_directory  # a static embedder carried inside the bundle
        self._embedder = None
        self._query_embedder = None
        self._by_id = {p.prompt_id: p for p in prompts}
        self._by_text = {p.prompt: p for p in prompts}
        self._index = {p.prompt_id: i for i, p in enumerate(prompts)}
        self.fingerprint: str | None = None  # set by load(): hash of the loaded bundle.json

    # ------------------------------------------------------------------ training

    # ------------------------------------------------------------------ bundle I/O

    def embedder_files(self) -> dict[str, bytes]:
        """Files of an embedder that travels inside the bundle (none for hub models)."""
        return dict(self._embedder_bundle_files)

    def check_embedder(self, *, where: str) -> None:
        """Refuse a live embedder other than the one the bundle was trained with."""
        live = self.embedder
        if live.model_id != self.embedder_id or embedder_revision(live) != self.embedder_revision:
            raise BundleError(
                f"{where}: trained with embedder {self.embedder_id} (revision {self.embedder_revision}), "
                f"but {self.embedder_spec!r} is now {live.model_id} (revision {embedder_revision(live)}); retrain the bundle"
            )

    # ------------------------------------------------------------------ scoring

    @property
    def default_prompt_id(self) -> str:
        """The prompt with the best mean training reward (the conservative default)."""
        return max(self.prompts, key=lambda p: self.prior[p.prompt_id]).prompt_id

    @property
    def embedder(self):
        """The live embedder: the one carried inside the bundle, else the one its spec names."""
        if self._embedder is None:
            if self._embedder_directory is not None:
                from oirl.embed.static import StaticEmbedder

                self._embedder = StaticEmbedder.from_directory(self._embedder_directory)
            else:
                self._embedder = get_embedder(self.embedder_spec)
        return self._embedder

    def set_query_embedder(self, embedder) -> None:
        """Use another query embedder (anything with ``embed(texts) -> (n, d)``), e.g. an in-memory cache."""
        self._query_embedder = embedder

    @property
    def query_embedder(self):
        if self._query_embedder is None:
            self._query_embedder = CachedEmbedder(self.embedder, self._cache_dir)
        return self._query_embedder

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

    def score_vectors(self, query_vectors: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
        """Predicted rewards from vectors: (n_q, d) and (n_c, d) -> (n_q, n_c)."""
        from oirl.reward.base import check_scores

        scores = self.model.predict_grid(query_vectors, candidate_vectors, self.layout)
        check_scores(scores, f"{self.model.name} model")
        return scores

    def score_pairs(self, query_vectors: np.ndarray, prompt_vectors: np.ndarray) -> np.ndarray:
        """Predicted reward of row-aligned (query, prompt) pairs: (n, d), (n, d) -> (n,)."""
        from oirl.reward.base import check_scores
        from oirl.reward.features import pair_features

        scores = self.model.predict_reward(pair_features(query_vectors, prompt_vectors, self.layout))
        check_scores(scores[None, :], f"{self.model.name} model")
        return scores

    def score(self, queries: list[str], candidates: list[Candidate] | None = None) -> np.ndarray:
        """Predicted reward of every candidate for every query, shape (n_queries, n_candidates)."""
        check_queries(queries)
        candidates = candidates if candidates is not None else self.prompts
        return self.score_vectors(self.query_embedder.embed(list(queries)), self.candidate_vectors(candidates))

    def policy_context(self, candidates: list[Candidate], costs: dict[str, float] | None = None, cost_weight: float = 0.0) -> dict[str, Any]:
        """What the policies need to know about a candidate set: priors, bundle membership,
        costs (``costs`` overrides the bundle's, by prompt id) and the cost weight."""
        in_bundle = np.array([self.is_bundle_prompt(c) for c in candidates], dtype=bool)
        prior = np.array([self.prior[c.prompt_id] if b else np.nan for c, b in zip(candidates, in_bundle, strict=True)])
        known = {**self.costs, **(costs or {})}
        cost = np.array([known.get(c.prompt_id, np.nan) for c in candidates], dtype=np.float64)
        return {"prior": prior, "in_bundle": in_bundle, "margin": self.margin, "threshold": self.threshold, "cost": cost, "cost_weight": cost_weight}

    def check_policy(self, policy: str | None, candidates: list[Candidate] | None = None, costs: dict[str, float] | None = None) -> str:
        """The policy to use (None: the bundle's default), checked before any embedding.
        ``costs`` (prompt id -> cost) add to or override the bundle's."""
        from oirl.policy.policies import POLICIES

        policy = policy or self.default_policy
        if policy not in POLICIES:
            raise OirlError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
        if policy == "cost-aware":
            cost = self.policy_context(candidates if candidates is not None else self.prompts, costs)["cost"]
            missing = [c.prompt_id for c, v in zip(candidates or self.prompts, cost, strict=True) if not np.isfinite(v)]
            if missing:
                raise OirlError(f"the cost-aware policy needs a cost for every candidate; none known for: {', '.join(missing[:10])}")
        return policy

    def rank(
        self, queries: list[str], scores: np.ndarray, candidates: list[Candidate], *, policy: str | None = None,
        top_k: int | None = None, cost_weight: float = 0.0, costs: dict[str, float] | None = None, picks: np.ndarray | None = None,
    ) -> list[Recommendation]:
        """Apply ``policy`` (default: the bundle's) to a score matrix (n_q, n_c): the pick plus the top-k ranking.

        ``costs`` add to or override the bundle's; ``picks`` (n_q,), if given, replace the
        policy's picks (e.g. a draw of an exploring service)."""
        policy = self.check_policy(policy, candidates, costs)
        context = self.policy_context(candidates, costs, cost_weight=cost_weight)
        picks = choose(policy, scores, **context) if picks is None else picks
        prior = np.nan_to_num(context["prior"], nan=-1.0)
        results = []
        for query, row, pick in zip(queries, scores, picks, strict=True):
            order = np.lexsort((-prior, -row))[: top_k or None]  # by score, ties by training prior (as the policies)
            ranking = [{"prompt_id": candidates[j].prompt_id, "prompt": candidates[j].prompt, "score": float(row[j])} for j in order]
            c = candidates[int(pick)]
            results.append(Recommendation(query, c.prompt_id, c.prompt, float(row[pick]), ranking))
        return results

    def recommend(
        self, queries: list[str], candidates: list[Candidate] | None = None, *, candidate_ids: list[str] | None = None,
        policy: str | None = None, top_k: int | None = None, cost_weight: float = 0.0,
    ) -> list[Recommendation]:
        """Best-of-N per query: the policy's pick plus the top-k ranking by score (candidates'
        own costs, if given, override the bundle's)."""
        chosen = self.resolve_candidates(candidates, candidate_ids)
        costs = self.candidate_costs(candidates)
        policy = self.check_policy(policy, chosen, costs)
        return self.rank(queries, self.score(queries, chosen), chosen, policy=policy, top_k=top_k, cost_weight=cost_weight, costs=costs)

    def seen_in_training(self, texts: list[str] | np.ndarray) -> np.ndarray:
        """(n,) True where a query text occurred among the training queries."""
        return _member(text_hashes64(texts), self.train_text_hashes)

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


def bundle_files_of(embedder) -> dict[str, bytes]:
    """The files a bundle carries so that serving needs no distillation (static embedders)."""
    from oirl.embed.static import StaticEmbedder, static_model_files

    if not isinstance(embedder, StaticEmbedder):
        return {}
    return {path.name: path.read_bytes() for path in static_model_files(embedder)}


def embedder_revision(embedder) -> str:
    """What identifies an embedder's weights (its content hash where it has one)."""
    return str(getattr(embedder, "revision", None) or embedder.model_id)


def check_queries(queries: list[str]) -> None:
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise OirlError(f"query {i}: empty query text")


__all__ = ["Candidate", "Recommendation", "Recommender"]
