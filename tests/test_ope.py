import numpy as np
import pytest

from oirl.errors import OirlError
from oirl.ope.estimators import (
    DEFAULT_LAMBDA,
    ESTIMATORS,
    Rounds,
    estimate,
    estimate_with_interval,
    evaluate_policies,
    full_information_rounds,
    one_hot,
    slope_tau,
)

# Two instances, two actions, four logged rounds.
#   instance 0: the policy plays action 0 (one-hot); instance 1: half and half (stochastic).
ROUNDS = Rounds(
    instance=np.array([0, 0, 1, 1]),
    action=np.array([0, 1, 0, 1]),
    reward=np.array([1.0, 0.0, 0.5, 1.0]),
    pscore=np.array([0.5, 0.5, 0.25, 0.75]),
)
PI = np.array([[1.0, 0.0], [0.5, 0.5]])
Q_HAT = np.array([[0.6, 0.2], [0.3, 0.5]])
# Weights w = pi(a|x) / p:  1/.5 = 2,  0/.5 = 0,  .5/.25 = 2,  .5/.75 = 2/3.
# Model value per instance: 0.6 (instance 0), .5*.3 + .5*.5 = 0.4 (instance 1).
# Residuals r - q_hat(x, a): 1-.6 = .4,  0-.2 = -.2,  .5-.3 = .2,  1-.5 = .5.
EXPECTED = {
    "dm": (0.6 + 0.6 + 0.4 + 0.4) / 4,  # 0.5
    "ips": (2 * 1 + 0 * 0 + 2 * 0.5 + 2 / 3 * 1) / 4,  # (11/3) / 4 = 11/12
    "snips": (11 / 3) / (2 + 0 + 2 + 2 / 3),  # (11/3) / (14/3) = 11/14
    # dm + w * residual: 0.6+.8, 0.6+0, 0.4+.4, 0.4+1/3 -> 53/60
    "dr": (1.4 + 0.6 + 0.8 + (0.4 + 1 / 3)) / 4,
    # tau = 1 keeps the correction of rounds 1 (w = 0) and 3 (w = 2/3) only -> 7/12
    "switch-dr": (0.6 + 0.6 + 0.4 + (0.4 + 1 / 3)) / 4,
    # lam = 4 shrinks w to 4w / (w^2 + 4): 2 -> 1, 0 -> 0, 2/3 -> (8/3) / (40/9) = 0.6;
    # dm + shrunk w * residual: 0.6+.4, 0.6, 0.4+.2, 0.4+.3 -> 0.725
    "dr-os": (1.0 + 0.6 + 0.6 + 0.7) / 4,
}


def test_registry_has_obps_names():
    assert list(ESTIMATORS) == ["dm", "ips", "snips", "dr", "switch-dr", "dr-os"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_hand_computed_values(name):
    assert estimate(name, ROUNDS, PI, Q_HAT, tau=1.0, lam=4.0) == pytest.approx(EXPECTED[name], abs=1e-12)


@pytest.mark.parametrize("name", [n for n in ESTIMATORS if n != "snips"])
def test_per_round_contributions_average_to_the_estimate(name):
    terms = ESTIMATORS[name](ROUNDS, PI, Q_HAT, tau=1.0, lam=4.0)
    assert terms.shape == (4,)
    assert terms.mean() == pytest.approx(EXPECTED[name], abs=1e-12)


def test_snips_terms_and_empty_support():
    assert ESTIMATORS["snips"](ROUNDS, PI).mean() == pytest.approx(11 / 14)
    # Playing action 1 on instance 0 and action 0 on instance 1 meets rounds 1 (w = 1/.5 = 2,
    # r = 0) and 2 (w = 1/.25 = 4, r = .5): snips = (2*0 + 4*.5) / (2 + 4) = 1/3.
    assert estimate("snips", ROUNDS, np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(1 / 3)
    # No logged action has weight: SNIPS is undefined (NaN), IPS is 0.
    rounds = Rounds(np.array([0]), np.array([0]), np.array([1.0]), np.array([0.5]))
    never = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert np.isnan(estimate("snips", rounds, never))
    assert estimate("ips", rounds, never) == 0.0
    assert np.isnan(estimate_with_interval("snips", rounds, never, n_boot=50)["ci"]).all()


def test_switch_and_shrinkage_limits():
    # tau = inf and lam = inf are DR; tau = 0 and lam = 0 are DM.
    assert estimate("switch-dr", ROUNDS, PI, Q_HAT, tau=np.inf) == pytest.approx(EXPECTED["dr"])
    assert estimate("dr-os", ROUNDS, PI, Q_HAT, lam=np.inf) == pytest.approx(EXPECTED["dr"])
    assert estimate("switch-dr", ROUNDS, PI, Q_HAT, tau=0.0) == pytest.approx(EXPECTED["dm"])
    assert estimate("dr-os", ROUNDS, PI, Q_HAT, lam=0.0) == pytest.approx(EXPECTED["dm"])
    # dr-os's default shrinks small weights very little.
    assert DEFAULT_LAMBDA == 100.0**2
    assert estimate("dr-os", ROUNDS, PI, Q_HAT) == pytest.approx(EXPECTED["dr"], abs=1e-3)


def test_one_hot_and_stochastic_policies():
    # One-hot from choices: IPS = mean of 1{a_i = choice} r_i / p_i.
    deterministic = one_hot(np.array([1, 0]), 2)
    assert deterministic.tolist() == [[0, 1], [1, 0]]
    assert estimate("ips", ROUNDS, deterministic) == pytest.approx((0 / 0.5 + 0.5 / 0.25) / 4)
    # DM, IPS and DR are linear in the policy: a mixture's value is the mixture of values.
    other = one_hot(np.array([0, 1]), 2)
    mixture = 0.3 * deterministic + 0.7 * other
    for name in ("dm", "ips", "dr"):
        expected = 0.3 * estimate(name, ROUNDS, deterministic, Q_HAT) + 0.7 * estimate(name, ROUNDS, other, Q_HAT)
        assert estimate(name, ROUNDS, mixture, Q_HAT) == pytest.approx(expected)
    report = evaluate_policies({"one-hot": deterministic, "mixture": mixture}, ROUNDS, Q_HAT, n_boot=100)
    assert set(report) == {"one-hot", "mixture"} and all(set(r) == set(ESTIMATORS) for r in report.values())


# ---------------------------------------------------------------- full information


def full_information_case(seed: int = 0, n: int = 6, k: int = 3):
    rng = np.random.default_rng(seed)
    rewards = rng.choice([0.0, 0.25, 1.0], size=(n, k))
    policies = {"one-hot": one_hot(rng.integers(0, k, n), k), "stochastic": rng.dirichlet(np.ones(k), size=n)}
    return rewards, policies, rng.uniform(size=(n, k))


@pytest.mark.parametrize("policy", ["one-hot", "stochastic"])
def test_full_information_estimates_equal_the_direct_mean(policy):
    rewards, policies, q_hat = full_information_case()
    pi = policies[policy]
    rounds = full_information_rounds(rewards)
    assert len(rounds.reward) == rewards.size and np.allclose(rounds.pscore, 1 / 3)
    direct = (pi * rewards).sum(axis=1).mean()  # mean_i r(i, pi(i)) for a one-hot policy
    for name, params in [("ips", {}), ("snips", {}), ("dr", {}), ("switch-dr", {"tau": 3}), ("dr-os", {"lam": np.inf})]:
        assert estimate(name, rounds, pi, q_hat, **params) == pytest.approx(direct, abs=1e-12), name
    # The default lam = 1e4 shrinks w = 3 by 0.1%.
    assert estimate("dr-os", rounds, pi, q_hat, lam=1e15) == pytest.approx(direct, abs=1e-12)
    assert estimate("dr-os", rounds, pi, q_hat) == pytest.approx(direct, abs=5e-3)


def test_full_information_with_gaps():
    rewards = np.array([[1.0, np.nan, 0.0], [np.nan, 0.5, 1.0], [0.0, 1.0, np.nan]])
    rounds = full_information_rounds(rewards)
    assert rounds.instance.tolist() == [0, 0, 1, 1, 2, 2]
    assert rounds.action.tolist() == [0, 2, 1, 2, 0, 1]
    assert np.allclose(rounds.pscore, 0.5)
    # Same count of logged actions everywhere and a policy among them: still exact.
    pi = one_hot(np.array([0, 1, 1]), 3)
    assert estimate("ips", rounds, pi) == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    # Unequal counts: the round mean weights instance i by its m_i logged actions.
    rewards[2, 2] = 0.0  # instance 2 now has three
    assert estimate("ips", full_information_rounds(rewards), pi) == pytest.approx((2 * 1.0 + 2 * 0.5 + 3 * 1.0) / 7)


# ---------------------------------------------------------------- simulations


def bandit_world(n: int = 50, k: int = 4):
    """A reward table with known truth, a logger with known propensities, a biased model."""
    rng = np.random.default_rng(12345)
    mu = rng.uniform(0.1, 0.9, size=(n, k))
    logger = 0.8 * rng.dirichlet(np.ones(k), size=n) + 0.2 / k  # every propensity >= 0.05
    pi = one_hot((mu + rng.normal(0, 0.1, size=mu.shape)).argmax(axis=1), k)
    q_hat = np.clip(0.7 * mu + 0.1 + rng.normal(0, 0.1, size=mu.shape), 0, 1)
    return mu, logger, pi, q_hat


def log_rounds(seed: int, mu: np.ndarray, logger: np.ndarray, n_rounds: int = 300) -> Rounds:
    rng = np.random.default_rng(seed)
    instance = rng.integers(0, len(mu), n_rounds)
    action = np.minimum((rng.random(n_rounds)[:, None] > logger[instance].cumsum(axis=1)).sum(axis=1), mu.shape[1] - 1)
    reward = (rng.random(n_rounds) < mu[instance, action]).astype(float)
    return Rounds(instance, action, reward, logger[instance, action])


def test_unbiased_by_simulation():
    mu, logger, pi, q_hat = bandit_world()
    truth = (pi * mu).sum(axis=1).mean()
    runs = [evaluate_policies({"pi": pi}, log_rounds(seed, mu, logger), q_hat, n_boot=0)["pi"] for seed in range(200)]
    values = {name: np.array([run[name]["value"] for run in runs]) for name in ESTIMATORS}
    bias = {name: v.mean() - truth for name, v in values.items()}
    standard_error = {name: v.std(ddof=1) / np.sqrt(len(v)) for name, v in values.items()}
    rmse = {name: np.sqrt(np.mean((v - truth) ** 2)) for name, v in values.items()}
    for name in ("ips", "dr"):
        assert abs(bias[name]) < max(3 * standard_error[name], 0.01), (name, bias[name])
    assert abs(bias["dm"]) > 0.05  # the model is biased, and the simulation can tell
    assert rmse["snips"] < 0.8 * rmse["ips"] and rmse["dr"] < 0.8 * rmse["ips"], rmse


BETA = np.array([0.35, 0.4, 0.4, 0.45])


def clustered_world(seed: int, n_clusters: int = 30, per_cluster: int = 8, rounds_per: int = 3):
    """Questions (clusters) share a difficulty u_c; a uniform logger; the policy picks z_i,
    worth BETA + 0.2: the truth is mean(BETA) + 0.2 whatever the draw."""
    rng = np.random.default_rng(seed)
    n, k = n_clusters * per_cluster, len(BETA)
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    z = rng.integers(0, k, n)
    model = BETA[None, :] + 0.2 * (np.arange(k)[None, :] == z[:, None])
    mu = model + rng.uniform(-0.35, 0.35, n_clusters)[cluster][:, None]
    instance = np.repeat(np.arange(n), rounds_per)
    action = rng.integers(0, k, len(instance))
    reward = (rng.random(len(instance)) < mu[instance, action]).astype(float)
    return Rounds(instance, action, reward, np.full(len(instance), 1 / k)), one_hot(z, k), model, cluster[instance]


def test_cluster_bootstrap_covers_at_about_the_nominal_rate():
    truth = BETA.mean() + 0.2
    covered: dict[tuple[str, str], list[bool]] = {}
    for seed in range(200):
        rounds, pi, q_hat, clusters = clustered_world(seed)
        for kind, labels in (("cluster", clusters), ("row", np.arange(len(clusters)))):
            report = evaluate_policies({"pi": pi}, rounds, q_hat, estimators=("ips", "snips", "dr"), clusters=labels, n_boot=200, seed=seed)
            for name, result in report["pi"].items():
                covered.setdefault((kind, name), []).append(result["ci"][0] <= truth <= result["ci"][1])
    rate = {key: np.mean(hits) for key, hits in covered.items()}
    for name in ("ips", "snips", "dr"):
        assert 0.9 <= rate["cluster", name] <= 0.99, rate
    assert rate["row", "dr"] < rate["cluster", "dr"] - 0.05, rate  # rows of one question are not independent


def test_bootstrap_resamples_whole_clusters():
    rounds, pi, q_hat, _ = clustered_world(0, n_clusters=10, per_cluster=2, rounds_per=1)
    singles = estimate_with_interval("dr", rounds, pi, q_hat, clusters=np.arange(20), n_boot=300)
    # Each round three times over: as one cluster each, the interval is the same ...
    tripled = Rounds(*(np.repeat(field, 3) for field in rounds))
    as_clusters = estimate_with_interval("dr", tripled, pi, q_hat, clusters=np.repeat(np.arange(20), 3), n_boot=300)
    assert as_clusters["value"] == pytest.approx(singles["value"])
    assert as_clusters["ci"] == pytest.approx(singles["ci"])
    # ... resampled as rows, it would be too narrow.
    as_rows = estimate_with_interval("dr", tripled, pi, q_hat, clusters=np.arange(60), n_boot=300)
    assert np.diff(as_rows["ci"])[0] < 0.75 * np.diff(singles["ci"])[0]
    # Any labels work (the draws follow their sorted order); the default is the instances.
    by_text = estimate_with_interval("dr", rounds, pi, q_hat, clusters=np.array([f"q{i:02d}" for i in rounds.instance]), n_boot=300)
    assert by_text == estimate_with_interval("dr", rounds, pi, q_hat, n_boot=300)


def test_policies_share_one_set_of_draws():
    rounds, pi, q_hat, clusters = clustered_world(1, n_clusters=12)
    policies = {"pi": pi, "uniform": np.full(pi.shape, 0.25)}
    report = evaluate_policies(policies, rounds, q_hat, clusters=clusters, n_boot=400, seed=7, level=0.9)
    for policy, dist in policies.items():
        for name in ESTIMATORS:
            alone = estimate_with_interval(name, rounds, dist, q_hat, clusters=clusters, n_boot=400, seed=7, level=0.9)
            assert report[policy][name]["value"] == pytest.approx(alone["value"], rel=1e-12)
            assert report[policy][name]["ci"] == pytest.approx(alone["ci"], rel=1e-12)
            low, high = alone["ci"]
            assert low - 1e-12 <= alone["value"] <= high + 1e-12  # DM of the uniform policy is constant


# ---------------------------------------------------------------- validation


def with_round(field: str, index: int, value) -> Rounds:
    array = getattr(ROUNDS, field).copy()
    array[index] = value
    return ROUNDS._replace(**{field: array})


INVALID = [
    ({"rounds": with_round("pscore", 3, 0.0)}, OirlError, r"`pscore` must be in \(0, 1\], got 0.0 at round 3"),
    ({"rounds": with_round("pscore", 1, 1.5)}, OirlError, r"`pscore` must be in \(0, 1\], got 1.5 at round 1"),
    ({"rounds": with_round("reward", 2, -0.1)}, OirlError, r"`reward` must be in \[0, 1\], got -0.1 at round 2"),
    ({"rounds": with_round("reward", 0, np.nan)}, OirlError, r"`reward` must be in \[0, 1\], got nan at round 0"),
    ({"rounds": with_round("action", 1, 2)}, OirlError, r"`action` must be in \[0, 2\), got 2 at round 1"),
    ({"rounds": with_round("instance", 0, -1)}, OirlError, r"`instance` must be in \[0, 2\), got -1 at round 0"),
    ({"rounds": ROUNDS._replace(action=ROUNDS.action.astype(float))}, OirlError, r"`action` must hold integer indices, got dtype float64"),
    ({"rounds": ROUNDS._replace(reward=np.array(["1", "0", "1", "0"]))}, OirlError, r"`reward` must be real numbers, got dtype <U1"),
    ({"rounds": ROUNDS._replace(pscore=ROUNDS.pscore[:3])}, OirlError, r"`pscore` must have one entry per round like `instance` \(4\), got 3"),
    ({"rounds": ROUNDS._replace(reward=ROUNDS.reward[None, :])}, OirlError, r"`reward` must be a 1-D array \(n_rounds,\), got shape \(1, 4\)"),
    ({"rounds": Rounds(*(np.array([], dtype=int),) * 4)}, OirlError, r"no rounds to evaluate"),
    ({"action_dist": np.array([[0.9, 0.0], [0.5, 0.5]])}, OirlError, r"`action_dist` rows must sum to 1, got 0.9 at instance 0"),
    ({"action_dist": np.array([[1.0, 0.0], [1.5, -0.5]])}, OirlError, r"`action_dist` must be finite and >= 0, got -0.5 at instance 1, action 1"),
    ({"action_dist": np.array([1.0, 0.0])}, OirlError, r"`action_dist` must be a non-empty 2-D array .* got shape \(2,\)"),
    ({"q_hat": np.zeros((2, 3))}, OirlError, r"`q_hat` must have the shape of `action_dist` \(2, 2\), got \(2, 3\)"),
    ({"q_hat": np.array([[0.5, np.nan], [0.5, 0.5]])}, OirlError, r"`q_hat` must be finite, got nan at instance 0, action 1"),
    ({"q_hat": None}, OirlError, r"`q_hat` .* is required by dm, dr"),
    ({"name": "ipw"}, OirlError, r"unknown estimator\(s\) 'ipw' \(choose from dm, ips, snips, dr, switch-dr, dr-os\)"),
    ({"clusters": np.arange(3)}, OirlError, r"`clusters` must have one entry per round, shape \(4,\), got \(3,\)"),
    ({"name": "switch-dr", "tau": -1.0}, ValueError, r"`tau` must be a number >= 0 \(inf allowed\), got -1.0"),
    ({"name": "dr-os", "lam": np.nan}, ValueError, r"`lam` must be a number >= 0"),
    ({"lambda_": 5.0}, ValueError, r"unknown estimator parameter\(s\) \['lambda_'\] \(tau: switch-dr, lam: dr-os\)"),
    ({"n_boot": -1}, ValueError, r"`n_boot` must be an integer >= 0, got -1"),
    ({"level": 1.5}, ValueError, r"`level` must be in \(0, 1\), got 1.5"),
]


@pytest.mark.parametrize("overrides, error, match", INVALID)
def test_invalid_inputs(overrides, error, match):
    arguments = {"name": "dr", "rounds": ROUNDS, "action_dist": PI, "q_hat": Q_HAT, "n_boot": 10} | overrides
    with pytest.raises(error, match=match):
        estimate_with_interval(arguments.pop("name"), arguments.pop("rounds"), arguments.pop("action_dist"), **arguments)


@pytest.mark.parametrize(
    "policies, match",
    [
        ({}, r"`policies` is empty"),
        ({"a": PI, "b": np.full((3, 2), 0.5)}, r"`policies\['b'\]` must have shape \(2, 2\) like the first policy, got \(3, 2\)"),
        ({"a": PI, "b": np.array([[0.5, 0.6], [1, 0]])}, r"`policies\['b'\]` rows must sum to 1, got 1.1 at instance 0"),
    ],
)
def test_invalid_policies(policies, match):
    with pytest.raises(OirlError, match=match):
        evaluate_policies(policies, ROUNDS, Q_HAT, n_boot=10)


@pytest.mark.parametrize(
    "rewards, match",
    [
        (np.array([1.0, 0.0]), r"`rewards` must be a 2-D array"),
        (np.array([[1.0, 0.0], [np.nan, np.nan]]), r"`rewards` must log at least one action per instance, got none at instance 1"),
        (np.array([[1.0, 0.0], [2.0, np.nan]]), r"`rewards` must be in \[0, 1\] \(NaN: unlogged\), got 2.0 at instance 1, action 0"),
    ],
)
def test_invalid_full_information_rewards(rewards, match):
    with pytest.raises(OirlError, match=match):
        full_information_rounds(rewards)


def slope_case(bias: float, n: int = 4000, seed: int = 0):
    """A logger that almost never plays the policy's action (p = .01, w = 100), and a reward
    model off by ``bias`` on it."""
    rng = np.random.default_rng(seed)
    rare = rng.random(n) < 0.01
    rounds = Rounds(np.arange(n), np.where(rare, 0, 1), (rng.random(n) < 0.5).astype(float), np.where(rare, 0.01, 0.99))
    pi = one_hot(np.zeros(n, dtype=int), 2)  # always action 0, the rare one
    return rounds, pi, np.full((n, 2), 0.5 + bias)


def test_slope_lowers_tau_while_the_estimates_agree_and_stops_where_bias_shows():
    # An unbiased reward model: DM agrees with DR within their errors, so SLOPE descends to
    # the least variance (tau below the rare weight: switch-dr = DM) and reports that tau.
    rounds, pi, q_hat = slope_case(bias=0.0)
    report = evaluate_policies({"rare": pi}, rounds, q_hat, n_boot=50)["rare"]
    assert report["switch-dr"]["tau"] < 100 and report["switch-dr"]["value"] == pytest.approx(report["dm"]["value"])
    # A reward model off by .3: DM departs from DR by more than their errors; DR stays.
    rounds, pi, q_hat = slope_case(bias=0.3)
    assert slope_tau(rounds, pi, q_hat) >= 100  # every rare round kept: DR
    assert estimate("switch-dr", rounds, pi, q_hat) == pytest.approx(estimate("dr", rounds, pi, q_hat))
