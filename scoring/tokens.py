"""Turning query and document text into the token ids a late-interaction encoder sees.

Prefixes (ColBERT's `[Q] ` / `[D] ` markers), truncation and ColBERT query augmentation (padding the
query with the mask token) happen here, so the encoder sends exact token ids to vLLM and the token
counts reported as usage are the ones scored.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from scoring.config import LateInteractionModelConfig


class HFTokenizer(Protocol):
    mask_token_id: int | None

    def __call__(self, text: list[str], **kwargs): ...


def _cap(*limits: int | None) -> int | None:
    present = [limit for limit in limits if limit is not None]
    return min(present) if present else None


class LateInteractionTokenizer:
    def __init__(self, tokenizer: HFTokenizer, model: LateInteractionModelConfig, max_model_len: int):
        self._tokenizer = tokenizer
        self._model = model
        self._max_model_len = max_model_len
        if model.query_pad_length is not None and tokenizer.mask_token_id is None:
            raise ValueError(f"model {model.name!r}: query_pad_length needs a tokenizer with a mask token")

    def query_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        pad_to = self._model.query_pad_length
        limit = _cap(max_tokens, self._model.max_tokens_per_query, pad_to, self._max_model_len)
        ids = self._encode([self._model.query_prefix + t for t in texts], limit)
        if pad_to is not None:
            mask = self._tokenizer.mask_token_id
            ids = [seq + [mask] * (pad_to - len(seq)) for seq in ids]
        return ids

    def document_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        limit = _cap(max_tokens, self._model.max_tokens_per_doc, self._max_model_len)
        return self._encode([self._model.document_prefix + t for t in texts], limit)

    def _encode(self, texts: list[str], limit: int | None) -> list[list[int]]:
        if not texts:
            return []
        encoded = self._tokenizer(
            texts, add_special_tokens=True, truncation=limit is not None, max_length=limit
        )
        return [list(ids) for ids in encoded["input_ids"]]
