"""oirl: an offline prompt recommender (Prompt-OIRL, Sun et al., ICLR 2024).

Data flows one way: logs -> embeddings -> features -> reward model -> selector.
Importing ``oirl`` is cheap; torch, sentence-transformers, LightGBM and XGBoost load
only when first needed.

The top-level names load their module on first use (PEP 562), so ``import oirl`` stays
cheap and ``oirl.Client`` loads httpx only::

    import oirl

    logs = oirl.read_logs("logs/mawps.parquet")
    rec = oirl.train(oirl.training_rows(logs, "split", "train", source="mawps"))
    oirl.save(rec, "models/mawps")
    report = oirl.evaluate(oirl.load("models/mawps"), logs[logs["split"] == "test"])
    with oirl.Client("http://127.0.0.1:8000") as service: ...
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute). Strings, not import statements: the modules below import
# ``oirl`` (for __version__), and nothing here may load them before they are asked for.
_LAZY = {
    "read_logs": ("oirl.data.logs", "read_logs"),
    "training_rows": ("oirl.data.logs", "training_rows"),
    "train": ("oirl.learn.train", "train_recommender"),
    "save": ("oirl.recommender.bundle", "save_bundle"),
    "load": ("oirl.recommender.bundle", "load_bundle"),
    "evaluate": ("oirl.evaluation.report", "evaluate_recommender"),
    "Candidate": ("oirl.recommender.recommender", "Candidate"),
    "Client": ("oirl.client", "Client"),
    "OirlError": ("oirl.errors", "OirlError"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'oirl' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
