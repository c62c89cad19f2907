"""Model bundles: what `oirl train --out` may write over, and what loading refuses."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from oirl.cli.main import cli
from oirl.errors import BundleError
from oirl.learn.train import train_recommender
from oirl.recommender.bundle import BUNDLE_FILE, load_bundle, save_bundle


@pytest.fixture(scope="module")
def bundle(gsm8k_slice, tmp_path_factory):
    """A small knn bundle (hashing embedder) and the log it was trained on."""
    from oirl.data.logs import training_rows, write_logs

    work = tmp_path_factory.mktemp("bundle")
    train = training_rows(gsm8k_slice, "split", "train", source="slice")
    train = train[train["query_id"].isin(train["query_id"].unique()[:60])]
    log = write_logs(train, work / "train.parquet")
    save_bundle(train_recommender(train, model="knn", embedder="hashing", cache_dir=work / "emb"), work / "model")
    return work, log


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


# --------------------------------------------------------------------------- writing


def test_train_refuses_a_non_empty_directory_that_is_not_a_bundle(bundle, tmp_path):
    work, log = bundle
    (tmp_path / "notes.txt").write_text("keep me")
    result = cli_run("train", log, "--out", tmp_path, "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    one_line_error(result, "exists, is not empty and is not an oirl bundle")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me"


def test_train_refuses_the_current_directory_cleanly(bundle, tmp_path, monkeypatch):
    work, log = bundle
    monkeypatch.chdir(tmp_path)
    result = cli_run("train", log, "--out", ".", "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
    one_line_error(result, "cannot replace the current directory")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_or_missing_directory_and_an_existing_bundle_are_fine(bundle, tmp_path):
    work, log = bundle
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new" / "deeper", tmp_path / "empty"):  # the last one replaces a bundle
        result = cli_run("train", log, "--out", target, "--model", "knn", "--embedder", "hashing", "--cache-dir", work / "emb")
        assert result.exit_code == 0, result.output
        assert (target / BUNDLE_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no temp or old directory left


def test_bundle_files_and_folders_follow_the_umask(bundle, tmp_path):
    work, _ = bundle
    rec = load_bundle(work / "model", cache_dir=work / "emb")
    old = os.umask(0o002)
    try:
        save_bundle(rec, tmp_path / "model")
    finally:
        os.umask(old)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o775
    for path in (tmp_path / "model").iterdir():
        assert path.stat().st_mode & 0o777 == 0o664, path


def test_replacing_a_bundle_keeps_the_old_one_if_writing_fails(bundle, tmp_path, monkeypatch):
    work, _ = bundle
    rec = load_bundle(work / "model", cache_dir=work / "emb")
    save_bundle(rec, tmp_path / "model")
    before = (tmp_path / "model" / BUNDLE_FILE).read_bytes()
    monkeypatch.setattr(type(rec.model), "to_bytes", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        save_bundle(rec, tmp_path / "model")
    assert (tmp_path / "model" / BUNDLE_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_loaded_bundles_score_like_the_trained_one_and_fingerprint_what_they_load(bundle):
    work, _ = bundle
    first = load_bundle(work / "model", cache_dir=work / "emb")
    queries = ["How many apples are left?", "What is 7 times 8?"]
    second = load_bundle(work / "model", cache_dir=work / "emb")
    np.testing.assert_array_equal(first.score(queries), second.score(queries))
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 16


# --------------------------------------------------------------------------- loading refuses


def corrupt_json(change):
    def apply(model):
        meta = json.loads((model / BUNDLE_FILE).read_text())
        change(meta)
        (model / BUNDLE_FILE).write_text(json.dumps(meta))
    return apply


def set_path(path, value):
    def change(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


CORRUPTIONS = {
    "truncated json": (lambda m: (m / BUNDLE_FILE).write_text((m / BUNDLE_FILE).read_text()[:200]), "bundle.json: not valid JSON"),
    "old format": (corrupt_json(set_path(["format"], 1)), "bundle format 1; this oirl reads format 3"),
    "margin of the wrong type": (corrupt_json(set_path(["policy", "conservative_margin"], "abc")), "policy.conservative_margin"),
    "unknown top-level key": (corrupt_json(set_path(["surprise"], 1)), "surprise: Extra inputs are not permitted"),
    "unknown model parameter": (corrupt_json(set_path(["model", "params", "depth"], 3)), "model.params.depth: Extra inputs are not permitted"),
    "model parameter of the wrong type": (corrupt_json(set_path(["model", "params", "k"], "many")), "model.params.k: Input should be a valid integer"),
    "unknown model kind": (corrupt_json(set_path(["model", "kind"], "forest")), "model.kind 'forest' is not one of"),
    "path escape": (corrupt_json(set_path(["model", "file"], "../model.neighbours.npz")), "model.file"),
    "reward out of range": (corrupt_json(lambda meta: meta["prompts"][0].update(train_mean_reward=3.0)), "prompts.0.train_mean_reward"),
    "missing model file": (lambda m: (m / "model.neighbours.npz").unlink(), "model.neighbours.npz: missing bundle file"),
    "truncated model file": (lambda m: (m / "model.neighbours.npz").write_bytes((m / "model.neighbours.npz").read_bytes()[:100]),
                             "model.neighbours.npz: content does not match the hash"),
    "model file replaced by a link": (lambda m: _replace_by_link(m / "model.neighbours.npz"), "must stay inside the bundle (no links"),
    "wrong vector shape": (lambda m: _rewrite_vectors(m, np.zeros((2, 64), np.float32)), "prompt_vectors.npy: array of shape (2, 64)"),
    "other embedder": (corrupt_json(set_path(["embedder", "revision"], "someone-elses-weights")), "trained with embedder oirl/hashing-64 (revision someone-elses-weights)"),
}


def _replace_by_link(path):
    """The same bytes, now behind a symbolic link (which could as well point outside)."""
    real = path.with_name("elsewhere.npz")
    path.rename(real)
    path.symlink_to(real)


def _rewrite_vectors(model, array):
    """Replace the vectors *and* their recorded hash: only the shape check can catch it."""
    import hashlib
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    (model / "prompt_vectors.npy").write_bytes(buffer.getvalue())
    corrupt_json(set_path(["files", "prompt_vectors.npy"], hashlib.sha256(buffer.getvalue()).hexdigest()))(model)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corrupt_bundle_is_one_line_and_exit_2(bundle, tmp_path, name):
    work, _ = bundle
    damage, message = CORRUPTIONS[name]
    shutil.copytree(work / "model", tmp_path / "model")
    damage(tmp_path / "model")
    with pytest.raises(BundleError, match="."):
        load_bundle(tmp_path / "model", cache_dir=work / "emb")
    result = cli_run("recommend", tmp_path / "model", "--query", "hi", "--cache-dir", work / "emb")
    one_line_error(result, message)


@pytest.mark.parametrize("name", ["truncated json", "path escape", "truncated model file", "other embedder"])
def test_a_corrupt_bundle_stops_the_server_at_start(bundle, tmp_path, name):
    work, _ = bundle
    damage, message = CORRUPTIONS[name]
    shutil.copytree(work / "model", tmp_path / "model")
    damage(tmp_path / "model")
    result = subprocess.run([sys.executable, "-m", "oirl.cli", "serve", str(tmp_path / "model"), "--port", "0"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OIRL_EMBEDDINGS_DIR": str(work / "emb")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
