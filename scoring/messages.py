"""What deployments send each other (beside `PackedEmbeddings`): plain dataclasses, cheap to pickle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from scoring.store.cache import item_key


@dataclass(frozen=True)
class ImageInput:
    """An image a client sent (a query or a document), decoded from its URL and checked by the media policy: the
    image file's bytes and their SHA-256, which keys it in every cache (the same page sent as a data URL or a file
    URL is one entry). `source` is what the client sent, echoed back when a result returns its document."""

    data: bytes = field(repr=False)
    digest: str
    mime: str
    width: int
    height: int
    source: str = field(default="", repr=False, compare=False)


# A query or a document as the deployments see it: text, or one image.
Item = Union[str, ImageInput]


@dataclass(frozen=True)
class QuerySpec:
    """A query as the scorer caches it: its embedding depends on the model, the text (or image: its digest), the
    truncation (of a text) and a request's instruction (a bi-encoder's query prompt)."""

    model: str
    text: Item
    max_tokens: int | None = None
    instruction: str | None = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        instructed = () if self.instruction is None else (self.instruction,)
        object.__setattr__(self, "key", item_key(self.model, self.text, self.max_tokens, *instructed))


@dataclass(frozen=True)
class DocumentSpec:
    """The documents of one request, texts or images: the scorer finds or makes their embeddings."""

    texts: list[Item]
    max_tokens: int | None = None


@dataclass(frozen=True)
class EncodeJob:
    """Documents of one request that missed the document cache, waiting to be batched for the encoders."""

    model: str
    texts: list[Item]
    max_tokens: int | None
    estimated_tokens: int


@dataclass(frozen=True)
class ScoreOutcome:
    scores: np.ndarray  # [B] float32, one per document in input order
    query_tokens: int
    document_tokens: int
    query_cache_hit: bool
    document_cache_hits: int = 0
    order: list[int] | None = None  # a cascade's final order, best first; None: by score
    # long documents chunked: each document's winning window as (start, end) character offsets; None: not chunked
    chunks: list[tuple[int, int] | None] | None = None
