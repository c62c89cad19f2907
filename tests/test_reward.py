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


@pytest.mark.parametrize("name", REWARD_MODELS)
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


@pytest.mark.parametrize("name", REWARD_MODELS)
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
