"""Evaluated logs as matrices with a recommender's scores (:class:`ScoredLogs`): what every
report in :mod:`oirl.evaluation` is computed from.

The columns are the *candidates* a policy may pick, which is not always what the log
holds. By default they are the bundle's prompts and every logged prompt; with a
``candidate_ids`` column (``oirl export-decisions`` writes one) each decision offered its
own set; passed candidates replace both. A candidate the logger never played on a
decision has no *support* there: its reward on that decision is not in the log, so an
off-policy estimate of a policy that picks it extrapolates (see :mod:`oirl.evaluation.offpolicy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from oirl.data.matrix import LogMatrix, pivot_logs
from oirl.errors import LogFormatError, OirlError
from oirl.learn.crossfit import make_folds
from oirl.learn.logging_policy import estimate_logging_policy
from oirl.policy.policies import Policy, PolicyContext, make_policy
from oirl.recommender.recommender import Candidate


@dataclass
class ScoredLogs:
    """Evaluated logs as matrices over the candidate set.

    ``rewards`` and ``scores`` have shape (n_instances, n_candidates), rewards NaN where a
    candidate was not logged for an instance; ``offered`` (n, k) marks the candidates each
    decision offered (None: all); ``supported`` (n, k) where the logger could have played
    the candidate (None: everywhere, as with full information); ``propensity`` (n, k) the
    logger's probability of each logged cell (None: implied uniform over the logged ones)
    and ``propensity_source`` where it came from (``logger``: an estimate's diagnostics). ``texts``, ``questions`` and ``seen``
    (n,) hold each instance's text, its question key (:mod:`oirl.data.questions`, the
    bootstrap's clusters) and whether that question occurred in training. ``context``,
    ``margin`` and ``threshold`` build the policies.
    """

    query_ids: list[str]
    texts: np.ndarray
    prompt_ids: list[str]
    rewards: np.ndarray
    scores: np.ndarray
    context: PolicyContext
    seen: np.ndarray
    margin: float = float("inf")
    threshold: float = 0.5
    propensity: np.ndarray | None = None
    propensity_source: str | None = None
    questions: np.ndarray | None = None
    offered: np.ndarray | None = None
    supported: np.ndarray | None = None
    candidate_set: str = "the logged prompts"
    prompt_texts: list[str] | None = None  # (n_candidates,) each column's prompt text
    logger: dict | None = None  # an estimated logger's diagnostics (oirl.learn.logging_policy)

    def __post_init__(self) -> None:
        if self.questions is None:
            self.questions = np.asarray(self.texts)

    @property
    def logged(self) -> np.ndarray:
        return ~np.isnan(self.rewards)

    @property
    def available(self) -> np.ndarray:
        """(n, k) the candidates each decision offered."""
        return np.ones(self.rewards.shape, dtype=bool) if self.offered is None else self.offered

    @property
    def full_information(self) -> bool:
        """Every offered candidate logged for every instance."""
        return bool((self.logged | ~self.available).all())

    def policy(self, name: str, *, cost_weight: float = 0.0) -> Policy:
        return make_policy(name, self.context, margin=self.margin, threshold=self.threshold, cost_weight=cost_weight)

    def picks(self, policy: str, *, mask: np.ndarray | None = None, cost_weight: float = 0.0) -> np.ndarray:
        """(n,) each instance's pick among its *logged* candidates (and within ``mask``):
        what a full-information comparison scores."""
        available = self.logged & self.available if mask is None else self.logged & self.available & mask
        return self.policy(policy, cost_weight=cost_weight).choose(self.scores, available)

    def policy_picks(self, policy: str, *, cost_weight: float = 0.0) -> np.ndarray:
        """(n,) the pick among every offered candidate, logged or not (what a deployed policy
        does; off-policy estimators value it)."""
        return self.policy(policy, cost_weight=cost_weight).choose(self.scores, self.available)

    def values(self, policy: str, *, mask: np.ndarray | None = None) -> np.ndarray:
        """(n,) the logged reward of each instance's pick among its logged candidates."""
        return self.rewards[np.arange(len(self.rewards)), self.picks(policy, mask=mask)]

    def subset(self, columns: list[int]) -> ScoredLogs:
        """The same logs over some of the candidates."""
        def cut(array):
            return None if array is None else array[:, columns]

        return replace(self, prompt_ids=[self.prompt_ids[c] for c in columns], rewards=self.rewards[:, columns],
                       prompt_texts=None if self.prompt_texts is None else [self.prompt_texts[c] for c in columns],
                       scores=self.scores[:, columns], context=self.context.subset(columns), propensity=cut(self.propensity),
                       offered=cut(self.offered), supported=cut(self.supported))


def score_logs(rec, logs: pd.DataFrame, candidates: list[Candidate] | None = None, *, costs: dict[str, float] | None = None) -> ScoredLogs:
    """Score every logged query instance with every candidate (see the module docstring).

    Costs come from ``costs``, else the logs' ``cost`` column, else the bundle. A partial
    log without a propensity column gets its logging policy estimated
    (:mod:`oirl.learn.logging_policy`), as training does."""
    chosen, offered_ids, description = _candidate_set(rec, logs, candidates)
    by_text = {c.prompt: c.prompt_id for c in chosen}
    rows = logs.assign(prompt_id=logs["prompt"].map(by_text))
    rows = rows[rows["prompt_id"].notna()]  # rows of prompts outside the candidates given
    if rows.empty:
        raise OirlError("none of the candidates occur in the evaluated logs")
    pivot = pivot_logs(rows.sort_values("query_id", kind="stable"), [c.prompt_id for c in chosen])
    query_ids, instance_texts = list(pivot.query_ids), pivot.instance_texts
    texts, inverse = np.unique(instance_texts, return_inverse=True)
    inverse = inverse.ravel()
    scores = rec.score(list(texts), chosen)[inverse]
    offered = None
    if offered_ids is not None:
        position = {c.prompt_id: j for j, c in enumerate(chosen)}
        offered = np.zeros(pivot.rewards.shape, dtype=bool)
        for i, ids in enumerate(offered_ids.reindex(query_ids)):
            offered[i, [position[p] for p in ids if p in position]] = True
        offered |= ~np.isnan(pivot.rewards)  # what was served was offered
    logged_costs = rows.groupby("prompt_id")["cost"].mean().to_dict() if "cost" in rows.columns else {}
    policy = rec.policy("argmax", chosen, costs={**logged_costs, **(costs or {})})
    scored = ScoredLogs(query_ids, instance_texts, [c.prompt_id for c in chosen], pivot.rewards, scores, policy.context,
                        rec.seen_in_training(texts)[inverse], margin=rec.margin, threshold=rec.threshold,
                        questions=rec.question_key.keys(instance_texts), offered=offered, candidate_set=description,
                        prompt_texts=[c.prompt for c in chosen])
    return _with_logging_policy(scored, pivot.propensity, lambda: rec.query_embedder.embed(list(texts))[inverse])


def _candidate_set(rec, logs: pd.DataFrame, candidates: list[Candidate] | None) -> tuple[list[Candidate], pd.Series | None, str]:
    """The candidates (columns), each instance's offered ids (or None) and a description."""
    logged = [Candidate(t, p) for p, t in logs.drop_duplicates("prompt_id")[["prompt_id", "prompt"]].itertuples(index=False)]
    if candidates is not None:
        return rec.resolve_candidates(candidates), None, "the candidates given"
    if "candidate_ids" not in logs.columns:
        return bundle_and_logged(rec, logged), None, "the bundle's prompts and every logged prompt"
    offered = logs.groupby("query_id", sort=False)["candidate_ids"].first().map(_parse_ids)
    texts = {c.prompt_id: c for c in (*logged, *rec.prompts)}
    ids = list(dict.fromkeys([p.prompt_id for p in rec.prompts] + [p for ids in offered for p in ids] + [c.prompt_id for c in logged]))
    known = [texts[p] for p in ids if p in texts]  # an offered id whose text neither the bundle nor the log holds cannot be scored
    return bundle_and_logged(rec, known), offered, "the candidates each decision offered (candidate_ids)"


def bundle_and_logged(rec, logged: list[Candidate]) -> list[Candidate]:
    """The bundle's prompts, then the logged prompts the bundle does not hold (one per text)."""
    union: dict[str, Candidate] = {}
    for c in (*rec.prompts, *logged):
        union.setdefault(c.prompt, c)
    return rec.resolve_candidates(list(union.values()))


def _parse_ids(cell: str) -> list[str]:
    try:
        ids = json.loads(cell)
    except (TypeError, json.JSONDecodeError):
        raise LogFormatError(f"column 'candidate_ids': {str(cell)[:80]!r} is not a JSON list of prompt ids") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise LogFormatError(f"column 'candidate_ids': {str(cell)[:80]!r} is not a JSON list of prompt ids")
    return ids


def _with_logging_policy(scored: ScoredLogs, propensity: np.ndarray | None, query_vectors) -> ScoredLogs:
    """The propensities and support of the logger: logged, implied (full information) or
    estimated from the query vectors (``query_vectors()`` gives them, (n, d), when needed)."""
    logged, available = scored.logged, scored.available
    if propensity is not None:  # a logged probability below 1 leaves mass for the other offered candidates
        spare = np.nansum(np.where(logged, propensity, 0.0), axis=1) < 1 - 1e-9
        return replace(scored, propensity=propensity, propensity_source="logged", supported=logged | (spare[:, None] & available))
    if scored.full_information:
        return replace(scored, propensity_source="implied: uniform over each query's logged prompts (full information)")
    vectors = query_vectors()
    n = len(vectors)
    matrix = LogMatrix(query_ids=np.asarray(scored.query_ids), texts=np.arange(n).astype(str), text_index=np.arange(n),
                       query_vectors=vectors, prompt_ids=scored.prompt_ids, prompt_texts=list(scored.prompt_ids),
                       prompt_vectors=np.zeros((len(scored.prompt_ids), 1)), rewards=scored.rewards,
                       questions=np.unique(scored.questions, return_inverse=True)[1].ravel())
    estimate = estimate_logging_policy(matrix, make_folds(matrix, 3, "text"))
    return replace(scored, propensity=estimate.propensity, propensity_source="estimated",
                   supported=estimate.supported(logged) & available, logger=estimate.diagnostics(logged))
