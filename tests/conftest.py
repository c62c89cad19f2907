"""Shared fixtures: real data from ../shared/data, a temp embedding cache, log slices."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from oirl.learn.train import train_recommender
from oirl.recommender.bundle import save_bundle

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("OIRL_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets the session's temp embedding cache, never the repo's embeddings/."""
    monkeypatch.setenv("OIRL_EMBEDDINGS_DIR", str(tmp_path_factory.getbasetemp() / "embeddings"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "prompt-oirl-llama2").is_dir():
        pytest.fail(f"the shared data is missing at {DATA_DIR} (set OIRL_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def imported_logs(data_dir, tmp_path_factory) -> Path:
    """All six Prompt-OIRL log files, imported once per test session."""
    from oirl.data.importers import import_prompt_oirl

    out = tmp_path_factory.mktemp("logs")
    import_prompt_oirl(data_dir, out)
    return out


def slice_queries(frame: pd.DataFrame, n_train: int, n_test: int, seed: int = 0) -> pd.DataFrame:
    """A reproducible slice of a log: n_train train and n_test test query instances."""
    picked = []
    for split, n in (("train", n_train), ("test", n_test)):
        ids = frame.loc[frame["split"] == split, "query_id"].drop_duplicates()
        picked += ids.sample(n=min(n, len(ids)), random_state=seed).tolist()
    return frame[frame["query_id"].isin(picked)].reset_index(drop=True)


@pytest.fixture(scope="session")
def gsm8k_slice(imported_logs) -> pd.DataFrame:
    """600 train and 200 test GSM8K queries with the six training prompts."""
    from oirl.data.logs import read_logs

    return slice_queries(read_logs(imported_logs / "gsm8k.parquet"), 600, 200)


@pytest.fixture(scope="session")
def minilm_bundle(gsm8k_slice, tmp_path_factory) -> Path:
    """A LightGBM bundle on real MiniLM vectors of 300 GSM8K train queries."""
    from oirl.data.logs import training_rows

    train = training_rows(gsm8k_slice, "split", "train", source="slice")
    keep = train["query_id"].drop_duplicates().head(300)
    work = tmp_path_factory.mktemp("bundle")
    rec = train_recommender(train[train["query_id"].isin(keep)], model="lightgbm", model_params={"n_estimators": 100}, cache_dir=work / "emb")
    return save_bundle(rec, work / "model")
