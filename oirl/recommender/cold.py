"""A bundle before any log: ``oirl init`` (cold start).

A new deployment has prompts but no outcomes yet. Its bundle holds the prompts, their
vectors and no reward model: every query scores each prompt at its prior, the same for
all (0.5, nothing is known), so the policies pick the *default* prompt (listed first:
exact ties go to the first column) and an exploring service draws around it --
``softmax`` over equal scores is uniform, ``epsilon:E`` serves the default with
probability 1 - E + E / K. ``serve``, ``recommend``, ``evaluate``, exploration and
``train --incumbent`` take it like any bundle; the first training on its traffic
replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oirl.data.questions import QuestionKey
from oirl.embed.base import DEFAULT_EMBEDDER, revision_of
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.embed.static import bundle_files
from oirl.errors import OirlError
from oirl.recommender.recommender import Candidate, Recommender

UNKNOWN_PRIOR = 0.5


def cold_start(prompts: Sequence[Candidate], *, default: str | None = None, embedder: str = DEFAULT_EMBEDDER,
               cache_dir: str | Path | None = None, arms: dict[str, dict[str, Any]] | None = None) -> Recommender:
    """A recommender of ``prompts`` with no reward model; ``default`` (a prompt id) goes first.

    Costs given with the prompts are kept (for the cost-aware policy), and so are ``arms``
    (prompt id -> model and generation parameters, :mod:`oirl.recommender.arms`)."""
    prompts = list(prompts)
    if not prompts:
        raise OirlError("oirl init needs at least one prompt")
    ids = [p.prompt_id for p in prompts]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise OirlError(f"prompt id(s) given twice: {', '.join(twice[:5])}")
    if default is not None:
        if default not in ids:
            raise OirlError(f"--default {default!r} is not one of the prompts ({', '.join(ids[:10])})")
        prompts.sort(key=lambda p: p.prompt_id != default)  # the default first: ties go to the first column
    live = get_embedder(embedder)
    vectors = CachedEmbedder(live, cache_dir).embed([p.prompt for p in prompts])
    return Recommender(
        model=None, embedder_spec=embedder, embedder_id=live.model_id, embedder_revision=revision_of(live), layout="concat",
        prompts=[Candidate(p.prompt, p.prompt_id) for p in prompts], prompt_vectors=np.asarray(vectors),
        prior={p.prompt_id: UNKNOWN_PRIOR for p in prompts}, margin=float("inf"), default_policy="argmax",
        costs={p.prompt_id: float(p.cost) for p in prompts if p.cost is not None}, arms=arms,
        metadata={"training": None, "metrics": {"cold_start": {"default_prompt_id": prompts[0].prompt_id,
                                                               "chosen_default": default is not None}}},
        question_key=QuestionKey(casefold=live.lowercases), cache_dir=cache_dir, embedder_bundle_files=bundle_files(live),
    )
