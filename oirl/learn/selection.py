"""Cross-fitting and model selection: which reward model and policy a bundle ships with.

Everything here runs on training rows only. Folds group query instances by question
*text* (``cv_groups="text"``: every held-out question is new, the regime of a new
user's traffic) or by *instance* (``"instance"``: held-out rows are new samples of
questions that may also occur in training, the paper's protocol on SVAMP and MAWPS).

For each candidate reward model, :func:`cross_fit` gives out-of-fold scores of every
held-out instance with every prompt, and the per-prompt prior (mean training reward)
of each fold computed on that fold's training rows only. A policy's cross-validated
*selection value* is the expected reward of its picks on the held-out rows (the logged
reward of the pick with full information, the doubly robust estimate with partial
feedback, with a reference reward model shared by every option). :func:`select_model`
chooses among "the prior alone" (always the best training prompt), each candidate's
argmax and each candidate's conservative policy by one rule: the options whose gain
over the prior clears :data:`PRIOR_Z` standard errors (and :data:`MIN_EFFECT`, and on
partial feedback :data:`MIN_SUPPORT`) are eligible, and the simplest within one standard
error of the best of them wins; the prior when none is eligible. Standard errors are
clustered by question (repeated samples of one question are not independent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oirl.data.matrix import LogMatrix
from oirl.errors import CannotFit, OirlError, one_line
from oirl.learn.candidates import CV_GROUPS, ModelSpec
from oirl.learn.crossfit import (
    CrossFit,
    cross_fit,
    fit_on,
    make_folds,
    policy_picks,
    policy_values,
    prior_values,
    reference_rewards,
    row_values,
)
from oirl.ope.bootstrap import clustered_standard_error
from oirl.reward.base import RewardModel
from oirl.reward.registry import make_reward_model

MARGIN_GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, float("inf"))
NEW_PROMPT_TAU_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)
#: Smallest gain in expected reward worth a more complex choice, whatever its standard
#: error: two policies that differ on a handful of queries have a tiny standard error,
#: and a 2-query win among thousands is not per-query signal.
MIN_EFFECT = 0.002
#: Leaving the prior (always the best training prompt) takes a gain of more than this
#: many clustered standard errors: the best of dozens of options is picked on the same
#: folds that measure it, so its gain is optimistic (measured: a 2.7-standard-error
#: gain on 199 training questions lost 0.7 points on new queries).
PRIOR_Z = 3.0
#: On partial feedback, an option's departures from the prior must rest on logged
#: rounds of at least this effective sample size (too few, and its gain is noise).
MIN_SUPPORT = 30.0








def one_standard_error_choice(
    values: dict[str, np.ndarray], complexity: dict[str, float], clusters: np.ndarray, min_effect: float = MIN_EFFECT,
) -> tuple[str, dict[str, float]]:
    """The simplest option whose mean value is within one standard error of the best.

    ``values[name]`` (n,) are per-instance values on the same rows; the standard error
    of each paired difference to the best is clustered by ``clusters`` (question
    texts) and never taken below ``min_effect``. Ties in complexity go to the higher
    mean. Returns the choice and each option's standard error against the best.
    """
    means = {name: float(v.mean()) for name, v in values.items()}
    best = max(means, key=lambda name: (means[name], -complexity[name]))
    errors = {name: clustered_standard_error(values[best] - v, clusters) for name, v in values.items()}
    eligible = [name for name in values if means[best] - means[name] <= max(errors[name], min_effect) + 1e-12]
    return min(eligible, key=lambda name: (complexity[name], -means[name])), errors


def choose_margin(fit: CrossFit, matrix: LogMatrix, grid: tuple[float, ...] = MARGIN_GRID) -> tuple[float, dict[float, float]]:
    """The conservative margin by the one-standard-error rule toward the largest margin.

    Single-sample rewards are noisy, so the best margin on the folds often wins by a
    handful of queries; the rule keeps the most conservative margin whose value is
    within one (clustered) standard error of the best. Returns it and each margin's value.
    """
    per_row = {str(m): policy_values(fit, matrix, "conservative", m) for m in grid}
    complexity = {str(m): -m for m in grid}  # larger margins are simpler
    chosen, _ = one_standard_error_choice(per_row, complexity, matrix.questions)
    return float(chosen), {m: float(per_row[str(m)].mean()) for m in grid}


# --------------------------------------------------------------------------- model selection


@dataclass
class Selection:
    """What cross-validation chose, and the table it chose from."""

    spec: ModelSpec  # the reward model to fit on all rows
    policy: str  # "argmax" or "conservative" (the prior alone is conservative with margin inf)
    margin: float
    fit: CrossFit  # out-of-fold scores of the chosen model
    table: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # per-instance CV values of each option
    margin_values: dict[float, float] = field(default_factory=dict)  # CV value of each margin, chosen model
    left_out: dict[str, str] = field(default_factory=dict)  # candidates that could not be fitted on this log: why


def select_model(
    matrix: LogMatrix, candidates: tuple[ModelSpec, ...], *, n_folds: int = 3, cv_groups: str = "text", progress: bool = False,
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None, fitter=cross_fit, incumbent_picks: np.ndarray | None = None,
    incumbent_recipe: tuple[ModelSpec, str, float] | None = None,
) -> Selection:
    """Cross-fit each candidate and choose a (model, policy) by its selection value.

    The *baseline* is what stays unless the data says otherwise: the deployed bundle's
    default policy when ``incumbent_picks`` (n,) gives its picks (``--incumbent``), else
    the prior (always the best training prompt); with ``incumbent_recipe`` (its model
    configuration, policy and margin, given when it was trained on some of these
    instances) that recipe is cross-fitted like every option instead, since the deployed
    model's own picks on outcomes it was trained on would look better than they are. One rule: an option may replace the
    baseline only if its gain over it clears :data:`PRIOR_Z` clustered standard errors (and
    :data:`MIN_EFFECT`) and, on partial feedback, the logged rounds behind its
    departures from the prior weigh at least :data:`MIN_SUPPORT` (effective sample
    size); among the options that clear, the simplest within one standard error of the
    best of them wins; the prior when none clears. When nothing clears an incumbent
    whose picks the prior makes as well, the new bundle ships anyway (see
    :func:`same_choice_with_a_model_that_learned`). ``folds`` (default:
    :func:`make_folds`) and ``fitter`` (default: :func:`cross_fit`, same signature) let
    another engine produce the out-of-fold scores, e.g. Dask; the choice is made here
    either way. A partial-feedback ``matrix`` must carry propensities (logged or
    estimated)."""
    from tqdm import tqdm

    if cv_groups not in CV_GROUPS:
        raise OirlError(f"unknown --cv-groups {cv_groups!r} (choose from {', '.join(CV_GROUPS)})")
    folds = make_folds(matrix, n_folds, cv_groups) if folds is None else folds
    fits, margins, values, picks, complexity, rows, left_out = {}, {}, {}, {}, {}, [], {}
    for candidate in tqdm(candidates, desc="model selection", unit="model", disable=not progress):
        try:
            fit = fitter(candidate, matrix, folds)
        except CannotFit as exc:  # e.g. the MLP on a tiny log: the candidates that can be fitted still compete
            left_out[candidate.label] = one_line(exc)
            continue
        fits[candidate.label] = fit
        margin, margin_values = margins[candidate.label] = choose_margin(fit, matrix)
        for policy, policy_margin, rank in (("conservative", margin, 2 * candidate.complexity - 1), ("argmax", 0.0, 2 * candidate.complexity)):
            key = f"{candidate.label} {policy}"
            values[key] = policy_values(fit, matrix, policy, policy_margin)
            picks[key] = policy_picks(fit, policy, policy_margin)
            complexity[key] = rank
            rows.append({"option": key, "model": candidate.model, "params": dict(candidate.params), "layout": candidate.layout_for(),
                         "policy": policy, "margin": None if np.isinf(policy_margin) else policy_margin})
    if not fits:
        reasons = "; ".join(f"{label}: {why}" for label, why in left_out.items())
        raise OirlError(f"no reward model can be fitted on this log ({len(matrix.query_ids):,} query instances, "
                        f"{len(folds)} folds); {reasons}")
    first = next(iter(fits.values()))
    values["prior"] = prior_values(first, matrix)
    picks["prior"] = policy_picks(first, "conservative", float("inf"))
    complexity["prior"] = 0
    rows.insert(0, {"option": "prior", "model": None, "params": {}, "layout": None, "policy": "conservative", "margin": None})
    baseline = "prior"
    if incumbent_picks is not None:
        baseline, complexity["incumbent"] = "incumbent", -1
        row = {"option": "incumbent", "model": None, "params": {}, "layout": None, "policy": "the deployed bundle's", "margin": None}
        if incumbent_recipe is None:
            values["incumbent"], picks["incumbent"] = fixed_values(incumbent_picks, first, matrix), incumbent_picks
        else:
            recipe, policy, margin = incumbent_recipe
            fit = fits[recipe.label] if recipe.label in fits else fitter(recipe, matrix, folds)
            values["incumbent"], picks["incumbent"] = policy_values(fit, matrix, policy, margin), policy_picks(fit, policy, margin)
            row.update(model=recipe.model, params=dict(recipe.params), layout=recipe.layout_for(), policy=f"the deployed bundle's ({policy}), "
                       "its recipe cross-fitted", margin=None if np.isinf(margin) else margin)
        rows.insert(0, row)
    supports = {key: departure_support(picks[key], picks[baseline], matrix) for key in values if key != baseline}
    chosen, facts = choose_option(values, complexity, matrix.questions, supports, baseline=baseline)
    for row in rows:
        row.update(facts[row["option"]])
    if chosen == "incumbent":
        if not same_choice_with_a_model_that_learned(picks["incumbent"], matrix):
            raise IncumbentKept(rows)
        chosen = "prior"  # the incumbent's very picks, now with a reward model whose rankings exploration can use
        for row in rows:
            row["chosen"] = row["option"] == "prior"
    if chosen == "prior":
        # No per-query signal worth its noise: always the best training prompt. The bundle
        # still carries the best model, so rankings and --policy argmax stay informative.
        # Only model options name a fit: with an incumbent the table's fixed rows (prior,
        # incumbent) are not first alone, and the prior may well be the best value there.
        models = [r for r in rows if r["option"] not in ("prior", "incumbent")]
        label = max(models, key=lambda r: r["value"])["option"].rsplit(" ", 1)[0]
        return Selection(fits[label].spec, "conservative", float("inf"), fits[label], rows, values, margins[label][1], left_out)
    label, policy = chosen.rsplit(" ", 1)
    margin = next(r["margin"] for r in rows if r["option"] == chosen)
    return Selection(fits[label].spec, policy, float("inf") if margin is None else margin, fits[label], rows, values, margins[label][1],
                     left_out)


def choose_option(
    values: dict[str, np.ndarray], complexity: dict[str, float], clusters: np.ndarray, supports: dict[str, float | None] | None = None,
    *, baseline: str = "prior",
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The selection rule over per-instance values (n,) of named options, ``baseline`` among them.

    An option clears the baseline when its mean gain over it exceeds :data:`PRIOR_Z`
    clustered standard errors and :data:`MIN_EFFECT`, and its support (if given, see
    :func:`departure_support`) is at least :data:`MIN_SUPPORT`. Among the options that
    clear, the simplest (``complexity``) within one standard error of the best of them is
    chosen; the baseline when none clears. Returns the choice and, per option, its value,
    gain over the baseline, standard errors and whether it cleared."""
    supports = supports or {}
    facts: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        difference = value - values[baseline]
        gain, error = float(difference.mean()), clustered_standard_error(difference, clusters)
        support = supports.get(name)
        cleared = name != baseline and gain > max(PRIOR_Z * error, MIN_EFFECT) and (support is None or support >= MIN_SUPPORT)
        facts[name] = {"value": float(value.mean()), "gain_over_baseline": gain, "se_vs_baseline": error, "departure_support": support,
                       "cleared_baseline": bool(cleared), "se_vs_best": None}
    cleared = [name for name in values if facts[name]["cleared_baseline"]]
    chosen = baseline
    if cleared:
        chosen, errors = one_standard_error_choice({k: values[k] for k in cleared}, complexity, clusters)
        for name, error in errors.items():
            facts[name]["se_vs_best"] = error
    for name in facts:
        facts[name]["chosen"] = name == chosen
    return chosen, facts


class IncumbentKept(Exception):
    """The deployed bundle's policy stays: no option cleared it (not an error; ``rows`` is
    the model-selection table that says so)."""

    def __init__(self, rows: list[dict[str, Any]]):
        super().__init__("no option beat the deployed bundle's policy by the selection rule; it stays")
        self.rows = rows


def same_choice_with_a_model_that_learned(incumbent_picks: np.ndarray, matrix: LogMatrix) -> bool:
    """Whether the incumbent picks, on every training row, the prompt a new bundle's prior
    would (the best on all rows) while the log holds outcomes of more than one prompt.
    Then a new bundle risks nothing (the same default choices) and gains a reward model
    that ranks the other prompts, which exploration (softmax, squarecb) follows; a cold
    bundle would otherwise explore uniformly for as long as nothing beats it."""
    means = matrix.prompt_means()
    several_prompts_logged = int(np.isfinite(means).sum()) > 1
    return several_prompts_logged and bool((incumbent_picks == int(np.nanargmax(means))).all())


def fixed_values(picks: np.ndarray, fit: CrossFit, matrix: LogMatrix) -> np.ndarray:
    """(n,) the CV value of fixed picks (a deployed policy's), valued in each fold like the
    other options (the fold's prompt means as the doubly robust reference)."""
    values = np.empty(len(picks))
    for _, test in fit.folds:
        values[test] = row_values(picks[test], matrix.subset(test), reference_rewards(fit.priors[test]))
    return values


def departure_support(picks: np.ndarray, prior_picks: np.ndarray, matrix: LogMatrix) -> float | None:
    """How much logged evidence stands behind an option's departures from the prior: the
    effective sample size, (sum w)^2 / sum w^2, of the importance weights w = 1 / p of
    the logged rounds where the option departs and its pick was logged. None with full
    information (every pick is logged); 0 when no departure was ever logged."""
    if matrix.full_information and matrix.propensity is None:
        return None
    departs = picks != prior_picks
    rows = np.flatnonzero(departs)
    logged = matrix.logged[rows, picks[rows]]
    if not logged.any():
        return 0.0
    weights = 1.0 / matrix.propensity[rows[logged], picks[rows][logged]]
    return float(weights.sum() ** 2 / (weights**2).sum())


def choose_new_prompt_tau(matrix: LogMatrix, model: RewardModel, folds, grid: tuple[float, ...] = NEW_PROMPT_TAU_GRID) -> tuple[float, dict[float, float]]:
    """The width for prompts never trained on (``new_prompt_tau`` of the neighbour and
    lexical models), by leave-one-prompt-out CV.

    In each fold, each training prompt in turn is dropped from the training rows and
    scored on the held-out rows as if it were new; the width with the lowest Brier
    score on those logged rewards wins. Needs at least two prompts.
    """
    m = len(matrix.prompt_ids)
    if m < 2:
        return model.new_prompt_tau, {}
    errors = {tau: [] for tau in grid}
    for train, test in folds:
        part = matrix.subset(train)
        for j in range(m):
            keep = [c for c in range(m) if c != j]
            sub = part.with_prompts(keep)
            fitted = fit_on(make_reward_model(model.name, **model.get_params()), sub, "concat")
            truth = matrix.rewards[test, j]
            logged = ~np.isnan(truth)
            for tau in grid:
                fitted.set_params(new_prompt_tau=tau)
                rows = matrix.text_index[test]
                predicted = fitted.predict_grid(matrix.query_vectors[rows], matrix.prompt_vectors[[j]], "concat", texts=matrix.texts[rows])[:, 0]
                errors[tau].append((predicted[logged] - truth[logged]) ** 2)
    brier = {tau: float(np.concatenate(e).mean()) for tau, e in errors.items()}
    return min(brier, key=brier.get), brier
