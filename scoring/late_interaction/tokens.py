"""Turning query and document text into the token ids a late-interaction encoder sees, as PyLate and the Stanford
ColBERT library do for the checkpoints they train.

- A marker (`[unused0]` / `[unused1]`, `[Q] ` / `[D] `) is one token inserted right after `[CLS]`, not text.
- Lengths count every token: a text is tokenized (with its special tokens) to one token less than the length,
  then the marker goes in.
- Query expansion pads a query with `[MASK]` (a decoder's end-of-sequence token where there is no mask token) to
  the query length, after its `[SEP]`; `attended` says how many
  leading tokens the other tokens attend to (all of them unless the checkpoint says not to attend to the
  expansion).
- The skiplist (punctuation by default) drops tokens' embeddings from documents after the forward pass, which
  still sees them.
The encoder sends these exact ids to the model, and the token counts reported as usage are the ones scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from scoring.chunking import WindowBudget
from scoring.late_interaction.formats import Encoding

MIN_TOKENS = 2  # [CLS] and [SEP]


class HFTokenizer(Protocol):
    mask_token_id: int | None
    unk_token: str | None

    def __call__(self, text: list[str], **kwargs): ...

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...

    def get_vocab(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class QueryTokens:
    ids: list[int]
    attended: int  # the first `attended` tokens are attended to; the rest (expansion [MASK]s) are not


def _cap(*limits: int | None) -> int | None:
    present = [limit for limit in limits if limit is not None]
    return min(present) if present else None


class LateInteractionTokenizer:
    def __init__(self, tokenizer: HFTokenizer, encoding: Encoding, max_model_len: int):
        self._tokenizer = tokenizer
        self._encoding = encoding
        self._max_model_len = max_model_len
        self._query_marker = self._marker_id(encoding.query_prefix, "query_prefix")
        self._document_marker = self._marker_id(encoding.document_prefix, "document_prefix")
        # PyLate pads with the mask token, or for a tokenizer without one (a decoder's, e.g. LFM2's) its
        # end-of-sequence token, else its padding token
        self._expansion_id = next(
            (i for i in (tokenizer.mask_token_id, getattr(tokenizer, "eos_token_id", None),
                         getattr(tokenizer, "pad_token_id", None)) if i is not None), None)
        if encoding.query_expansion and self._expansion_id is None:
            raise ValueError("query expansion pads with the mask, end-of-sequence or padding token: this tokenizer "
                             "has none")
        # PyLate's conversion, word by word (a word outside the vocabulary becomes the unknown token's id)
        self._skiplist = np.array(
            sorted({tokenizer.convert_tokens_to_ids(word) for word in encoding.skiplist_words} - {None}), np.int64
        )

    @property
    def encoding(self) -> Encoding:
        return self._encoding

    def query_tokens(self, texts: Sequence[str], max_tokens: int | None = None) -> list[QueryTokens]:
        """Each query's ids: marker, truncation to the query length (or `max_tokens`, if smaller), expansion."""
        length = _cap(max_tokens, self._encoding.query_length, self._max_model_len)
        queries = []
        for ids in self._encode(texts, length, self._query_marker):
            attended = len(ids)
            if self._encoding.query_expansion:
                ids = ids + [self._expansion_id] * (length - len(ids))
                if self._encoding.attend_to_expansion_tokens:
                    attended = len(ids)
            queries.append(QueryTokens(ids, attended))
        return queries

    def query_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        return [query.ids for query in self.query_tokens(texts, max_tokens)]

    def document_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """Each document's ids: marker, truncation to the document length (or `max_tokens`, if smaller)."""
        limit = _cap(max_tokens, self._encoding.document_length, self._max_model_len)
        return self._encode(texts, limit, self._document_marker)

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The document text one encoded document holds: its length less the special tokens and the marker."""
        overhead = self._tokenizer.num_special_tokens_to_add(pair=False) + (self._document_marker is not None)
        length = _cap(self._encoding.document_length, self._max_model_len)
        return WindowBudget(tokenizer, document_tokens=length - overhead, document_overhead=overhead)

    def document_keep(self, ids: Sequence[int]) -> np.ndarray | None:
        """Which of a document's token embeddings go on to MaxSim (those not in the skiplist); None: all."""
        if not self._skiplist.size:
            return None
        keep = ~np.isin(np.asarray(ids, dtype=np.int64), self._skiplist)
        return None if keep.all() else keep

    def _encode(self, texts: Sequence[str], limit: int | None, marker: int | None) -> list[list[int]]:
        if not texts:
            return []
        room = None if limit is None else max(limit - (marker is not None), MIN_TOKENS)
        encoded = self._tokenizer(
            list(texts), add_special_tokens=True, truncation=room is not None, max_length=room
        )["input_ids"]
        if marker is None:
            return [list(ids) for ids in encoded]
        return [[ids[0], marker, *ids[1:]] for ids in encoded]

    def _marker_id(self, marker: str, key: str) -> int | None:
        if not marker:
            return None
        token_id = self._tokenizer.get_vocab().get(marker)
        if token_id is None:
            raise ValueError(
                f"{key} {marker!r} is not a token of the tokenizer's vocabulary: a marker is inserted as one token"
            )
        return token_id
