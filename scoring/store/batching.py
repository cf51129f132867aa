"""Gathering documents of concurrent requests into encoder calls, and spreading those calls out.

The scorer collects the cache misses of concurrent requests (`@serve.batch` with a token budget),
merges those with the same encoding options, cuts them into calls of about `chunk_tokens` tokens so
that every encoder replica gets a share, and hands each request back its own documents in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

import numpy as np

from scoring.messages import EncodeJob, Item
from scoring.store.embeddings import PackedEmbeddings

T = TypeVar("T")
# an image's tokens until its model's encoder has said (ColModernVBert's page: 64 image tokens and its prompt)
DEFAULT_IMAGE_TOKENS = 80


def estimate_tokens(text: Item, max_tokens: int | None, image_tokens: int = DEFAULT_IMAGE_TOKENS) -> int:
    """A cheap token estimate for batching: a text about 4 characters a token, plus special tokens; an image the
    tokens its model gives an image document (`image_tokens`: image tokens and visual prompt, never truncated)."""
    if not isinstance(text, str):
        return image_tokens
    estimate = len(text) // 4 + 2
    return min(estimate, max_tokens) if max_tokens else estimate


@dataclass(frozen=True)
class EncodeCall:
    """One call to an encoder: texts of one (model, max_tokens), and where each came from."""

    model: str
    max_tokens: int | None
    texts: list[Item]
    origins: list[tuple[int, int]]  # (job index, position in that job)


def plan_encode_calls(
    jobs: Sequence[EncodeJob], chunk_tokens: int, image_tokens: Mapping[str, int] | None = None
) -> list[EncodeCall]:
    """`image_tokens`: the tokens of an image document of each model that takes images."""
    image_tokens = image_tokens or {}
    calls: list[EncodeCall] = []
    open_calls: dict[tuple[str, int | None], tuple[EncodeCall, list[int]]] = {}
    for j, job in enumerate(jobs):
        option = (job.model, job.max_tokens)
        for i, text in enumerate(job.texts):
            tokens = estimate_tokens(text, job.max_tokens, image_tokens.get(job.model, DEFAULT_IMAGE_TOKENS))
            current = open_calls.get(option)
            if current is None or (current[1][0] + tokens > chunk_tokens and current[0].texts):
                current = (EncodeCall(job.model, job.max_tokens, [], []), [0])
                open_calls[option] = current
                calls.append(current[0])
            current[0].texts.append(text)
            current[0].origins.append((j, i))
            current[1][0] += tokens
    return calls


def split_rows(packed: PackedEmbeddings) -> list[np.ndarray]:
    """Each text's [L_i, d] rows (views, no copies)."""
    return np.split(packed.data, packed.offsets[1:-1]) if packed.count else []


def scatter_results(
    jobs: Sequence[EncodeJob], calls: Sequence[EncodeCall], results: Sequence[Sequence[T]]
) -> list[list[T]]:
    """Per job, what each of its documents got from the calls (one value a text of each call: its rows, its entry
    in the document store), in the job's order."""
    out: list[list[T]] = [[None] * len(job.texts) for job in jobs]  # type: ignore[list-item]
    for call, values in zip(calls, results):
        for (j, i), value in zip(call.origins, values):
            out[j][i] = value
    return out
