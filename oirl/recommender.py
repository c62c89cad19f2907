"""The Python API: train a reward model from logs, save it as a bundle, recommend prompts.

The CLI (:mod:`oirl.cli`) and the HTTP service (:mod:`oirl.serve`) are thin shells
over :class:`Recommender`::

    from oirl.logs import read_logs
    from oirl.recommender import Recommender

    rec = Recommender.train(read_logs("logs/gsm8k.parquet"), split_column="split")
    rec.save("models/gsm8k")
    rec = Recommender.load("models/gsm8k")
    [r] = rec.recommend(["Tom has 3 apples ..."], policy="conservative")

A bundle is a directory: ``bundle.json`` (embedder, prompt table, feature layout,
policy parameters, training fingerprint, cross-validated metrics, version), the model
in its library's own format, and ``prompt_vectors.npy``. Nothing in it is pickled.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oirl import __version__
from oirl._atomic import atomic_directory
from oirl.embed import DEFAULT_EMBEDDER, CachedEmbedder, get_embedder
from oirl.errors import BundleError, OirlError, UnknownPromptError
from oirl.evaluate import classification_metrics, cost_sweep, reward_cost_area, reward_matrix, selection_report
from oirl.features import DEFAULT_LAYOUT, feature_dimension, grid_features, pair_features
from oirl.logs import fingerprint, text_id
from oirl.reward import DEFAULT_MODEL, REWARD_MODELS, RewardModel, make_reward_model
from oirl.select import DEFAULT_THRESHOLD, choose, choose_margin

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
PROMPT_VECTORS_FILE = "prompt_vectors.npy"


@dataclass(frozen=True)
class Candidate:
    """A prompt to choose from. ``prompt_id`` defaults to one derived from the text."""

    prompt: str
    prompt_id: str = ""

    def __post_init__(self) -> None:
        if not self.prompt.strip():
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
        self,
        *,
        model: RewardModel,
        embedder_spec: str,
        layout: str,
        prompts: list[Candidate],
        prompt_vectors: np.ndarray,
        prior: dict[str, float],
        margin: float,
        threshold: float = DEFAULT_THRESHOLD,
        costs: dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.model = model
        self.embedder_spec = embedder_spec
        self.layout = layout
        self.prompts = prompts
        self.prompt_vectors = prompt_vectors
        self.prior = prior
        self.margin = margin
        self.threshold = threshold
        self.costs = costs or {}  # prompt id -> cost of one call, for the cost-aware policy
        self.metadata = metadata or {}
        self._cache_dir = cache_dir
        self._query_embedder = None
        self._by_id = {p.prompt_id: p for p in prompts}
        self._by_text = {p.prompt: p for p in prompts}
        self.fingerprint: str | None = None  # set by load(): content hash of the bundle

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        logs: pd.DataFrame,
        *,
        model: str = DEFAULT_MODEL,
        model_params: dict[str, Any] | None = None,
        embedder: str = DEFAULT_EMBEDDER,
        layout: str = DEFAULT_LAYOUT,
        cv_folds: int = 3,
        cache_dir: str | Path | None = None,
        progress: bool = False,
        source: str = "<logs>",
    ) -> Recommender:
        """Fit on ``logs`` (canonical frame, training rows only).

        Cross-fitting over ``cv_folds`` folds grouped by query *text* gives out-of-fold
        scores for every training row; they choose the conservative margin and give the
        cross-validated metrics stored in the bundle. The final model is then fit on
        all rows.
        """
        started = time.perf_counter()

        def make() -> RewardModel:
            return make_reward_model(model, **(model_params or {})).set_embedding_dimension(cached.dimension)

        make_reward_model(model, **(model_params or {}))  # fail fast on an unknown model name before embedding anything
        cached = CachedEmbedder(get_embedder(embedder), cache_dir)
        prompts = [Candidate(text, pid) for pid, text in logs.drop_duplicates("prompt_id")[["prompt_id", "prompt"]].itertuples(index=False)]
        query_texts, query_index = np.unique(logs["query"].to_numpy(dtype=str), return_inverse=True)
        prompt_index = pd.Index([p.prompt_id for p in prompts]).get_indexer(logs["prompt_id"])
        query_vectors = cached.embed(list(query_texts), progress=progress)
        prompt_vectors = cached.embed([p.prompt for p in prompts])
        X = pair_features(query_vectors[query_index], prompt_vectors[prompt_index], layout)
        y = logs["reward"].to_numpy(dtype=np.float64)
        prior = logs.groupby("prompt_id")["reward"].mean().to_dict()
        costs = logs.groupby("prompt_id")["cost"].mean().to_dict() if "cost" in logs.columns else {}

        oof = cross_fit_predict(make, X, y, groups=query_index, n_folds=cv_folds, progress=progress)
        scored = logs.assign(reward=y, score=oof)
        _, prompt_ids, rewards = reward_matrix(scored)
        scores = scored.pivot(index="query_id", columns="prompt_id", values="score").to_numpy(dtype=np.float64)
        prior_vector = np.array([prior[p] for p in prompt_ids])
        margin, margin_values = choose_margin(np.where(np.isnan(rewards), -np.inf, scores), np.nan_to_num(rewards), prior_vector)
        cv_report = selection_report(
            scores, rewards, prompt_ids, prior=prior_vector, in_bundle=np.ones(len(prompt_ids), bool),
            margin=margin, threshold=DEFAULT_THRESHOLD,
        )
        fitted = make().fit(X, y)
        metadata = {
            "training": {
                "source": source,
                "fingerprint": fingerprint(logs),
                "rows": int(len(logs)),
                "query_instances": int(logs["query_id"].nunique()),
                "distinct_queries": int(len(query_texts)),
                "seconds": round(time.perf_counter() - started, 2),
            },
            "metrics": {
                "cross_validation": {
                    "folds": cv_folds,
                    "grouped_by": "query text",
                    "selection": cv_report,
                    "reward_model": classification_metrics(y, oof),
                    "margin_values": {str(k): v for k, v in margin_values.items()},
                }
            },
        }
        return cls(
            model=fitted, embedder_spec=embedder, layout=layout, prompts=prompts, prompt_vectors=prompt_vectors,
            prior=prior, margin=margin, costs=costs, metadata=metadata, cache_dir=cache_dir,
        )

    # ------------------------------------------------------------------ bundle I/O

    def save(self, directory: str | Path) -> Path:
        """Write the bundle atomically (a failure leaves any previous bundle in place)."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.model.save(tmp)
            np.save(tmp / PROMPT_VECTORS_FILE, self.prompt_vectors.astype(np.float32), allow_pickle=False)
            (tmp / BUNDLE_FILE).write_text(json.dumps(self._bundle_json(), indent=2, allow_nan=False), encoding="utf-8")
        return directory

    def _bundle_json(self) -> dict[str, Any]:
        dimension = int(self.prompt_vectors.shape[1])
        return {
            "format": BUNDLE_FORMAT,
            "oirl_version": __version__,
            "embedder": {"spec": self.embedder_spec, "model_id": get_embedder(self.embedder_spec).model_id, "dimension": dimension},
            "features": {"layout": self.layout, "dimension": feature_dimension(self.layout, dimension)},
            "model": {"kind": self.model.name, "file": self.model.model_file, "params": self.model.get_params()},
            "prompts": [
                {"prompt_id": p.prompt_id, "prompt": p.prompt, "train_mean_reward": self.prior[p.prompt_id], "cost": self.costs.get(p.prompt_id)}
                for p in self.prompts
            ],
            "policy": {
                "default_prompt_id": self.default_prompt_id,
                "conservative_margin": None if np.isinf(self.margin) else self.margin,
                "fallback_threshold": self.threshold,
            },
            **_json_safe(self.metadata),
        }

    @classmethod
    def load(cls, directory: str | Path, *, cache_dir: str | Path | None = None) -> Recommender:
        """Load a bundle; raises :class:`BundleError` naming what is missing or corrupt."""
        directory = Path(directory)
        if not directory.is_dir():
            raise BundleError(f"{directory}: no such model bundle directory")
        meta_path = directory / BUNDLE_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            kind = meta["model"]["kind"]
            if kind not in REWARD_MODELS:
                raise BundleError(f"{meta_path}: unknown model kind {kind!r}")
            params = meta["model"]["params"]
            if "hidden_layer_sizes" in params:
                params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
            prompts = [Candidate(p["prompt"], p["prompt_id"]) for p in meta["prompts"]]
            prior = {p["prompt_id"]: float(p["train_mean_reward"]) for p in meta["prompts"]}
            costs = {p["prompt_id"]: float(p["cost"]) for p in meta["prompts"] if p.get("cost") is not None}
            margin = meta["policy"]["conservative_margin"]
            layout, dimension = meta["features"]["layout"], meta["embedder"]["dimension"]
            embedder_spec = meta["embedder"]["spec"]
        except FileNotFoundError:
            raise BundleError(f"{meta_path}: missing (is {directory} a model bundle made by 'oirl train'?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{meta_path}: not valid JSON ({exc})") from None
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{meta_path}: missing or malformed field {exc}") from None
        if meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{meta_path}: bundle format {meta.get('format')!r}, this oirl reads {BUNDLE_FORMAT}")
        try:
            prompt_vectors = np.load(directory / PROMPT_VECTORS_FILE, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise BundleError(f"{directory / PROMPT_VECTORS_FILE}: missing or unreadable ({type(exc).__name__})") from None
        if prompt_vectors.shape != (len(prompts), dimension):
            raise BundleError(f"{directory / PROMPT_VECTORS_FILE}: shape {prompt_vectors.shape}, expected {(len(prompts), dimension)}")
        model = REWARD_MODELS[kind].load(directory, params)
        metadata = {k: meta[k] for k in ("training", "metrics") if k in meta}
        rec = cls(
            model=model, embedder_spec=embedder_spec, layout=layout, prompts=prompts, prompt_vectors=prompt_vectors,
            prior=prior, margin=float("inf") if margin is None else float(margin),
            threshold=float(meta["policy"].get("fallback_threshold", DEFAULT_THRESHOLD)), costs=costs, metadata=metadata, cache_dir=cache_dir,
        )
        rec.fingerprint = bundle_fingerprint(directory, meta["model"]["file"])
        return rec

    # ------------------------------------------------------------------ scoring

    @property
    def default_prompt_id(self) -> str:
        """The prompt with the best mean training reward (the conservative default)."""
        return max(self.prompts, key=lambda p: self.prior[p.prompt_id]).prompt_id

    def set_query_embedder(self, embedder) -> None:
        """Use another query embedder (anything with ``embed(texts) -> (n, d)``), e.g. an in-memory cache."""
        self._query_embedder = embedder

    @property
    def query_embedder(self):
        if self._query_embedder is None:
            self._query_embedder = CachedEmbedder(get_embedder(self.embedder_spec), self._cache_dir)
        return self._query_embedder

    def resolve_candidates(self, candidates: list[Candidate] | None = None, candidate_ids: list[str] | None = None) -> list[Candidate]:
        """The candidate set: the bundle's prompts by default; passed ones replace them.

        A passed candidate whose text is a bundle prompt's takes that prompt's id;
        ``candidate_ids`` name bundle prompts (unknown ids raise UnknownPromptError).
        """
        if candidate_ids:
            unknown = [i for i in candidate_ids if i not in self._by_id]
            if unknown:
                raise UnknownPromptError(unknown, list(self._by_id))
        chosen = [self._by_id[i] for i in candidate_ids or []]
        for c in candidates or []:
            chosen.append(self._by_text.get(c.prompt, c))
        return chosen if (candidates or candidate_ids) else list(self.prompts)

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
        new_texts = self.texts_to_embed(candidates)
        if new_vectors is None:
            new_vectors = self.query_embedder.embed(new_texts) if new_texts else None
        index = {p.prompt_id: i for i, p in enumerate(self.prompts)}
        out = np.empty((len(candidates), self.prompt_vectors.shape[1]), dtype=np.float32)
        position = 0
        for i, c in enumerate(candidates):
            if self.is_bundle_prompt(c):
                out[i] = self.prompt_vectors[index[c.prompt_id]]
            else:
                out[i] = new_vectors[position]
                position += 1
        return out

    def score_vectors(self, query_vectors: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
        """Predicted rewards from vectors: (n_q, d) and (n_c, d) -> (n_q, n_c)."""
        features = grid_features(query_vectors, candidate_vectors, self.layout)
        return self.model.predict_reward(features).reshape(len(query_vectors), len(candidate_vectors))

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
        cost = np.array([known.get(c.prompt_id, np.nan) for c in candidates]) if known else None
        return {"prior": prior, "in_bundle": in_bundle, "margin": self.margin, "threshold": self.threshold, "cost": cost, "cost_weight": cost_weight}

    def rank(
        self, queries: list[str], scores: np.ndarray, candidates: list[Candidate], *, policy: str = "argmax",
        top_k: int | None = None, cost_weight: float = 0.0,
    ) -> list[Recommendation]:
        """Apply ``policy`` to a score matrix (n_q, n_c): the pick plus the top-k ranking per query."""
        context = self.policy_context(candidates, cost_weight=cost_weight)
        if policy == "cost-aware":
            cost = context["cost"]
            missing = [c.prompt_id for i, c in enumerate(candidates) if cost is None or np.isnan(cost[i])]
            if missing:
                raise OirlError(f"the cost-aware policy needs a cost for every candidate; none known for: {', '.join(missing[:10])}")
        picks = choose(policy, scores, **context)
        prior = np.nan_to_num(context["prior"], nan=-1.0)
        results = []
        for query, row, pick in zip(queries, scores, picks, strict=True):
            order = np.lexsort((-prior, -row))[: top_k or None]  # by score, ties by training prior (as the policies)
            ranking = [{"prompt_id": candidates[j].prompt_id, "prompt": candidates[j].prompt, "score": float(row[j])} for j in order]
            c = candidates[int(pick)]
            results.append(Recommendation(query, c.prompt_id, c.prompt, float(row[pick]), ranking))
        return results

    def recommend(
        self,
        queries: list[str],
        candidates: list[Candidate] | None = None,
        *,
        candidate_ids: list[str] | None = None,
        policy: str = "argmax",
        top_k: int | None = None,
        cost_weight: float = 0.0,
    ) -> list[Recommendation]:
        """Best-of-N per query: the policy's pick plus the top-k ranking by score."""
        chosen = self.resolve_candidates(candidates, candidate_ids)
        return self.rank(queries, self.score(queries, chosen), chosen, policy=policy, top_k=top_k, cost_weight=cost_weight)

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, logs: pd.DataFrame, candidates: list[Candidate] | None = None, *, costs: dict[str, float] | None = None,
        cost_weights: list[float] | None = None,
    ) -> dict[str, Any]:
        """Selection and reward-model metrics on logged outcomes (see :mod:`oirl.evaluate`).

        Candidates default to the prompts in ``logs``; passed candidates restrict them.
        Costs come from ``costs`` (prompt id -> cost), else the logs' ``cost`` column,
        else the bundle; with costs known for every prompt, ``cost_weights`` sweeps the
        cost-aware policy (``cost_sweep`` in the report, with single prompts as points).
        """
        if candidates is not None:
            keep = {c.prompt_id for c in self.resolve_candidates(candidates)} | {c.prompt_id for c in candidates}
            logs = logs[logs["prompt_id"].isin(keep)]
            if logs.empty:
                raise OirlError("none of the candidates occur in the evaluated logs")
        query_ids, prompt_ids, rewards = reward_matrix(logs)
        prompt_table = logs.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
        eval_candidates = [Candidate(prompt_table[p], p) for p in prompt_ids]
        text_of = logs.drop_duplicates("query_id").set_index("query_id")["query"]
        texts, inverse = np.unique(text_of.loc[query_ids].to_numpy(dtype=str), return_inverse=True)
        scores = self.score(list(texts), eval_candidates)[inverse]
        logged = ~np.isnan(rewards)
        logged_costs = logs.groupby("prompt_id")["cost"].mean().to_dict() if "cost" in logs.columns else {}
        context = self.policy_context(eval_candidates, costs={**logged_costs, **(costs or {})})
        cost = context["cost"]
        if cost is not None and np.isnan(cost).any():
            cost = None  # a partial cost table cannot rank every candidate
        report = selection_report(
            scores, rewards, prompt_ids, prior=context["prior"], in_bundle=context["in_bundle"],
            margin=self.margin, threshold=self.threshold, cost=cost,
        )
        report["reward_model"] = classification_metrics(rewards[logged], scores[logged])
        report["conservative_margin"] = None if np.isinf(self.margin) else self.margin
        if cost is not None and cost_weights:
            curve = cost_sweep(scores, rewards, cost, np.asarray(cost_weights), context["prior"])
            arms = pd.DataFrame({"prompt_id": prompt_ids, "reward": np.nanmean(rewards, axis=0), "cost": cost})
            span = (float(cost.min()), float(cost.max()))
            report["cost_sweep"] = {
                "curve": curve.to_dict(orient="records"),
                "area": reward_cost_area(curve, span),
                "single_prompts": arms.to_dict(orient="records"),
                "single_prompts_area": reward_cost_area(arms, span),
                "cost_range": list(span),
            }
        return _json_safe(report)


def check_queries(queries: list[str]) -> None:
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise OirlError(f"query {i}: empty query text")


def cross_fit_predict(
    make_model, X: np.ndarray, y: np.ndarray, *, groups: np.ndarray, n_folds: int = 3, progress: bool = False
) -> np.ndarray:
    """Out-of-fold predictions, shape (n,): each row scored by a model that never saw its group.

    Groups are query texts, so one question never sits on both sides of a fold.
    """
    from sklearn.model_selection import GroupKFold
    from tqdm import tqdm

    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise OirlError(f"cross-validation needs at least {n_folds} distinct queries, got {n_groups}")
    oof = np.empty(len(y), dtype=np.float64)
    folds = GroupKFold(n_splits=n_folds).split(X, y, groups)
    for train, held_out in tqdm(folds, total=n_folds, desc="cross-fitting", unit="fold", disable=not progress):
        oof[held_out] = make_model().fit(X[train], y[train]).predict_reward(X[held_out])
    return oof


def bundle_fingerprint(directory: Path, model_file: str) -> str:
    """Content hash of a bundle's metadata and model: the service's ``model_version``."""
    digest = hashlib.sha256()
    for name in (BUNDLE_FILE, model_file, PROMPT_VECTORS_FILE):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
