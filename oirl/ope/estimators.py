"""Off-policy evaluation: the value of a prompt policy from logged rounds it did not choose.

A *round* is one logged outcome: a query instance, the prompt (action) the logger used,
its reward in [0, 1] and the logger's probability of that action (``pscore``). The
evaluated policy is ``action_dist`` of shape (n_instances, n_actions), rows summing to 1
(one-hot for a deterministic policy); ``q_hat`` of the same shape is a reward model's
prediction, cross-fitted by the caller so that no round scores itself. With the
importance weight w_i = pi(a_i|x_i) / p_i, the estimators follow Open Bandit Pipeline's
``obp.ope`` (without positions), each returning per-round contributions whose mean is
the estimate:

* ``dm``        sum_a pi(a|x_i) q_hat(x_i, a)                           (direct method)
* ``ips``       w_i r_i                                                 (inverse propensity)
* ``snips``     w_i r_i / mean(w)                     (self-normalised: sum w r / sum w)
* ``dr``        dm_i + w_i (r_i - q_hat(x_i, a_i))               (Dudik et al. 2011)
* ``switch-dr`` dm_i + w_i (r_i - q_hat(x_i, a_i)) 1{w_i <= tau}     (Wang et al. 2017)
* ``dr-os``     dm_i + lam w_i / (w_i^2 + lam) (r_i - q_hat(x_i, a_i))   (Su et al. 2020)

Switch-DR's ``tau`` is tuned per policy by SLOPE (Su, Srinath and Krishnamurthy 2020, as
Open Bandit Pipeline's ``SwitchDoublyRobustTuning(tuning_method="slope")``): over
:data:`TAU_GRID`, from the smallest threshold (nearly DM: low variance, biased) up to
``inf`` (DR: unbiased, high variance), keep raising ``tau`` while the estimate stays
within two standard errors (summed) of every estimate before it; the first that departs
stops the climb. The chosen ``tau`` is reported with the estimate. A fixed ``tau`` may be
passed instead. DR-OS keeps ``lam = 100^2``: its shrunk weight peaks at w = 100, so it
bends the weights of rounds the logger almost never plays and leaves small ones almost
whole (factor 1 / (1 + (w / 100)^2): 0.996 at w = 6). ``lam = inf`` is DR; ``lam = 0`` is DM.

Intervals resample *clusters* (question texts; default: instances), never rows: rounds
of one question share its difficulty, so resampling rows understates the variance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TypedDict

import numpy as np

from oirl.errors import OirlError
from oirl.ope.bootstrap import ratio_intervals

DEFAULT_LAMBDA = 100.0**2
#: Switch-DR's thresholds tried by SLOPE, from the least biased (``inf``: DR) down.
TAU_GRID = (float("inf"), 128.0, 64.0, 32.0, 16.0, 8.0, 4.0, 2.0, 1.0)


class Rounds(NamedTuple):
    """Logged bandit feedback; every field has shape (n_rounds,)."""

    instance: np.ndarray  # int: row of ``action_dist`` / ``q_hat``
    action: np.ndarray  # int: the logged column (prompt)
    reward: np.ndarray  # float in [0, 1]
    pscore: np.ndarray  # float in (0, 1]: the logger's probability of ``action``


# ---------------------------------------------------------------- estimators (per round)


def importance_weight(rounds: Rounds, action_dist: np.ndarray) -> np.ndarray:
    """w_i = pi(a_i|x_i) / p_i, shape (n_rounds,); ``action_dist`` (n_instances, n_actions)."""
    return action_dist[rounds.instance, rounds.action] / rounds.pscore


def _require(q_hat: np.ndarray | None) -> np.ndarray:
    if q_hat is None:
        raise OirlError("`q_hat` (reward-model predictions, (n_instances, n_actions)) is required by dm, dr, switch-dr and dr-os")
    return q_hat


def _corrected(rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None, weight: np.ndarray) -> np.ndarray:
    """The model's value plus the ``weight``ed residual of the logged action, shape (n_rounds,)."""
    residual = rounds.reward - _require(q_hat)[rounds.instance, rounds.action]
    return dm(rounds, action_dist, q_hat) + weight * residual


def dm(rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, **_: object) -> np.ndarray:
    """Direct method: sum_a pi(a|x_i) q_hat(x_i, a), shape (n_rounds,); arrays (n_instances, n_actions)."""
    return (action_dist * _require(q_hat)).sum(axis=1)[rounds.instance]


def ips(rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, **_: object) -> np.ndarray:
    """Inverse propensity scoring: w_i r_i, shape (n_rounds,); unbiased for known propensities."""
    return importance_weight(rounds, action_dist) * rounds.reward


def snips(rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, **_: object) -> np.ndarray:
    """Self-normalised IPS: w_i r_i / mean(w), shape (n_rounds,); their mean is sum w r / sum w.

    The terms share their normaliser, so the bootstrap resamples w r and w together
    (:func:`_ratio_terms`). NaN where pi has no mass on any logged action (sum w = 0)."""
    weight = importance_weight(rounds, action_dist)
    total = weight.mean()
    return weight * rounds.reward / total if total > 0 else np.full(len(weight), np.nan)


def dr(rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, **_: object) -> np.ndarray:
    """Doubly robust: dm_i + w_i (r_i - q_hat(x_i, a_i)), shape (n_rounds,)."""
    return _corrected(rounds, action_dist, q_hat, importance_weight(rounds, action_dist))


def switch_dr(
    rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, *, tau: float | None = None, **_: object
) -> np.ndarray:
    """Switch-DR: the DR correction only on rounds with w_i <= ``tau``, shape (n_rounds,).

    As obp's ``SwitchDoublyRobust``: the model term covers all of pi's mass and only the
    correction is switched, which equals Wang et al.'s DR on actions with w <= tau plus DM
    on those with w > tau. ``tau = inf`` is DR, ``tau = 0`` is DM; None: tuned by SLOPE
    (:func:`slope_tau`)."""
    tau = slope_tau(rounds, action_dist, q_hat) if tau is None else tau
    _check_parameter("tau", tau)
    weight = importance_weight(rounds, action_dist)
    return _corrected(rounds, action_dist, q_hat, np.where(weight <= tau, weight, 0.0))


def dr_os(
    rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, *, lam: float = DEFAULT_LAMBDA, **_: object
) -> np.ndarray:
    """DR with optimistic shrinkage: weights lam w / (w^2 + lam), shape (n_rounds,)."""
    _check_parameter("lam", lam)
    weight = importance_weight(rounds, action_dist)
    shrunk = np.zeros_like(weight) if lam == 0 else weight / (1.0 + weight**2 / lam)  # == w exactly at lam = inf
    return _corrected(rounds, action_dist, q_hat, shrunk)


def slope_tau(rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None, grid: Sequence[float] = TAU_GRID) -> float:
    """Switch-DR's threshold by SLOPE (see the module docstring): the smallest ``tau`` of
    ``grid`` (tried from the least biased down) reached before an estimate departs from an
    earlier one by more than the sum of their two-standard-error widths."""
    estimates: list[tuple[float, float]] = []
    chosen = grid[0]
    for tau in grid:
        terms = switch_dr(rounds, action_dist, q_hat, tau=tau)
        value, width = float(terms.mean()), 2 * float(terms.std(ddof=1)) / np.sqrt(len(terms)) if len(terms) > 1 else 0.0
        if any(abs(value - earlier) > width + earlier_width for earlier, earlier_width in estimates):
            break
        estimates.append((value, width))
        chosen = tau
    return chosen


#: Estimators by name (obp's names); each maps validated inputs to per-round contributions.
ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "dm": dm,
    "ips": ips,
    "snips": snips,
    "dr": dr,
    "switch-dr": switch_dr,
    "dr-os": dr_os,
}


def _ratio_terms(
    name: str, rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None, params: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-round numerator and denominator, (n_rounds,) each: the estimate is their sums'
    ratio, on the data and on any cluster resample."""
    if name == "snips":  # self-normalised: the normaliser is resampled with the rounds
        weight = importance_weight(rounds, action_dist)
        return weight * rounds.reward, weight
    terms = ESTIMATORS[name](rounds, action_dist, q_hat, **params)
    return terms, np.ones_like(terms)


# ---------------------------------------------------------------- validation


def _first_bad(bad: np.ndarray, values: np.ndarray, message: str, axes: tuple[str, ...] = ("round",)) -> None:
    """Raise ``message``, the first bad value and where it is (``axes`` name the dimensions)."""
    if bad.any():
        at = np.unravel_index(int(np.argmax(bad)), bad.shape)
        where = ", ".join(f"{axis} {i}" for axis, i in zip(axes, at, strict=True))
        raise OirlError(f"{message}, got {values[at].item()} at {where}")


def _check_parameter(name: str, value: float) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or np.isnan(value) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0 (inf allowed), got {value!r}")


def check_action_dist(action_dist: object, name: str = "action_dist") -> np.ndarray:
    """A policy as float (n_instances, n_actions): finite, >= 0, each row summing to 1."""
    array = np.asarray(action_dist, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise OirlError(f"`{name}` must be a non-empty 2-D array (n_instances, n_actions), got shape {array.shape}")
    _first_bad(~(np.isfinite(array) & (array >= 0)), array, f"`{name}` must be finite and >= 0", ("instance", "action"))
    sums = array.sum(axis=1)
    _first_bad(np.abs(sums - 1) > 1e-6, sums, f"`{name}` rows must sum to 1", ("instance",))
    return array


def check_rounds(rounds: Rounds, n_instances: int, n_actions: int) -> Rounds:
    """Rounds as int/float arrays of one length, indices in range, reward in [0, 1], pscore in (0, 1]."""
    arrays = dict(zip(Rounds._fields, (np.asarray(value) for value in rounds), strict=True))
    n_rounds = len(arrays["instance"]) if arrays["instance"].ndim == 1 else -1
    for name, array in arrays.items():
        if array.ndim != 1:
            raise OirlError(f"`{name}` must be a 1-D array (n_rounds,), got shape {array.shape}")
        if len(array) != n_rounds:
            raise OirlError(f"`{name}` must have one entry per round like `instance` ({n_rounds}), got {len(array)}")
    if n_rounds == 0:
        raise OirlError("no rounds to evaluate: `instance` is empty")
    for name, size in (("instance", n_instances), ("action", n_actions)):
        if not np.issubdtype(arrays[name].dtype, np.integer):
            raise OirlError(f"`{name}` must hold integer indices, got dtype {arrays[name].dtype}")
        _first_bad((arrays[name] < 0) | (arrays[name] >= size), arrays[name], f"`{name}` must be in [0, {size})")
    for name in ("reward", "pscore"):
        if arrays[name].dtype.kind not in "biuf":
            raise OirlError(f"`{name}` must be real numbers, got dtype {arrays[name].dtype}")
        arrays[name] = arrays[name].astype(np.float64)
    reward, pscore = arrays["reward"], arrays["pscore"]
    _first_bad(~((reward >= 0) & (reward <= 1)), reward, "`reward` must be in [0, 1]")  # NaN fails too
    _first_bad(~((pscore > 0) & (pscore <= 1)), pscore, "`pscore` must be in (0, 1]")
    return Rounds(**arrays)


def check_q_hat(q_hat: object, shape: tuple[int, ...]) -> np.ndarray:
    """Reward-model predictions as finite floats of the policies' ``shape`` (n_instances, n_actions)."""
    array = np.asarray(q_hat, dtype=np.float64)
    if array.shape != shape:
        raise OirlError(f"`q_hat` must have the shape of `action_dist` {shape}, got {array.shape}")
    _first_bad(~np.isfinite(array), array, "`q_hat` must be finite", ("instance", "action"))
    return array


# ---------------------------------------------------------------- estimates and intervals


class Estimate(TypedDict):
    """One policy's value under one estimator, with its percentile interval (NaN if none)."""

    value: float
    ci: list[float]


def estimate(name: str, rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, **params: float) -> float:
    """The named estimator's value of ``action_dist`` (n_instances, n_actions) on ``rounds``.

    ``params``: ``tau`` (switch-dr), ``lam`` (dr-os); the other estimators ignore them.
    """
    return estimate_with_interval(name, rounds, action_dist, q_hat, n_boot=0, **params)["value"]


def estimate_with_interval(
    name: str, rounds: Rounds, action_dist: np.ndarray, q_hat: np.ndarray | None = None, *, clusters: np.ndarray | None = None,
    n_boot: int = 1000, seed: int = 0, level: float = 0.95, **params: float
) -> Estimate:
    """``{"value": v, "ci": [lo, hi]}``: the estimate and its cluster-bootstrap interval
    (see :func:`evaluate_policies`)."""
    policy = {"policy": check_action_dist(action_dist)}
    return _evaluate(policy, rounds, q_hat, (name,), clusters, n_boot, seed, level, params)["policy"][name]


def evaluate_policies(
    policies: Mapping[str, np.ndarray], rounds: Rounds, q_hat: np.ndarray | None = None, *,
    estimators: Sequence[str] = tuple(ESTIMATORS), clusters: np.ndarray | None = None,
    n_boot: int = 1000, seed: int = 0, level: float = 0.95, **params: float
) -> dict[str, dict[str, Estimate]]:
    """``{policy: {estimator: {"value", "ci"}}}`` for every policy and estimator.

    ``policies``: name -> action_dist (n_instances, n_actions), all of one shape;
    ``clusters`` (n_rounds,): any labels, default ``rounds.instance``. One set of draws
    serves every policy and estimator, so their intervals are paired. A draw gives
    cluster c a multinomial count d_c; its estimate is sum_c d_c num_c / sum_c d_c den_c
    (per-cluster sums of :func:`_ratio_terms`), the plug-in estimate on that resample,
    SNIPS included (its undefined resamples are skipped). ``n_boot = 0``: ci is NaN."""
    if not policies:
        raise OirlError("`policies` is empty: give at least one name -> action_dist")
    dists = {key: check_action_dist(value, f"policies[{key!r}]") for key, value in policies.items()}
    return _evaluate(dists, rounds, q_hat, estimators, clusters, n_boot, seed, level, params)


def _evaluate(
    dists: dict[str, np.ndarray], rounds: Rounds, q_hat: np.ndarray | None, estimators: Sequence[str],
    clusters: np.ndarray | None, n_boot: int, seed: int, level: float, params: dict[str, float]
) -> dict[str, dict[str, Estimate]]:
    """Validate the shared inputs, then estimate every (policy, estimator) on one set of draws."""
    unknown = [name for name in estimators if name not in ESTIMATORS]
    if unknown or not estimators:
        names = ", ".join(map(repr, unknown)) or "(none given)"
        raise OirlError(f"unknown estimator(s) {names} (choose from {', '.join(ESTIMATORS)})")
    shape = next(iter(dists.values())).shape
    for key, value in dists.items():
        if value.shape != shape:
            raise OirlError(f"`policies[{key!r}]` must have shape {shape} like the first policy, got {value.shape}")
    rounds = check_rounds(rounds, *shape)
    q_hat = None if q_hat is None else check_q_hat(q_hat, shape)
    clusters = rounds.instance if clusters is None else np.asarray(clusters)
    if clusters.shape != rounds.reward.shape:
        raise OirlError(f"`clusters` must have one entry per round, shape {rounds.reward.shape}, got {clusters.shape}")
    if set(params) - {"tau", "lam"}:
        raise ValueError(f"unknown estimator parameter(s) {sorted(set(params) - {'tau', 'lam'})} (tau: switch-dr, lam: dr-os)")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"`n_boot` must be an integer >= 0, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")

    keys = [(policy, name) for policy in dists for name in estimators]
    taus = {policy: params.get("tau", slope_tau(rounds, dists[policy], q_hat) if "switch-dr" in estimators else None) for policy in dists}
    terms = [_ratio_terms(name, rounds, dists[policy], q_hat, {**params, "tau": taus[policy]}) for policy, name in keys]
    numerators = np.stack([num for num, _ in terms], axis=1)  # (n_rounds, n_series)
    denominators = np.stack([den for _, den in terms], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = numerators.sum(axis=0) / denominators.sum(axis=0)
    intervals = ratio_intervals(numerators, denominators, clusters, n_boot, seed, level)
    report: dict[str, dict[str, Estimate]] = {policy: {} for policy in dists}
    for (policy, name), value, (low, high) in zip(keys, values, intervals, strict=True):
        report[policy][name] = {"value": float(value), "ci": [float(low), float(high)]}
        if name == "switch-dr":
            report[policy][name]["tau"] = float(taus[policy])
    return report


# ---------------------------------------------------------------- helpers


def one_hot(choices: np.ndarray, n_actions: int) -> np.ndarray:
    """A deterministic policy as action_dist (n_instances, n_actions) from ``choices`` (n_instances,)."""
    dist = np.zeros((len(choices), n_actions))
    dist[np.arange(len(choices)), np.asarray(choices, dtype=int)] = 1.0
    return dist


def full_information_rounds(rewards: np.ndarray) -> Rounds:
    """Every logged cell of ``rewards`` (n_instances, n_actions; NaN = unlogged) as a round.

    The implied logger is uniform over instance i's m_i logged actions (pscore 1 / m_i).
    With all logged, IPS, SNIPS, DR, Switch-DR (tau >= n_actions) and DR-OS (lam = inf)
    equal mean_i sum_a pi(a|i) r(i, a) exactly. With gaps, the round mean weights
    instance i by m_i, and pi's mass on unlogged actions is seen only through q_hat."""
    array = np.asarray(rewards, dtype=np.float64)
    if array.ndim != 2:
        raise OirlError(f"`rewards` must be a 2-D array (n_instances, n_actions), got shape {array.shape}")
    logged = ~np.isnan(array)
    empty = np.flatnonzero(~logged.any(axis=1))
    if empty.size:
        raise OirlError(f"`rewards` must log at least one action per instance, got none at instance {empty[0]}")
    in_range = (array >= 0) & (array <= 1)
    _first_bad(logged & ~in_range, array, "`rewards` must be in [0, 1] (NaN: unlogged)", ("instance", "action"))
    instance, action = np.nonzero(logged)
    return Rounds(instance, action, array[instance, action], 1.0 / logged.sum(axis=1)[instance])


def logged_rounds(rewards: np.ndarray, propensity: np.ndarray | None = None) -> Rounds:
    """The logged cells of ``rewards`` (n_instances, n_actions; NaN = unlogged) as rounds,
    with the logger's ``propensity`` of each cell (same shape) or, without it, the
    uniform logger over each instance's logged actions (:func:`full_information_rounds`)."""
    if propensity is None:
        return full_information_rounds(rewards)
    rounds = full_information_rounds(rewards)
    return rounds._replace(pscore=np.asarray(propensity, dtype=np.float64)[rounds.instance, rounds.action])


def per_instance(rounds: Rounds, terms: np.ndarray, n_instances: int) -> np.ndarray:
    """The mean of per-round ``terms`` within each instance, shape (n_instances,) (0 where none)."""
    counts = np.bincount(rounds.instance, minlength=n_instances)
    return np.bincount(rounds.instance, weights=terms, minlength=n_instances) / np.maximum(counts, 1)
