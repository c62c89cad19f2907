import numpy as np
import pytest

from oirl.embed import CachedEmbedder, EmbeddingCache, HashingEmbedder, get_embedder

TEXTS = ["How many apples are left?", "Let's think step by step: ", "How many apples are left?", "The answer is:"]


def test_second_run_embeds_nothing(tmp_path):
    first = CachedEmbedder(HashingEmbedder(), tmp_path)
    vectors = first.embed(TEXTS)
    assert first.n_embedded == 3  # the repeated text is embedded once
    second = CachedEmbedder(HashingEmbedder(), tmp_path)  # a new process, same disk cache
    again = second.embed(TEXTS + ["The answer is:"])
    assert second.n_embedded == 0
    np.testing.assert_array_equal(again[:4], vectors)


def test_cache_is_keyed_by_model(tmp_path):
    CachedEmbedder(HashingEmbedder(64), tmp_path).embed(TEXTS)
    other = CachedEmbedder(HashingEmbedder(32), tmp_path)
    assert other.embed(TEXTS).shape == (4, 32) and other.n_embedded == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:100]),  # truncated
        lambda path: path.write_bytes(b"not a zip file at all"),
        lambda path: np.savez(path.open("wb"), hashes=np.array(["x"]), vectors=np.zeros((1, 64), np.float32),
                              model_id=np.array("oirl/hashing-64"), checksum=np.array("bad")),
        lambda path: np.savez(path.open("wb"), hashes=np.array(["x"]), vectors=np.zeros((1, 64), np.float32),
                              model_id=np.array("someone/else"), checksum=np.array("bad")),
    ],
)
def test_a_corrupt_shard_is_detected_and_rebuilt(tmp_path, damage):
    reference = CachedEmbedder(HashingEmbedder(), tmp_path).embed(TEXTS)
    [shard] = list(tmp_path.rglob("shard-*.npz"))
    damage(shard)
    with pytest.warns(UserWarning, match="discarded and will be rebuilt"):
        rebuilt = CachedEmbedder(HashingEmbedder(), tmp_path)
    np.testing.assert_array_equal(rebuilt.embed(TEXTS), reference)
    assert rebuilt.n_embedded == 3
    assert CachedEmbedder(HashingEmbedder(), tmp_path).embed(TEXTS).shape == (4, 64)  # clean again


def test_many_shards_are_merged(tmp_path):
    cache = CachedEmbedder(HashingEmbedder(), tmp_path)
    for i in range(20):
        cache.embed([f"text number {i}"])
    assert len(list(tmp_path.rglob("shard-*.npz"))) <= 16
    assert len(EmbeddingCache(tmp_path, "oirl/hashing-64", 64)) == 20


def test_real_minilm_embeds_offline_and_captures_meaning(tmp_path):
    embedder = CachedEmbedder(get_embedder("minilm"), tmp_path)
    vectors = embedder.embed(["A farmer has 12 cows and buys 3 more.", "A farmer owns 12 cows and gets 3 more.", "Python is a programming language."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.8 > vectors[0] @ vectors[2]


def test_memory_cache_is_bounded_and_embeds_each_text_once():
    from oirl.embed import MemoryCachedEmbedder

    cache = MemoryCachedEmbedder(HashingEmbedder(), max_items=2)
    first = cache.embed(TEXTS)
    assert cache.n_embedded == 3 and len(cache._vectors) == 2
    np.testing.assert_array_equal(cache.embed(["The answer is:"]), first[3:])
    assert cache.n_embedded == 3  # still cached (most recent)
    cache.embed(["How many apples are left?"])  # evicted earlier, embedded again
    assert cache.n_embedded == 4
