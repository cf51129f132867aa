"""Request checks and response assembly shared by every route (no Ray, no engines).

The ingress calls these to turn a wire request into work (query → documents groups) and the
scores back into a wire response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from scoring.config.schema import AppConfig, ModelConfig
from scoring.errors import ModelNotFound, PayloadTooLarge, ValidationFailed
from scoring.messages import Item
from scoring.api.protocol import (
    ChunkSpan,
    ContentObject,
    Document,
    DocumentObject,
    DocumentText,
    EchoedPart,
    ImageUrlPart,
    RerankResult,
    ScoreRequest,
    TextPart,
)
from scoring.api.ranking import rank
from scoring.api.records import object_text, record_text


@dataclass(frozen=True)
class ImageRef:
    """An image a request names, not loaded yet: the ingress checks the request's text and shape first, then loads
    these through the media policy (scoring/api/media.py) into `ImageInput`s. `field` names it in errors."""

    url: str
    field: str = field(compare=False)


# A query or document between parsing and loading: text, a loaded image, or an image still to load.
RequestItem = Union[Item, ImageRef]


@dataclass(frozen=True)
class QueryGroup:
    """One query and the documents it is scored against; `positions` place the scores in the response. The
    deployments get Items (texts and `ImageInput`s), never an `ImageRef`."""

    query: RequestItem
    documents: list[RequestItem]
    positions: list[int]


def tightest(*limits: int | None) -> int | None:
    """The smallest of the token limits that are set (request, model config, checkpoint); None when none is."""
    present = [limit for limit in limits if limit is not None]
    return min(present) if present else None


def resolve_model(config: AppConfig, name: str | None) -> ModelConfig:
    if name is None:
        return config.models[0]
    model = config.model_by_name(name)
    if model is None:
        served = ", ".join(m.name for m in config.models)
        raise ModelNotFound(f"model {name!r} is not served here; available: {served}")
    return model


def request_item(
    value: str | DocumentObject | ContentObject, field: str, rank_fields: Sequence[str] | None = None
) -> str | ImageRef:
    """A wire query or document as text or an image to load. A content object is text parts only (joined by a
    newline, as vLLM joins them) or one `image_url` part alone: the ColPali-family processors take an image document
    as one image with their own prompt, so text beside it (or a second image) has nowhere to go. With `rank_fields`
    (documents only) every document is a record, scored by those fields."""
    if rank_fields is not None:
        if isinstance(value, ContentObject):
            raise ValidationFailed(f"{field} is a content object; with rank_fields every document is an object of "
                                   "string fields")
        return record_text(value, rank_fields, field)
    if not isinstance(value, ContentObject):
        return object_text(value, field)
    images = [part for part in value.content if isinstance(part, ImageUrlPart)]
    if not images:
        return "\n".join(part.text for part in value.content)
    if len(value.content) > 1:
        raise ValidationFailed(
            f"{field} has {len(images)} image_url and {len(value.content) - len(images)} text parts: an item is text "
            "parts only, or one image_url part alone"
        )
    return ImageRef(url=images[0].image_url.url, field=field)


def document_items(
    documents: Sequence[Document | ContentObject], rank_fields: Sequence[str] | None = None
) -> list[str | ImageRef]:
    return [request_item(d, f"documents[{i}]", rank_fields) for i, d in enumerate(documents)]


def echo(document: str | DocumentObject | ContentObject, as_record: bool = False) -> DocumentText | dict:
    """A result's document as the client sent it: a record (with rank_fields) as its object, a content object as
    its parts (vLLM's `multi_modal`), else its text."""
    if as_record and isinstance(document, DocumentObject):
        return document.fields()
    if isinstance(document, str):
        return DocumentText(text=document)
    if isinstance(document, DocumentObject):
        return DocumentText(text=document.text)
    return DocumentText(
        multi_modal=[
            EchoedPart(type="text", text=part.text)
            if isinstance(part, TextPart)
            else EchoedPart(type="image_url", image_url={"url": part.image_url.url})
            for part in document.content
        ]
    )


def check_text(text: str, field: str) -> None:
    """Text must be encodable: JSON escapes can smuggle in lone surrogates, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"{field} contains invalid unicode (a lone surrogate)") from None


def check_query(query: RequestItem, config: AppConfig, field: str = "query") -> None:
    if not isinstance(query, str):
        return
    if not query.strip():
        raise ValidationFailed(f"{field} must not be empty")
    if len(query) > config.limits.max_query_chars:
        raise PayloadTooLarge(
            f"{field} has {len(query)} characters; the limit is {config.limits.max_query_chars}"
        )
    check_text(query, field)


def check_documents(documents: Sequence[RequestItem], config: AppConfig) -> None:
    limits = config.limits
    if not documents:
        raise ValidationFailed("documents must not be empty")
    if len(documents) > limits.max_documents:
        raise PayloadTooLarge(
            f"{len(documents)} documents in one request; the limit is {limits.max_documents}"
        )
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            continue
        if len(doc) > limits.max_document_chars:
            raise PayloadTooLarge(
                f"documents[{i}] has {len(doc)} characters; the limit is {limits.max_document_chars} "
                "(limits.max_document_chars)"
            )
        check_text(doc, f"documents[{i}]")


def rerank_group(
    query: str | DocumentObject | ContentObject,
    documents: Sequence[Document | ContentObject],
    config: AppConfig,
    rank_fields: Sequence[str] | None = None,
) -> QueryGroup:
    query = request_item(query, "query")
    texts = document_items(documents, rank_fields)
    check_query(query, config)
    check_documents(texts, config)
    return QueryGroup(query=query, documents=texts, positions=list(range(len(texts))))


def score_groups(request: ScoreRequest, config: AppConfig) -> tuple[list[QueryGroup], int]:
    """vLLM's /score pairing: 1:1, 1:N (one query) or N:N (pairwise). Returns the groups and pair count."""
    queries = [request_item(q, f"queries[{i}]") for i, q in enumerate(request.queries)]
    documents = document_items(request.documents, request.rank_fields)
    if not queries:
        raise ValidationFailed("queries must not be empty")
    if len(queries) == 1:
        queries = queries * len(documents)
    elif len(queries) != len(documents):
        raise ValidationFailed(
            f"queries ({len(queries)}) and documents ({len(documents)}) must be 1:N or of equal length"
        )
    check_documents(documents, config)
    groups: dict[RequestItem, QueryGroup] = {}
    for position, (query, document) in enumerate(zip(queries, documents)):
        group = groups.get(query)
        if group is None:
            check_query(query, config, field="queries")
            group = groups[query] = QueryGroup(query=query, documents=[], positions=[])
        group.documents.append(document)
        group.positions.append(position)
    return list(groups.values()), len(documents)


def place_scores(groups: Sequence[QueryGroup], group_scores: Sequence[np.ndarray], count: int) -> np.ndarray:
    """Scatter each group's scores back to the positions of its pairs in the request."""
    out = np.empty(count, dtype=np.float64)
    for group, scores in zip(groups, group_scores):
        out[group.positions] = scores
    return out


def rerank_results(
    scores: np.ndarray,
    documents: Sequence[str | DocumentObject | ContentObject],
    top_n: int | None,
    return_documents: bool,
    order: Sequence[int] | None = None,
    chunks: Sequence[tuple[int, int] | None] | None = None,
    as_records: bool = False,
) -> list[RerankResult]:
    """Results best first: by score, or in `order` when a cascade decided it; `documents` as the request gave them
    (records as their objects when `as_records`). `chunks`: each document's best window (long documents chunked;
    None for a document not cut, an image)."""
    order = rank(scores, top_n) if order is None else list(order)[: top_n or None]
    return [
        RerankResult(
            index=i,
            relevance_score=float(scores[i]),
            document=echo(documents[i], as_records) if return_documents else None,
            chunk=ChunkSpan(start=chunks[i][0], end=chunks[i][1]) if chunks is not None and chunks[i] else None,
        )
        for i in order
    ]


def place_chunks(
    groups: Sequence[QueryGroup], group_chunks: Sequence[Sequence[tuple[int, int]] | None], count: int
) -> list[tuple[int, int] | None]:
    """Scatter each group's winning windows back to the positions of its pairs (None where not chunked)."""
    out: list[tuple[int, int] | None] = [None] * count
    for group, chunks in zip(groups, group_chunks):
        for position, chunk in zip(group.positions, chunks or ()):
            out[position] = chunk
    return out
