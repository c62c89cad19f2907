import hashlib
import json
import multiprocessing
import os
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from oirl.embed.base import HashingEmbedder, text_hash, weights_revision
from oirl.embed.cached import CachedEmbedder
from oirl.embed.registry import get_embedder
from oirl.embed.sentence import SentenceTransformerEmbedder
from oirl.embed.store import CACHE_FILE, EmbeddingCache

TEXTS = ["How many apples are left?", "Let's think step by step: ", "How many apples are left?", "The answer is:"]


def test_second_run_embeds_nothing(tmp_path):
    first = CachedEmbedder(HashingEmbedder(), tmp_path)
    vectors = first.embed(TEXTS)
    assert first.n_embedded == 3  # the repeated text is embedded once
    second = CachedEmbedder(HashingEmbedder(), tmp_path)  # a new process, same disk cache
    again = second.embed(TEXTS + ["The answer is:"])
    assert second.n_embedded == 0
    np.testing.assert_array_equal(again[:4], vectors)
    assert (tmp_path / CACHE_FILE).is_file() and len(second) == 3
    assert CachedEmbedder(HashingEmbedder(), tmp_path).embed([]).shape == (0, 64)


def test_many_texts_are_looked_up_in_chunks(tmp_path):
    texts = [f"question number {i}" for i in range(1_234)]  # more than one IN (...) query
    reference = CachedEmbedder(HashingEmbedder(), tmp_path, chunk_size=100).embed(texts)
    again = CachedEmbedder(HashingEmbedder(), tmp_path)
    np.testing.assert_array_equal(again.embed(texts[::-1]), reference[::-1])
    assert again.n_embedded == 0


def test_cache_is_keyed_by_model_revision(tmp_path):
    CachedEmbedder(HashingEmbedder(64), tmp_path).embed(TEXTS)
    other = CachedEmbedder(HashingEmbedder(32), tmp_path)
    assert other.embed(TEXTS).shape == (4, 32) and other.n_embedded == 3
    assert (HashingEmbedder(64).revision, HashingEmbedder(32).revision) == ("hashing-64", "hashing-32")

    class Retrained(HashingEmbedder):  # same name, other weights
        revision = "retrained-1"

    retrained = CachedEmbedder(Retrained(64), tmp_path)
    retrained.embed(TEXTS)
    assert retrained.n_embedded == 3
    with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
        models = conn.execute("SELECT revision, model_id, dimension FROM models ORDER BY id").fetchall()
    assert models == [
        ("hashing-64", "oirl/hashing-64", 64),
        ("hashing-32", "oirl/hashing-32", 32),
        ("retrained-1", "oirl/hashing-64", 64),
    ]


def _fake_model(folder: Path, weights: bytes) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "mean"}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("a model")
    return folder


def test_weights_revision_follows_the_weights_not_the_path(tmp_path):
    model = _fake_model(tmp_path / "model", b"weights v1")
    first = weights_revision(model)
    assert len(first) == 16 and SentenceTransformerEmbedder(str(model)).revision == first  # nothing loaded
    assert weights_revision(_fake_model(tmp_path / "copy", b"weights v1")) == first  # same weights elsewhere
    (model / "README.md").write_text("documentation is not weights")
    assert weights_revision(model) == first
    (model / "model.safetensors").write_bytes(b"weights v2")  # new weights at the same path
    second = weights_revision(model)
    assert second != first
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode": "cls"}')
    assert weights_revision(model) not in (first, second)


def test_minilm_revision_is_a_hash_of_its_files():
    started = time.perf_counter()
    revision = get_embedder("minilm").revision
    assert len(revision) == 16 and time.perf_counter() - started < 5  # ~0.1-0.2 s; generous for a busy machine
    assert get_embedder("minilm").revision == revision


def _write_old_shard(folder: Path, model_id: str, texts: list[str], vectors: np.ndarray, checksum: str | None = None) -> Path:
    """A shard exactly as the previous cache format wrote it."""
    hashes = np.array([text_hash(t) for t in texts], dtype="<U64")
    digest = hashlib.sha256(np.ascontiguousarray(hashes).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shard-{digest.hexdigest()[:16]}.npz"
    with path.open("wb") as handle:
        np.savez(handle, hashes=hashes, vectors=vectors.astype(np.float32), model_id=np.array(model_id),
                 checksum=np.array(checksum or digest.hexdigest()))  # fmt: skip
    return path


def test_old_shards_are_migrated_and_deleted(tmp_path):
    texts = list(dict.fromkeys(TEXTS))
    reference = HashingEmbedder().embed(texts)
    shard = _write_old_shard(tmp_path / "oirl_hashing-64-1234abcd", "oirl/hashing-64", texts, reference)
    other = _write_old_shard(tmp_path / "someone_else-0000", "someone/else", texts, np.zeros((3, 8), np.float32))
    with pytest.warns(UserWarning, match="migrated 3 vectors of oirl/hashing-64 from old shard"):
        cached = CachedEmbedder(HashingEmbedder(), tmp_path)
    np.testing.assert_array_equal(cached.embed(texts), reference)
    assert cached.n_embedded == 0
    assert not shard.exists() and not shard.parent.exists()
    assert other.exists()  # another model's shard waits for that model


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:100]),  # truncated
        lambda path: path.write_bytes(b"not a zip file at all"),
        lambda path: _write_old_shard(path.parent, "oirl/hashing-64", ["x"], np.zeros((1, 64)), checksum="bad").replace(path),
        lambda path: _write_old_shard(path.parent, "oirl/hashing-64", ["x"], np.zeros((1, 32))).replace(path),
    ],
    ids=["truncated", "not-a-zip", "bad-checksum", "wrong-dimension"],
)
def test_unreadable_old_shards_are_discarded(tmp_path, damage):
    shard = _write_old_shard(
        tmp_path / "oirl_hashing-64-1234abcd", "oirl/hashing-64", TEXTS[:2], HashingEmbedder().embed(TEXTS[:2])
    )
    damage(shard)
    with pytest.warns(UserWarning, match="discarded 1 unreadable old shard"):
        cached = CachedEmbedder(HashingEmbedder(), tmp_path)
    np.testing.assert_array_equal(cached.embed(TEXTS), HashingEmbedder().embed(TEXTS))
    assert cached.n_embedded == 3 and not list(tmp_path.rglob("shard-*.npz"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"this is not an SQLite database, just text " * 200),
        lambda path: path.write_bytes(path.read_bytes()[:2000]),  # header kept, pages lost
    ],
    ids=["garbage", "truncated"],
)
def test_a_corrupt_database_is_moved_aside_and_rebuilt(tmp_path, damage):
    first = CachedEmbedder(HashingEmbedder(), tmp_path)
    reference = first.embed(TEXTS)
    first.cache.close()
    damage(tmp_path / CACHE_FILE)
    with pytest.warns(UserWarning, match="not a readable SQLite database"):
        rebuilt = CachedEmbedder(HashingEmbedder(), tmp_path)
        np.testing.assert_array_equal(rebuilt.embed(TEXTS), reference)
    assert rebuilt.n_embedded == 3
    assert len(list(tmp_path.glob(f"{CACHE_FILE}.corrupt-*"))) == 1
    clean = CachedEmbedder(HashingEmbedder(), tmp_path)  # healthy again: no warning, nothing to embed
    clean.embed(TEXTS)
    assert clean.n_embedded == 0


def test_a_damaged_vector_is_embedded_again(tmp_path):
    CachedEmbedder(HashingEmbedder(), tmp_path).embed(TEXTS)
    with sqlite3.connect(tmp_path / CACHE_FILE) as conn:
        conn.execute("UPDATE embeddings SET vector = ? WHERE hash = ?", (b"short", bytes.fromhex(text_hash(TEXTS[0]))))
    again = CachedEmbedder(HashingEmbedder(), tmp_path)
    np.testing.assert_array_equal(again.embed(TEXTS), HashingEmbedder().embed(TEXTS))
    assert again.n_embedded == 1
    assert CachedEmbedder(HashingEmbedder(), tmp_path).embed(TEXTS).shape == (4, 64)


def test_a_dead_process_claim_does_not_block(tmp_path):
    cached = CachedEmbedder(HashingEmbedder(), tmp_path)
    dead = f"{socket.gethostname()}/{2**22 + 12345}/gone"  # above the default pid_max
    cache = EmbeddingCache(tmp_path)
    key = cache.model_key("hashing-64", "oirl/hashing-64", 64)
    assert cache.claim(key, [text_hash(TEXTS[0])], 64, dead)[1] == [text_hash(TEXTS[0])]
    started = time.perf_counter()
    cached.embed(TEXTS)
    assert cached.n_embedded == 3 and time.perf_counter() - started < 5


def test_cache_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        cached = CachedEmbedder(HashingEmbedder(), tmp_path / "cache")
        cached.embed(TEXTS)
        for path in (tmp_path / "cache").iterdir():
            assert path.stat().st_mode & 0o777 == 0o664, path
    finally:
        os.umask(old)


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder that counts how often it embeds each text (and takes a little time, like a model)."""

    def __init__(self):
        super().__init__(64)
        self.counts: dict[str, int] = {}

    def embed_batch(self, texts):
        for text in texts:
            self.counts[text] = self.counts.get(text, 0) + 1
        time.sleep(0.002 * len(texts))
        return super().embed_batch(texts)


def _embed_in_process(cache_dir, texts, barrier, results, make_embedder=CountingEmbedder, chunk_size=16):
    try:
        embedder = make_embedder()
        barrier.wait()  # start together
        cached = CachedEmbedder(embedder, cache_dir, chunk_size=chunk_size)
        vectors = cached.embed(texts)
        results.put((os.getpid(), getattr(embedder, "counts", {}), texts, vectors, None))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((os.getpid(), {}, texts, None, repr(exc)))


def _run_processes(cache_dir, text_sets, **kwargs) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(text_sets)), ctx.Queue()
    procs = [
        ctx.Process(target=_embed_in_process, args=(cache_dir, texts, barrier, results), kwargs=kwargs) for texts in text_sets
    ]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return out


def test_eight_processes_share_one_cache(tmp_path):
    pool = [f"question {i}: how many apples does person {i % 37} have after {i} days?" for i in range(600)]
    rng = np.random.default_rng(0)
    # Overlapping sets, in different orders: each text is wanted by several processes.
    text_sets = [[pool[j] for j in sorted(range(i * 50, i * 50 + 250))] for i in range(8)]
    text_sets = [s if i % 2 else list(rng.permutation(s)) for i, s in enumerate(text_sets)]
    results = _run_processes(tmp_path, text_sets)
    assert [error for *_, error in results] == [None] * 8
    total: dict[str, int] = {}
    for _, counts, texts, vectors, _ in results:
        np.testing.assert_allclose(vectors, HashingEmbedder().embed(texts), atol=1e-5)
        for text, n in counts.items():
            total[text] = total.get(text, 0) + n
    wanted = set().union(*text_sets)
    assert set(total) == wanted  # every text embedded by someone ...
    assert max(total.values()) <= 2  # ... and at most twice overall
    assert sum(total.values()) < 1.05 * len(wanted)
    again = CachedEmbedder(HashingEmbedder(), tmp_path)
    again.embed(list(wanted))
    assert again.n_embedded == 0 and len(again) == len(wanted)


def _minilm():
    return get_embedder("minilm")


def test_real_minilm_in_two_processes_matches_a_fresh_embedding(tmp_path, data_dir):
    with (data_dir / "gsm8k" / "train.jsonl").open(encoding="utf-8") as handle:
        questions = [json.loads(line)["question"] for _, line in zip(range(60), handle, strict=False)]
    text_sets = [questions[:45], questions[15:60]]  # 30 texts both want
    results = _run_processes(tmp_path, text_sets, make_embedder=_minilm, chunk_size=8)
    assert [error for *_, error in results] == [None] * 2
    fresh = dict(zip(questions, get_embedder("minilm").embed(questions), strict=True))
    for _, _, texts, vectors, _ in results:
        np.testing.assert_allclose(vectors, np.stack([fresh[t] for t in texts]), atol=1e-5)
    assert len(CachedEmbedder(get_embedder("minilm"), tmp_path)) == 60


def test_real_minilm_embeds_offline_and_captures_meaning(tmp_path):
    embedder = CachedEmbedder(get_embedder("minilm"), tmp_path)
    vectors = embedder.embed(
        ["A farmer has 12 cows and buys 3 more.", "A farmer owns 12 cows and gets 3 more.", "Python is a programming language."]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.8 > vectors[0] @ vectors[2]


def test_memory_cache_is_bounded_and_embeds_each_text_once():
    from oirl.embed.cached import MemoryCachedEmbedder

    cache = MemoryCachedEmbedder(HashingEmbedder(), max_items=2)
    first = cache.embed(TEXTS)
    assert cache.n_embedded == 3 and len(cache._vectors) == 2
    np.testing.assert_array_equal(cache.embed(["The answer is:"]), first[3:])
    assert cache.n_embedded == 3  # still cached (most recent)
    cache.embed(["How many apples are left?"])  # evicted earlier, embedded again
    assert cache.n_embedded == 4


def test_a_warm_cache_needs_no_model_load(tmp_path):
    """The dimension comes from the model folder's config: a run whose texts are all cached never loads torch."""
    embedder = get_embedder("minilm")
    assert embedder.dimension == 384 and embedder._model is None
    vectors = CachedEmbedder(get_embedder("minilm"), tmp_path).embed(["What is 7 times 8?"])  # warms the cache
    warm = get_embedder("minilm")
    np.testing.assert_array_equal(CachedEmbedder(warm, tmp_path).embed(["What is 7 times 8?"]), vectors)
    assert warm._model is None


#: Run in a fresh interpreter: the file lock held by the embedding store, checked from a
#: second lock object that may not wait. With ``fcntl`` hidden (as off POSIX) the old lock
#: silently locked nothing, and the static embedder's module did not import at all.
_LOCK_PROBE = """
import sys
if sys.argv[1] == "no-fcntl":
    sys.modules["fcntl"] = None  # import fcntl now raises ImportError, as on Windows
import filelock
import oirl.embed.static  # imports without fcntl too
from oirl.embed.store import _file_lock
path = sys.argv[2]
with _file_lock(path):
    try:
        filelock.FileLock(path).acquire(timeout=0)
    except filelock.Timeout:
        print("held")
    else:
        print("not held")
with filelock.FileLock(path).acquire(timeout=0):
    print("released")
"""


@pytest.mark.parametrize("platform", ["posix", "no-fcntl"])
def test_the_store_lock_is_a_real_lock_with_or_without_fcntl(platform, tmp_path):
    """Issue 21, item 16: the embedding store's lock is ``filelock``'s, never no lock."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "ignore", "-c", _LOCK_PROBE, platform, str(tmp_path / "x.lock")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["held", "released"]


def test_pyproject_declares_the_versions_the_code_needs():
    """scikit-learn 1.6 brought GroupKFold(shuffle=) and validate_data; filelock is imported."""
    import re

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    dependencies = text[text.index("dependencies = ["):text.index("]", text.index("dependencies = ["))]
    sklearn = re.search(r'"scikit-learn>=(\d+)\.(\d+)', dependencies)
    assert sklearn and (int(sklearn[1]), int(sklearn[2])) >= (1, 6)
    assert re.search(r'"filelock>=', dependencies)
