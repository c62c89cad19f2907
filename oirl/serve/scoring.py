"""Everything the service asks of a fitted bundle, in one module.

The routes never touch :class:`oirl.recommender.recommender.Recommender` or the policy
functions: they hold a :class:`ServedModel` and work with its plain results
(:class:`CandidateSet`, :class:`Ranked`, numbers and dicts). When the recommender's API
changes, this module is the one to adapt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oirl.errors import OirlError, UnknownPromptError
from oirl.policy.explore import draw, explorer
from oirl.policy.policies import POLICIES
from oirl.recommender.bundle import load_bundle
from oirl.recommender.recommender import Candidate

POLICY_NAMES = tuple(POLICIES)

__all__ = ["POLICY_NAMES", "CandidateConflict", "CandidateSet", "MissingCost", "ServedModel", "Ranked", "UnknownPromptError"]


class CandidateConflict(OirlError):
    """A candidate set naming one prompt twice, or a bundle id for another text (409)."""


class MissingCost(OirlError):
    """The cost-aware policy asked for with a candidate whose cost is unknown (422)."""


@dataclass(frozen=True)
class CandidateSet:
    """The candidates of one request, resolved against the bundle (opaque ``items``)."""

    items: list
    costs: dict[str, float]
    new_texts: list[str]  # texts of candidates the bundle has no vector for
    given: bool  # the request named its candidates (else: the bundle's prompts)
    in_bundle: dict[str, bool]  # prompt id -> a bundle prompt

    @property
    def size(self) -> int:
        return len(self.items)

    def prompt_lengths(self) -> list[int]:
        return [len(c.prompt) for c in self.items]

    def ids(self) -> tuple[str, ...]:
        return tuple(c.prompt_id for c in self.items)

    def prompts(self) -> tuple[str, ...]:
        return tuple(c.prompt for c in self.items)


@dataclass(frozen=True)
class Ranked:
    """One query's answer: the served prompt, the ranking and the probability it was served with."""

    prompt_id: str
    prompt: str
    score: float
    ranking: list[dict[str, Any]]  # {"prompt_id", "prompt", "score"}, best first
    propensity: float | None  # None when not exploring
    reason: str | None = None  # why the served prompt is not the top of the ranking


class ServedModel:
    """A loaded bundle as the service uses it. ``embedder`` (anything with
    ``embed(texts, batch_size=...)``) replaces the bundle's live embedder."""

    def __init__(self, recommender, *, embedder=None):
        self._rec = recommender
        self.version = recommender.fingerprint or "unsaved"
        self.embedder = embedder if embedder is not None else recommender.embedder
        # Two bundles with one key embed alike: a reload may keep the live embedder and its vectors.
        self.embedder_key = ("given", id(embedder)) if embedder is not None else (recommender.embedder_id, recommender.embedder_revision)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, embedder=None) -> ServedModel:
        """Load and check the bundle at ``directory`` (raises :class:`oirl.errors.BundleError`)."""

        return cls(load_bundle(directory), embedder=embedder)

    def share_embedder(self, other: ServedModel) -> None:
        """Use ``other``'s live embedder (same :attr:`embedder_key`): no second copy of the weights."""
        self.embedder = other.embedder

    # ------------------------------------------------------------------ recommend

    def candidate_set(self, candidates: Sequence[tuple[str, str | None, float | None]], candidate_ids: list[str] | None) -> CandidateSet:
        """Resolve (prompt, prompt_id, cost) triples and bundle ids into one candidate set.

        Raises :class:`UnknownPromptError` (404) or :class:`CandidateConflict` (409)."""
        given = [Candidate(prompt, prompt_id or "", cost) for prompt, prompt_id, cost in candidates]
        try:
            chosen = self._rec.resolve_candidates(given or None, candidate_ids or None)
            costs = self._rec.candidate_costs(given)
        except UnknownPromptError:
            raise
        except OirlError as exc:
            raise CandidateConflict(str(exc)) from None
        return CandidateSet(chosen, costs, self._rec.texts_to_embed(chosen), bool(given or candidate_ids),
                            {c.prompt_id: self._rec.is_bundle_prompt(c) for c in chosen})

    def check_policy(self, policy: str | None, candidates: CandidateSet) -> str:
        """The policy to apply (None: the bundle's); raises :class:`MissingCost`, before anything is embedded."""
        try:
            return self._rec.policy(policy, candidates.items, costs=candidates.costs).name
        except OirlError as exc:
            raise MissingCost(str(exc)) from None

    def rank(self, queries: list[str], query_vectors: np.ndarray, new_vectors: np.ndarray, candidates: CandidateSet, *,
             policy: str, top_k: int, cost_weight: float | None, explore: tuple[str, float] | None,
             rng: np.random.Generator, offsets: np.ndarray | None = None) -> list[Ranked]:
        """Score ``queries`` (vectors (n, d)) against the candidates (``new_vectors``: (len(new_texts), d)),
        apply ``policy`` or draw from the exploration around it, and rank the top ``top_k``.

        ``offsets`` (n_candidates,), the online corrections learned from feedback since the
        bundle was trained (:mod:`oirl.decisions.online`), are added to the model's scores
        before the policy and its exploration choose; the scores answered and recorded stay
        the model's own (the residuals the offsets are learned from)."""
        rec = self._rec
        scores = rec.score_vectors(query_vectors, rec.candidate_vectors(candidates.items, new_vectors), texts=queries)
        rule = rec.policy(policy, candidates.items, costs=candidates.costs, cost_weight=cost_weight)
        online = offsets is not None and bool(np.any(offsets != 0))
        chosen_on = scores + offsets[None, :] if online else scores
        picks = propensity = reasons = None
        if explore is not None:
            picks, propensity = draw(explorer(*explore, rule).probabilities(chosen_on), rng)
            reasons = [None if r[p] >= r.max() else f"explored ({explore[0]} {explore[1]:g}): drawn with probability {q:.3g}"
                       for r, p, q in zip(chosen_on, picks, propensity, strict=True)]
        elif online:
            picks = rule.choose(chosen_on)
            reasons = [rule.explain(r, int(p)) for r, p in zip(chosen_on, picks, strict=True)]
        if online and reasons is not None:
            reasons = [reason if reason is not None or s[p] >= s.max() else "online: the feedback since training moved it up"
                       for reason, s, p in zip(reasons, scores, picks, strict=True)]
        ranked = rec.rank(queries, scores, candidates.items, rule, top_k=top_k, picks=picks, reasons=reasons)
        return [Ranked(r.prompt_id, r.prompt, r.score, r.ranking, None if propensity is None else float(propensity[i]), r.reason)
                for i, r in enumerate(ranked)]

    # ------------------------------------------------------------------ score

    def pair_prompts(self, prompts: list[str]) -> tuple[list, list[str]]:
        """The prompts of (query, prompt) pairs resolved against the bundle, and the texts among them to embed."""
        resolved = [self._rec.as_candidate(p) for p in prompts]
        return resolved, self._rec.texts_to_embed(resolved)

    def score_pairs(self, query_vectors: np.ndarray, prompts: list, new_vectors: np.ndarray, queries: list[str]) -> list[float]:
        """Predicted reward of each (query, prompt) pair, in order."""
        prompt_vectors = self._rec.candidate_vectors(prompts, new_vectors)
        return [float(s) for s in self._rec.score_pairs(query_vectors, prompt_vectors, texts=queries)]

    # ------------------------------------------------------------------ describe

    def prompt_table(self) -> tuple[list[dict[str, Any]], str]:
        """The bundle's prompts with their mean training reward, and the default prompt's id."""
        rec = self._rec
        entries = [{"prompt_id": p.prompt_id, "prompt": p.prompt, "train_mean_reward": rec.prior[p.prompt_id],
                    **rec.arms.get(p.prompt_id, {})} for p in rec.prompts]
        return entries, rec.default_prompt_id

    def arm(self, prompt_id: str) -> dict[str, Any]:
        """The model and generation parameters the arm sets (``{}``: none, or not a bundle prompt)."""
        return self._rec.arms.get(prompt_id, {})

    def describe(self) -> dict[str, Any]:
        """``/v1/model``'s account of the bundle, with no filesystem path in it (a path names only its file)."""
        rec = self._rec
        metadata = dict(rec.metadata)
        if isinstance(metadata.get("training"), dict):
            training = dict(metadata["training"])
            training["source"] = " + ".join(_file_name(part) for part in str(training.get("source", "")).split(" + "))
            metadata["training"] = training
        return {
            "model_version": self.version,
            "embedder": _embedder_name(rec.embedder_spec),
            "model": None if rec.model is None else {"kind": rec.model.name, "params": rec.model.get_params()},
            "features": rec.layout,
            "policy": {"default": rec.default_policy, "conservative_margin": None if np.isinf(rec.margin) else rec.margin,
                       "fallback_threshold": rec.threshold, "default_prompt_id": rec.default_prompt_id,
                       "cost_weight": rec.cost_weight, "calibration": rec.calibration},  # the target and the share it gave, from `oirl calibrate`
            **metadata,
        }

    def prompt_costs(self) -> dict[str, float]:
        """The bundle prompts' costs of one call, by prompt id (those known)."""
        return dict(self._rec.costs)

    def cost_rule(self) -> dict[str, Any]:
        """JSON Schema ``if``/``then`` for a recommend request: what the cost-aware policy
        needs from a candidate set, given which of this bundle's prompts have a cost."""
        rec = self._rec
        costed = [p for p in rec.prompts if np.isfinite(rec.costs.get(p.prompt_id, np.nan))]
        texts = [p.prompt for p in costed]
        options: list[dict[str, Any]] = [{"type": "object", "required": ["prompt", "cost"], "properties": {"cost": {"type": "number"}}}]
        if costed:
            options += [{"type": "string", "enum": texts}, {"type": "object", "required": ["prompt"], "properties": {"prompt": {"enum": texts}}}]
        then: dict[str, Any] = {"properties": {
            "candidates": {"items": {"anyOf": options}},
            "candidate_ids": {"items": {"enum": [p.prompt_id for p in costed]}} if costed else {"maxItems": 0},
        }}
        if len(costed) < len(rec.prompts):  # then the default candidates (all bundle prompts) will not do
            then["anyOf"] = [{"required": [field], "properties": {field: {"type": "array", "minItems": 1}}}
                             for field in ("candidates", "candidate_ids")]
        if rec.default_policy == "cost-aware":
            condition = {"properties": {"policy": {"enum": ["cost-aware", None]}}}
        else:
            condition = {"required": ["policy"], "properties": {"policy": {"const": "cost-aware"}}}
        return {"if": condition, "then": then}

    # ------------------------------------------------------------------ the fast path

    def measure_fast_path(self, embed: Callable[[list[str]], np.ndarray], *, inline_call_ms: float, inline_texts: int,
                          inline_chars: int, inline_pairs: int, timer: Callable[[], float] = time.perf_counter) -> dict[str, bool]:
        """Time the largest call the fast path would make: ``inline_texts`` texts of
        ``inline_chars`` characters in all, and ``inline_pairs`` pairs scored in each shape a
        request can have (many queries x one prompt, a few queries x the bundle's prompts,
        pairs). What runs under ``inline_call_ms`` (by ``timer``) may run on the event loop
        (the best of three tries, so one hiccup of a busy machine does not decide)."""
        if inline_call_ms <= 0 or inline_texts <= 0:  # turned off
            return {"embed_inline": False, "score_inline": False}

        def seconds(function, *args) -> float:
            started = timer()
            function(*args)
            return timer() - started

        words = "how fast is one call of the embedding model at the largest size the fast path takes "
        length = max(1, inline_chars // inline_texts)
        texts = [(f"try {i}: " + words * (length // len(words) + 1))[:length] for i in range(inline_texts)]
        embed_seconds = min(seconds(embed, texts) for _ in range(3))
        rec = self._rec
        prompts = np.asarray(rec.prompt_vectors, dtype=np.float32)
        queries = np.resize(embed(texts[:2]), (inline_pairs, prompts.shape[1]))  # distinct rows do not matter to the timing
        query_texts = [texts[i % len(texts)] for i in range(inline_pairs)]  # for a model that reads texts
        wide = max(1, inline_pairs // len(prompts))
        shapes = [(rec.score_vectors, queries, prompts[:1], query_texts),
                  (rec.score_vectors, queries[:wide], prompts, query_texts[:wide]),
                  (rec.score_pairs, queries, np.resize(prompts, (inline_pairs, prompts.shape[1])), query_texts)]
        score_seconds = max(min(seconds(function, *args) for _ in range(3)) for function, *args in shapes)
        limit = inline_call_ms / 1000
        return {"embed_inline": embed_seconds < limit, "score_inline": score_seconds < limit}


def _file_name(text: str) -> str:
    """A path's last part (``logs/mawps.parquet`` -> ``mawps.parquet``)."""
    return Path(text).name if ("/" in text or os.sep in text) else text


def _embedder_name(spec: str) -> str:
    """An embedder spec without a local folder's path (``static:/srv/m`` -> ``static:m``); hub names as they are."""
    if spec.startswith("static:"):
        return f"static:{Path(spec[len('static:'):]).name}"
    return Path(spec).name if Path(spec).is_absolute() or spec.startswith(".") or Path(spec).exists() else spec
