import numpy as np
import pytest

from oirl.errors import BundleError, OirlError
from oirl.reward import REWARD_MODELS, make_reward_model

FAST = {
    "lightgbm": {"n_estimators": 60},
    "xgboost": {"n_estimators": 60},
    "logistic": {},
    "mlp": {"hidden_layer_sizes": (16,), "max_iter": 50},
}


def synthetic(n=1500, d=8, seed=0, soft=False):
    """Rewards that depend on an interaction of two features (plus noise)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    p = 1 / (1 + np.exp(-(2 * X[:, 0] - 1.5 * X[:, 1])))
    y = p if soft else (rng.random(n) < p).astype(float)
    return X, y


@pytest.mark.parametrize("name", FAST)
def test_every_backend_learns_and_round_trips_exactly(tmp_path, name):
    X, y = synthetic()
    model = make_reward_model(name, **FAST[name]).fit(X[:1000], y[:1000])
    assert model.fit(X[:1000], y[:1000]) is not None
    proba = model.predict_proba(X[1000:])
    assert proba.shape == (500, 2) and np.allclose(proba.sum(axis=1), 1)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[1000:], proba[:, 1]) > 0.75  # the signal is learnable
    model.save(tmp_path)
    loaded = type(model).load(tmp_path, model.get_params())
    np.testing.assert_array_equal(loaded.predict_reward(X[1000:]), model.predict_reward(X[1000:]))


@pytest.mark.parametrize("name", FAST)
def test_soft_rewards_train_every_backend(name):
    X, y = synthetic(soft=True)
    assert ((y > 0) & (y < 1)).all()
    model = make_reward_model(name, **FAST[name]).fit(X, y)
    predicted = model.predict_reward(X)
    assert np.corrcoef(predicted, y)[0, 1] > 0.8


def test_bad_inputs_and_unfitted_models():
    with pytest.raises(OirlError, match="unknown reward model 'forest'.*lightgbm, xgboost, logistic, mlp"):
        make_reward_model("forest")
    with pytest.raises(ValueError, match=r"`y` must hold rewards in \[0, 1\]"):
        make_reward_model("logistic").fit(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(OirlError, match="not fitted"):
        make_reward_model("lightgbm").predict_reward(np.zeros((1, 2)))
    with pytest.raises(OirlError, match="all 0 or all 1"):
        make_reward_model("logistic").fit(np.zeros((3, 2)), np.ones(3))


@pytest.mark.parametrize("name", REWARD_MODELS)
def test_corrupt_or_missing_model_files_raise_bundle_errors(tmp_path, name):
    model_cls = REWARD_MODELS[name]
    with pytest.raises(BundleError, match="missing model file"):
        model_cls.load(tmp_path, make_reward_model(name).get_params())
    (tmp_path / model_cls.model_file).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable"):
        model_cls.load(tmp_path, make_reward_model(name).get_params())


def unit(rng, n, d):
    v = rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_knn_pools_neighbours_per_prompt_and_round_trips(tmp_path):
    from oirl.features import grid_features
    from oirl.reward import NeighbourReward

    rng = np.random.default_rng(0)
    queries, prompts = unit(rng, 40, 8), unit(rng, 3, 8)
    # Prompt 0 is right on the first 20 queries, prompt 1 on the last 20, prompt 2 never.
    truth = np.zeros((40, 3))
    truth[:20, 0] = 1
    truth[20:, 1] = 1
    X = grid_features(queries, prompts)
    model = NeighbourReward(k=1, alpha=0.5).set_embedding_dimension(8).fit(X, truth.ravel())
    scores = model.predict_reward(X).reshape(40, 3)
    # With k=1 each query is its own neighbour: (1 + .5 * prior) / (1 + .5) or (.5 * prior) / 1.5.
    assert scores[:20].argmax(axis=1).tolist() == [0] * 20 and scores[20:].argmax(axis=1).tolist() == [1] * 20
    assert scores[0, 0] == pytest.approx((1 + 0.5 * 0.5) / 1.5)
    assert scores[0, 2] == pytest.approx(0.0)
    model.save(tmp_path)
    loaded = NeighbourReward.load(tmp_path, model.get_params())
    np.testing.assert_array_equal(loaded.predict_reward(X), model.predict_reward(X))


def test_knn_scores_of_a_prompt_ignore_other_prompts_rows():
    """What makes one fit serve every subset of training prompts."""
    from oirl.features import grid_features
    from oirl.reward import NeighbourReward

    rng = np.random.default_rng(1)
    queries, prompts = unit(rng, 30, 8), unit(rng, 4, 8)
    rewards = (rng.random((30, 4)) < 0.5).astype(float)
    full = NeighbourReward(k=5).set_embedding_dimension(8).fit(grid_features(queries, prompts), rewards.ravel())
    subset = NeighbourReward(k=5).set_embedding_dimension(8).fit(grid_features(queries, prompts[:2]), rewards[:, :2].ravel())
    test = unit(rng, 10, 8)
    np.testing.assert_allclose(
        full.predict_reward(grid_features(test, prompts)).reshape(10, 4)[:, :2],
        subset.predict_reward(grid_features(test, prompts[:2])).reshape(10, 2),
    )
    # A prompt never trained on borrows from the training prompts by similarity.
    new = full.predict_reward(grid_features(test, unit(rng, 1, 8)))
    assert new.shape == (10,) and np.all((new >= 0) & (new <= 1))
