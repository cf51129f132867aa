"""A byte-bounded LRU cache, used for query (and document) token embeddings."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Protocol, Sequence, TypeVar, runtime_checkable

V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    capacity_bytes: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ByteBoundedLRU(Generic[V]):
    """Least-recently-used mapping whose values together never exceed `capacity_bytes`.

    `sizeof(value)` gives a value's size; a value larger than the whole capacity is not stored.
    """

    def __init__(self, capacity_bytes: int, sizeof: Callable[[V], int]):
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self._capacity = capacity_bytes
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def get_many(self, keys: Sequence[Hashable]) -> tuple[list[V | None], list[int]]:
        """The value of each key (None where absent) and the positions of the absent ones, counted as `get` does."""
        values = [self.get(key) for key in keys]
        return values, [i for i, value in enumerate(values) if value is None]

    def put(self, key: Hashable, value: V) -> bool:
        """Store `value`; returns False when it is larger than the whole cache."""
        size = int(self._sizeof(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self._capacity:
                return False
            while self._bytes + size > self._capacity and self._items:
                _, (_, evicted_size) = self._items.popitem(last=False)
                self._bytes -= evicted_size
                self._evictions += 1
            self._items[key] = (value, size)
            self._bytes += size
            return True

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._items),
                bytes=self._bytes,
                capacity_bytes=self._capacity,
            )


@runtime_checkable
class Digested(Protocol):
    """Content known by its hash (an image: the SHA-256 hex of its file's bytes)."""

    digest: str


def content_key(*parts: Any) -> str:
    """A stable key for cache lookups and routing: sha256 over an unambiguous encoding of `parts`: a string as its
    UTF-8 byte count and bytes, None and integers by tag, an image (`scoring.messages.ImageInput`) by its `digest`
    alone (the same file sent as a data URL or a file URL is one entry), anything else as JSON (which never holds a
    NUL) and a NUL. Texts are hashed as they are: JSON-escaping them first cost 15 ms per 1,000 documents of ~1 KB,
    now 3."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(b"s%d:" % len(data))
            digest.update(data)
        elif part is None:
            digest.update(b"n")
        elif type(part) is int:
            digest.update(b"i%d\x00" % part)
        elif isinstance(part, Digested):
            digest.update(b"d%s\x00" % part.digest.encode("ascii"))
        else:
            digest.update(b"j" + json.dumps(part, separators=(",", ":"), sort_keys=True).encode() + b"\x00")
    return digest.hexdigest()


def item_key(model: str, item: Any, max_tokens: int | None, *options: Any) -> str:
    """The cache key of a query's or a document's embeddings: the model, the item and the options that change them.
    A text is truncated to `max_tokens`, so they key it too; an image is encoded whole whatever `max_tokens` says,
    so its key is its digest (its decoded bytes) and the model alone: the same page under two `max_tokens` values,
    sent as a data URL or a file URL, is one entry."""
    if isinstance(item, Digested):
        return content_key(model, item, *options)
    return content_key(model, item, max_tokens, *options)
