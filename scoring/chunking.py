"""Long documents scored whole: token windows with an overlap, a document scored as its best window.

A document longer than the model's document length is split on the model's own tokenizer (a fast tokenizer's
offset mapping) into windows of whole tokens that overlap by `overlap` tokens. A window is the document's text from
its first token's start to its last token's end, as character offsets into the original string (any script, any
byte width), so its span can be cited. The windows go to the backends as ordinary documents (cached, batched and
counted in usage like any document), and each document keeps its best window's score and span.

A document that fits is one window: the whole text, unchanged, so `chunk` and `truncate` score it alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

import numpy as np

from scoring.api.requests import QueryGroup, tightest
from scoring.errors import PayloadTooLarge
from scoring.messages import ScoreOutcome

Offsets = Sequence[tuple[int, int]]


class OffsetTokenizer(Protocol):
    is_fast: bool

    def __call__(self, text: Any, **kwargs): ...


@dataclass(frozen=True)
class Span:
    """A window's place in its document: characters `start` to `end` (end exclusive)."""

    start: int
    end: int


@dataclass(frozen=True)
class WindowBudget:
    """What a model's deployment tells the ingress once, to cut windows the model takes whole.

    `document_tokens`: tokens of document text one model input holds beside no query (special tokens, markers and
    prompt text taken out). Pair and prompt models (`query_shares_input`) hold the query in the same input: its
    tokens (cut to `query_limit`) come out of the room, and so does a request's instruction where it is part of the
    prompt (in place of the configured one). `document_overhead`: what a request's `max_tokens_per_doc`
    counts beside the text (a late-interaction document's special tokens and marker), so the same limit caps a
    window as it caps a document."""

    tokenizer: str
    document_tokens: int
    document_overhead: int = 0
    document_limit: int | None = None  # the model's own cap on a document's tokens, whatever the query
    query_shares_input: bool = False
    query_limit: int | None = None
    # the configured instruction's tokens, counted in the room already: a request's own instruction takes their place
    instruction_tokens: int = 0


def window_ranges(tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token index ranges [start, end) of the windows over `tokens` tokens: `size` long, each starting
    `size - overlap` after the last; the last one ends at the last token. An overlap of `size` or more is cut to
    half the window, so windows always move forward."""
    if size < 1:
        raise ValueError(f"a window holds at least one token, not {size}")
    stride = size - effective_overlap(size, overlap)
    ranges = []
    start = 0
    while True:
        end = min(start + size, tokens)
        ranges.append((start, end))
        if end >= tokens:
            return ranges
        start += stride


def effective_overlap(size: int, overlap: int) -> int:
    """The overlap windows of `size` tokens get: as asked, or half the window when that is not less than it."""
    return overlap if overlap < size else size // 2


def split_spans(text: str, offsets: Offsets, size: int, overlap: int) -> list[Span]:
    """The character spans of `text`'s windows, from its tokens' `offsets` (no special tokens). A text of at most
    `size` tokens is one span, the whole text."""
    if len(offsets) <= size:
        return [Span(0, len(text))]
    spans = []
    for first, last in window_ranges(len(offsets), size, overlap):
        # a token's offsets may be empty (an added token, a normaliser's insertion): the widest end wins
        end = max(offsets[i][1] for i in range(first, last))
        spans.append(Span(offsets[first][0], end))
    return spans


@dataclass(frozen=True)
class WindowedGroup:
    """A group's documents as windows: `group` holds every window as a document, `owners` the index (within the
    original group) of each window's document and `spans` its place there."""

    group: QueryGroup
    owners: list[int]
    spans: list[Span | None]  # None: an image, scored whole
    documents: int

    def best(self, outcome: ScoreOutcome) -> ScoreOutcome:
        """One score a document, its best window's; the winning spans in `chunks`."""
        scores = np.asarray(outcome.scores, dtype=np.float64)
        owners = np.asarray(self.owners)
        best_scores = np.full(self.documents, -np.inf)
        winners = np.zeros(self.documents, dtype=np.int64)
        # first window wins ties: windows come in document order, so a later window must beat the best so far
        for window, (owner, score) in enumerate(zip(owners.tolist(), scores.tolist())):
            if score > best_scores[owner]:
                best_scores[owner] = score
                winners[owner] = window
        return replace(
            outcome,
            scores=best_scores,
            chunks=[None if self.spans[w] is None else (self.spans[w].start, self.spans[w].end) for w in winners.tolist()],
        )


class Chunker:
    """Cuts the documents of a model's requests into windows, with the model's tokenizer and window budget."""

    def __init__(self, tokenizer: OffsetTokenizer, budget: WindowBudget):
        if not tokenizer.is_fast:
            raise ValueError(f"{budget.tokenizer}: chunking needs a fast tokenizer (tokenizer.json) for its offsets")
        self._tokenizer = tokenizer
        self.budget = budget

    def window_size(
        self,
        query: str,
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
    ) -> int:
        """Tokens of document text a window of this query's request holds."""
        budget = self.budget
        room = budget.document_tokens
        if budget.query_shares_input and isinstance(query, str):  # an image query's tokens are not text's
            query_tokens = self._count(query)
            room -= min(query_tokens, tightest(max_tokens_per_query, budget.query_limit) or query_tokens)
            if instruction is not None:
                room -= self._count(instruction) - budget.instruction_tokens
        room = tightest(room, budget.document_limit)
        if max_tokens_per_doc is not None:
            room = min(room, max_tokens_per_doc - budget.document_overhead)
        return max(room, 1)

    def _count(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def split(
        self, group: QueryGroup, size: int, overlap: int, max_chunks: int, field: str = "documents"
    ) -> WindowedGroup:
        """Every document of `group` as its windows; a document of more than `max_chunks` windows is a 413 naming
        it (by its index in the request)."""
        texts = [d for d in group.documents if isinstance(d, str)]
        # verbose=False: a long document is longer than the model's limit by design (it is cut into windows next),
        # which transformers would log as a warning
        encoded = (self._tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
                   if texts else None)
        offsets_of = iter(encoded["offset_mapping"] if encoded else ())
        documents, positions, owners, spans = [], [], [], []
        for i, text in enumerate(group.documents):
            if not isinstance(text, str):  # an image is one input, whole: no window, no span
                documents.append(text)
                positions.append(group.positions[i])
                owners.append(i)
                spans.append(None)
                continue
            offsets = next(offsets_of)
            windows = split_spans(text, offsets, size, overlap)
            if len(windows) > max_chunks:
                raise PayloadTooLarge(
                    f"{field}[{group.positions[i]}] is {len(offsets)} tokens long: {len(windows)} windows of {size} "
                    f"tokens overlapping by {effective_overlap(size, overlap)}, more than "
                    f"max_chunks_per_doc ({max_chunks})"
                )
            for span in windows:
                documents.append(text if len(windows) == 1 else text[span.start : span.end])
                positions.append(group.positions[i])
                owners.append(i)
                spans.append(span)
        return WindowedGroup(
            group=QueryGroup(query=group.query, documents=documents, positions=positions),
            owners=owners,
            spans=spans,
            documents=len(group.documents),
        )
