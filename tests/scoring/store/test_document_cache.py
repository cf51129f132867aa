"""The encoder replica's document cache: rows and input tokens of the documents it encoded, for every caller."""
import asyncio

import numpy as np

from scoring.store.document_cache import EncodedDocuments
from scoring.store.embeddings import PackedEmbeddings


def vectors_of(texts: list[str]) -> PackedEmbeddings:
    """What a bi-encoder returns: one vector a text; its input tokens are the text's words + 2 (CLS, SEP here)."""
    rows = np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32).reshape(len(texts), 2)
    return PackedEmbeddings(rows, np.ones(len(texts), np.int32), tokens=np.array([len(t.split()) + 2 for t in texts]))


def test_cached_documents_keep_their_rows_and_tokens():
    asked: list[list[str]] = []

    async def encode(texts):
        asked.append(texts)
        return vectors_of(texts)

    cache = EncodedDocuments("m", 1 << 20, 2, np.dtype(np.float32))
    first = asyncio.run(cache.encode(["a b", "c d e"], None, encode))
    mixed = asyncio.run(cache.encode(["x", "c d e", "a b"], None, encode))  # one miss between two hits
    again = asyncio.run(cache.encode(["a b", "x"], None, encode))  # hits only
    assert asked == [["a b", "c d e"], ["x"]]
    assert first.token_counts.tolist() == [4, 5]
    assert mixed.token_counts.tolist() == [3, 5, 4] and again.token_counts.tolist() == [4, 3]
    want = vectors_of(["x", "c d e", "a b"])
    np.testing.assert_array_equal(mixed.data, want.data)
    assert cache.stats().hits == 4 and cache.stats().misses == 3


def test_an_image_under_another_max_tokens_is_the_same_entry():
    """An image is encoded whole: a request's `max_tokens_per_doc` does not change it, so it does not split it."""
    import hashlib

    from scoring.messages import ImageInput

    asked: list[list] = []

    async def encode(items):
        asked.append(items)
        return vectors_of(["image" if isinstance(i, ImageInput) else i for i in items])

    page = ImageInput(data=b"png", digest=hashlib.sha256(b"png").hexdigest(), mime="image/png", width=1, height=1)
    cache = EncodedDocuments("m", 1 << 20, 2, np.dtype(np.float32))
    asyncio.run(cache.encode([page, "a b"], None, encode))
    asyncio.run(cache.encode([page, "a b"], 4, encode))  # the text is another entry under its truncation
    assert asked == [[page, "a b"], ["a b"]]
    assert (cache.stats().entries, cache.stats().hits) == (3, 1)
