"""Names the CLI offers before anything heavy is imported.

The registries themselves live with their code (``oirl.reward.registry.REWARD_MODELS``,
``oirl.policy.policies.POLICIES``); importing the reward module loads scikit-learn, which would
make ``oirl --help`` slow. ``tests/test_cli.py`` checks that these match.
"""


REWARD_MODEL_NAMES = ("lightgbm", "lightgbm-centred", "xgboost", "logistic", "mlp", "knn")
AUTO_MODEL = "auto"
CV_GROUPS = ("text", "instance")
