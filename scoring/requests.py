"""Request checks and response assembly shared by every route (no Ray, no engines).

The ingress calls these to turn a wire request into work (query → documents groups) and the
scores back into a wire response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scoring.config import AppConfig, ModelConfig
from scoring.errors import ModelNotFound, PayloadTooLarge, ValidationFailed
from scoring.protocol import ChunkSpan, Document, DocumentText, RerankResult, ScoreRequest
from scoring.ranking import rank
from scoring.records import object_text, record_text


@dataclass(frozen=True)
class QueryGroup:
    """One query and the documents it is scored against; `positions` place the scores in the response."""

    query: str
    documents: list[str]
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


def document_texts(documents: Sequence[Document], rank_fields: Sequence[str] | None = None) -> list[str]:
    """The text each document is scored by: a string, an object's `text`, or a record's `rank_fields`."""
    if rank_fields is not None:
        return [record_text(d, rank_fields, f"documents[{i}]") for i, d in enumerate(documents)]
    return [object_text(d, f"documents[{i}]") for i, d in enumerate(documents)]


def check_text(text: str, field: str) -> None:
    """Text must be encodable: JSON escapes can smuggle in lone surrogates, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"{field} contains invalid unicode (a lone surrogate)") from None


def check_query(query: str, config: AppConfig, field: str = "query") -> None:
    if not query.strip():
        raise ValidationFailed(f"{field} must not be empty")
    if len(query) > config.limits.max_query_chars:
        raise PayloadTooLarge(
            f"{field} has {len(query)} characters; the limit is {config.limits.max_query_chars}"
        )
    check_text(query, field)


def check_documents(documents: Sequence[str], config: AppConfig) -> None:
    limits = config.limits
    if not documents:
        raise ValidationFailed("documents must not be empty")
    if len(documents) > limits.max_documents:
        raise PayloadTooLarge(
            f"{len(documents)} documents in one request; the limit is {limits.max_documents}"
        )
    for i, doc in enumerate(documents):
        if len(doc) > limits.max_document_chars:
            raise PayloadTooLarge(
                f"documents[{i}] has {len(doc)} characters; the limit is {limits.max_document_chars}"
            )
        check_text(doc, f"documents[{i}]")


def rerank_group(
    query: str, documents: Sequence[Document], config: AppConfig, rank_fields: Sequence[str] | None = None
) -> QueryGroup:
    texts = document_texts(documents, rank_fields)
    check_query(query, config)
    check_documents(texts, config)
    return QueryGroup(query=query, documents=texts, positions=list(range(len(texts))))


def score_groups(request: ScoreRequest, config: AppConfig) -> tuple[list[QueryGroup], int]:
    """vLLM's /score pairing: 1:1, 1:N (one query) or N:N (pairwise). Returns the groups and pair count."""
    queries = [request.queries] if isinstance(request.queries, str) else list(request.queries)
    documents = (
        [request.documents]
        if isinstance(request.documents, str) and request.rank_fields is None
        else document_texts([request.documents] if isinstance(request.documents, str) else request.documents,
                            request.rank_fields)
    )
    if not queries:
        raise ValidationFailed("queries must not be empty")
    if len(queries) == 1:
        queries = queries * len(documents)
    elif len(queries) != len(documents):
        raise ValidationFailed(
            f"queries ({len(queries)}) and documents ({len(documents)}) must be 1:N or of equal length"
        )
    check_documents(documents, config)
    groups: dict[str, QueryGroup] = {}
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
    documents: Sequence[str],
    top_n: int | None,
    return_documents: bool,
    order: Sequence[int] | None = None,
    chunks: Sequence[tuple[int, int]] | None = None,
    records: Sequence[dict] | None = None,
) -> list[RerankResult]:
    """Results best first: by score, or in `order` when a cascade decided it. `chunks`: each document's best
    window (long documents chunked); `records`: the objects to echo in place of the text (with rank_fields)."""
    order = rank(scores, top_n) if order is None else list(order)[: top_n or None]
    return [
        RerankResult(
            index=i,
            relevance_score=float(scores[i]),
            document=(records[i] if records is not None else DocumentText(text=documents[i]))
            if return_documents
            else None,
            chunk=ChunkSpan(start=chunks[i][0], end=chunks[i][1]) if chunks is not None else None,
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
