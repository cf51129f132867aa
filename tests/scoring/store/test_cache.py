import hashlib

import numpy as np
import pytest

from scoring.messages import ImageInput, QuerySpec
from scoring.store.cache import ByteBoundedLRU, content_key, item_key


def make(capacity: int) -> ByteBoundedLRU[np.ndarray]:
    return ByteBoundedLRU(capacity, sizeof=lambda a: a.nbytes)


def test_lru_evicts_least_recently_used_within_byte_limit():
    cache = make(3 * 400)
    arrays = {k: np.full(100, i, dtype=np.float32) for i, k in enumerate("abcd")}
    for k in "abc":
        assert cache.put(k, arrays[k])
    assert cache.get("a") is arrays["a"]  # a is now most recent
    cache.put("d", arrays["d"])
    assert "b" not in cache and all(k in cache for k in "acd")
    stats = cache.stats()
    assert stats.bytes == 1200 <= stats.capacity_bytes
    assert (stats.hits, stats.evictions, stats.entries) == (1, 1, 3)


def test_get_many_returns_values_in_order_and_the_missing_positions():
    cache = make(1 << 20)
    a, c = np.zeros(4), np.ones(4)
    cache.put("a", a)
    cache.put("c", c)
    values, missing = cache.get_many(["a", "b", "c", "d"])
    assert values[0] is a and values[2] is c and values[1] is None and values[3] is None and missing == [1, 3]
    assert (cache.stats().hits, cache.stats().misses) == (2, 2)
    assert cache.get_many([]) == ([], [])


def test_value_larger_than_capacity_is_not_stored():
    cache = make(100)
    assert not cache.put("big", np.zeros(1000, dtype=np.float32))
    assert cache.get("big") is None and cache.stats().misses == 1 and cache.stats().bytes == 0


def test_replacing_a_key_keeps_byte_count_exact():
    cache = make(10_000)
    cache.put("k", np.zeros(100, dtype=np.float32))
    cache.put("k", np.zeros(10, dtype=np.float32))
    assert cache.stats().bytes == 40 and len(cache) == 1


def test_byte_limit_holds_under_many_inserts():
    rng = np.random.default_rng(0)
    cache = make(50_000)
    for i in range(2_000):
        cache.put(i, np.zeros(int(rng.integers(1, 2_000)), dtype=np.float32))
        assert cache.stats().bytes <= 50_000


def test_negative_capacity_rejected():
    with pytest.raises(ValueError):
        make(-1)


def test_content_key_is_stable_and_distinguishes_parts():
    assert content_key("m", "q", None) == content_key("m", "q", None)
    assert content_key("m", "q", None) != content_key("m", "q", 8)
    assert content_key("m", "ab", "c") != content_key("m", "a", "bc")
    # every kind of part is told apart from the others, whatever its text looks like
    keys = [content_key("m", "q", part) for part in (None, "None", "null", 8, "8", 8.0, True, 1, [8], {"n": 8})]
    assert len(set(keys)) == len(keys)
    assert content_key("m", {"b": 1, "a": [1, 2]}) == content_key("m", {"a": [1, 2], "b": 1})
    assert content_key("m", "\ud800") != content_key("m", "\ud801")  # lone surrogates from JSON input hash too
    assert len(content_key("x" * 10_000)) == 64


def _image(data: bytes, source: str) -> ImageInput:
    return ImageInput(data=data, digest=hashlib.sha256(data).hexdigest(), mime="image/png", width=1, height=1,
                      source=source)


def test_an_image_is_keyed_by_its_bytes_and_the_model_not_the_text_truncation():
    page, as_file = _image(b"page", "data:image/png;base64"), _image(b"page", "file:///pages/p.png")
    assert item_key("m", page, None) == item_key("m", as_file, 8) == item_key("m", page, 512)
    assert item_key("m", page, None) != item_key("m", _image(b"other page", ""), None)
    assert item_key("m", page, None) != item_key("n", page, None)
    assert item_key("m", page, None) != item_key("m", page.digest, None)  # not the text of its digest
    # a text's truncation changes its embeddings: it keys it
    assert item_key("m", "text", None) != item_key("m", "text", 8)
    assert item_key("m", "text", 8) == content_key("m", "text", 8)
    # a query: the same, with its instruction still part of the key
    assert QuerySpec("m", page, max_tokens=8).key == QuerySpec("m", as_file).key
    assert QuerySpec("m", "q", max_tokens=8).key != QuerySpec("m", "q").key
    assert QuerySpec("m", page, instruction="i").key != QuerySpec("m", page).key
