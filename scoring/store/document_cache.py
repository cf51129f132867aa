"""An encoder replica's cache of the document embeddings it made (late-interaction and bi-encoder replicas alike).

Every scorer replica calling the encoder shares it, so a document one scorer replica sent before skips the model
when another one asks for it.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import numpy as np

from scoring.store.batching import split_rows
from scoring.store.cache import ByteBoundedLRU, CacheStats, item_key
from scoring.store.embeddings import PackedEmbeddings

Encode = Callable[[list[str]], Awaitable[PackedEmbeddings]]


class EncodedDocuments:
    def __init__(
        self,
        model: str,
        capacity_bytes: int,
        dim: int,
        dtype: np.dtype,
        on_lookup: Callable[[int, int], None] = lambda hits, misses: None,
    ):
        self._model = model
        self._dim = dim
        self._dtype = dtype
        self._on_lookup = on_lookup
        # a document's rows and its input tokens (what usage counts; its rows, but for a bi-encoder's vector)
        self._cache: ByteBoundedLRU[tuple[np.ndarray, int]] = ByteBoundedLRU(capacity_bytes,
                                                                             sizeof=lambda e: e[0].nbytes)

    def stats(self) -> CacheStats:
        return self._cache.stats()

    async def encode(self, texts: list[str], max_tokens: int | None, encode: Encode) -> PackedEmbeddings:
        """The embeddings of `texts` (truncated to `max_tokens`), packed in order: cached ones from the cache, the
        rest from `encode(missing texts)`."""
        if not self._cache.capacity_bytes:
            return await encode(texts)
        keys = [item_key(self._model, text, max_tokens) for text in texts]
        entries, missing = self._cache.get_many(keys)
        self._on_lookup(len(entries) - len(missing), len(missing))
        if missing:
            fresh = await encode([texts[i] for i in missing])
            for i, embedding, tokens in zip(missing, split_rows(fresh), fresh.token_counts.tolist()):
                entries[i] = (embedding.copy(), tokens)  # a view would keep the whole call's buffer alive
                self._cache.put(keys[i], entries[i])
            if len(missing) == len(texts):
                return fresh
        return PackedEmbeddings.pack([e[0] for e in entries], self._dim, self._dtype,
                                     tokens=np.fromiter((e[1] for e in entries), np.int32, count=len(entries)))
