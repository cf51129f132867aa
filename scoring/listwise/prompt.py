"""Listwise reranking (jina-reranker-v3, `JinaForRanking`): a query and a whole list of documents in one prompt.

The model reads one prompt per block of documents: a system turn, "I will provide you with N passages…", each
passage followed by `<|embed_token|>`, then the query followed by `<|rerank_token|>`. The hidden states at those
tokens go through the model's projector (vLLM's `JinaForRanking` pooler returns them, the documents' rows first and
the query's last), and a document's score is the cosine between its row and the query's.

A list longer than one block is split as the model's own `rerank` splits it: the query cut to 512 tokens and each
document to 2,048 (a text that reaches the limit is decoded back from its cut ids), then documents are added to a
block until it holds `block_size` (125) of them or the room left (the context less twice the query's tokens, less
the documents' tokens) is at most the document limit. Each block yields a query row; the final query is their
average weighted by each block's best `(1 + cosine) / 2`, and every document is scored by its cosine with it.

A score depends on the whole list, so nothing per document can be cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from scoring.api.protocol import ScoreRequest
from scoring.api.requests import QueryGroup, score_groups, tightest
from scoring.config.schema import AppConfig
from scoring.errors import ValidationFailed

EMBED_TOKEN = "<|embed_token|>"
RERANK_TOKEN = "<|rerank_token|>"
# The ids vLLM's JinaForRanking pooler looks for (fixed in its code, as in the model's own).
EMBED_TOKEN_ID = 151670
RERANK_TOKEN_ID = 151671

# The model's own defaults (its `rerank`): query and document limits in tokens, documents a block.
DEFAULT_MAX_QUERY_TOKENS = 512
DEFAULT_MAX_DOC_TOKENS = 2048
DEFAULT_BLOCK_SIZE = 125

SYSTEM = (
    "<|im_start|>system\n"
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are "
    "to the query. If the query is a question, how relevant a passage is depends on how well it answers the "
    "question. If not, try to analyze the intent of the query and assess how well each passage satisfies the "
    "intent. If an instruction is provided, you should follow the instruction when determining the ranking."
    "<|im_end|>\n<|im_start|>user\n"
)
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class Tokenizer(Protocol):
    model_max_length: int

    def __call__(self, text, **kwargs): ...

    def decode(self, ids, **kwargs) -> str: ...


def _without_markers(text: str) -> str:
    """A text's own embed or rerank tokens would be read as passages or queries: they are removed, as the model's
    prompt function removes them."""
    return text.replace(EMBED_TOKEN, "").replace(RERANK_TOKEN, "")


def listwise_prompt(query: str, documents: Sequence[str], instruction: str | None = None) -> str:
    """The model's prompt for one block: the task line with the query, an instruction when given, passages numbered
    from 0 in list order, each ended by the embed token, then the query ended by the rerank token."""
    query = _without_markers(query)
    prompt = (
        f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {query}\n"
    )
    if instruction:
        prompt += f"<instruct>\n{_without_markers(instruction)}\n</instruct>\n"
    passages = [f'<passage id="{i}">\n{_without_markers(d)}{EMBED_TOKEN}\n</passage>' for i, d in enumerate(documents)]
    prompt += "\n".join(passages) + "\n" + f"<query>\n{query}{RERANK_TOKEN}\n</query>"
    return SYSTEM + prompt + ASSISTANT


def plan_blocks(
    document_tokens: Sequence[int], query_tokens: int, max_length: int, max_doc_tokens: int, block_size: int
) -> list[list[int]]:
    """The documents (by position) of each block, by the model's rule: a block closes once it holds `block_size`
    documents or once the room left, `max_length - 2 * query_tokens` less its documents' tokens, is at most
    `max_doc_tokens`."""
    blocks: list[list[int]] = []
    block: list[int] = []
    room = max_length - 2 * query_tokens
    for i, length in enumerate(document_tokens):
        block.append(i)
        room -= length
        if len(block) >= block_size or room <= max_doc_tokens:
            blocks.append(block)
            block, room = [], max_length - 2 * query_tokens
    if block:
        blocks.append(block)
    return blocks


@dataclass(frozen=True)
class Block:
    """One engine request: its prompt's token ids and the positions (in the request's list) of its documents."""

    token_ids: list[int]
    positions: list[int]


class ListwisePrompts:
    """Cuts the query and documents as the model does, splits the list into blocks and tokenizes each block's
    prompt with the model's tokenizer.

    `max_length`: the context a block's prompt must fit (the engine's). A block whose prompt would not fit (the
    model's rule leaves room for the query twice and the documents, not for the prompt's own text) is halved until
    it does; the limits are cut at start so that one document always fits (`fitted_limits`)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        max_query_tokens: int,
        max_doc_tokens: int,
        block_size: int,
        instruction: str | None = None,
    ):
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._max_query = max_query_tokens
        self._max_doc = max_doc_tokens
        self._block_size = block_size
        self.instruction = instruction

    def blocks(
        self,
        query: str,
        documents: Sequence[str],
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
    ) -> list[Block]:
        """`instruction`: this request's, else the model's configured one."""
        max_doc = tightest(max_tokens_per_doc, self._max_doc)
        query, query_tokens = self._cut(query, tightest(max_tokens_per_query, self._max_query))
        cut = [self._cut(d, max_doc) for d in documents]
        texts = [text for text, _ in cut]
        plan = plan_blocks([n for _, n in cut], query_tokens, self._max_length, max_doc, self._block_size)
        instruction = instruction if instruction is not None else self.instruction
        return [b for positions in plan for b in self._fitted(query, texts, positions, instruction)]

    def _fitted(self, query: str, texts: list[str], positions: list[int], instruction: str | None) -> list[Block]:
        ids = self._encode(listwise_prompt(query, [texts[i] for i in positions], instruction))
        if len(ids) <= self._max_length:
            return [Block(ids, positions)]
        if len(positions) == 1:
            # only a request's own instruction can get here: the limits were fitted to the configured one
            raise ValidationFailed(
                f"documents[{positions[0]}] with the query and instruction takes {len(ids)} tokens; the model reads "
                f"{self._max_length}: shorten the instruction or lower max_tokens_per_doc"
            )
        half = len(positions) // 2
        return self._fitted(query, texts, positions[:half], instruction) + self._fitted(
            query, texts, positions[half:], instruction
        )

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text)["input_ids"])

    def _cut(self, text: str, limit: int) -> tuple[str, int]:
        """The text as the model cuts it to `limit` tokens (decoded from its cut ids once it reaches the limit),
        and its token count."""
        ids = self._encode(text)
        if len(ids) >= limit:
            ids = ids[:limit]
            text = self._tokenizer.decode(ids)
        return text, len(ids)


def fitted_limits(
    tokenizer: Tokenizer, max_length: int, max_query_tokens: int, max_doc_tokens: int, instruction: str | None
) -> tuple[int, int]:
    """The query and document limits cut so that a block of one document at its limit, with the query at its
    limit (the prompt holds the query twice), fits `max_length`; the document limit gives way first."""
    overhead = len(tokenizer(listwise_prompt("", [""], instruction))["input_ids"])
    room = max_length - overhead
    max_query = min(max_query_tokens, max(1, (room - 1) // 3))
    max_doc = min(max_doc_tokens, room - 2 * max_query)
    if max_doc < 1:
        raise ValueError(
            f"a listwise prompt takes {overhead} tokens before any text: max_model_len ({max_length}) leaves no room "
            "for a query and a document"
        )
    return max_query, max_doc


def merge_blocks(query_rows: Sequence[np.ndarray], document_rows: Sequence[np.ndarray]) -> np.ndarray:
    """Scores of every document (the blocks' documents in order) from each block's projected rows, by the model's
    rule: one block's scores are its cosines; over several, the query is the blocks' query rows averaged with
    weights `max((1 + cosine) / 2)` of each block."""
    queries = np.stack([np.asarray(q, dtype=np.float64) for q in query_rows])
    documents = [np.asarray(d, dtype=np.float64) for d in document_rows]
    weights = np.array([((1.0 + _cosines(q, d)) / 2.0).max() for q, d in zip(queries, documents)])
    query = np.average(queries, axis=0, weights=weights) if weights.sum() > 0 else queries.mean(axis=0)
    return _cosines(query, np.concatenate(documents))


def _cosines(query: np.ndarray, documents: np.ndarray) -> np.ndarray:
    return documents @ query / (np.linalg.norm(documents, axis=1) * np.linalg.norm(query))


def split_engine_rows(rows: np.ndarray, documents: int) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's pooler output for one block ([documents + 1, dim]: the documents' rows, then the query's) split into
    the query row and the document rows; anything else means the prompt's markers were not where they belong."""
    if rows.shape[0] != documents + 1:
        raise RuntimeError(f"the engine returned {rows.shape[0]} rows for a block of {documents} documents")
    return rows[-1], rows[:-1]


def listwise_score_groups(request: ScoreRequest, config: AppConfig) -> tuple[list[QueryGroup], int]:
    """vLLM's /score pairing for a listwise model: one query (1:1, 1:N) is one list; N:N queries make one list of
    one document a pair, even where two pairs share a query (their scores would otherwise depend on each other)."""
    groups, count = score_groups(request, config)
    if isinstance(request.queries, str) or len(request.queries) == 1:
        return groups, count
    pairs = [QueryGroup(g.query, [d], [p]) for g in groups for d, p in zip(g.documents, g.positions)]
    return sorted(pairs, key=lambda g: g.positions[0]), count
