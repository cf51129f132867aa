"""Prompts for generative scoring: how a query and an item become the token ids a CausalLM reads.

The model's next-token distribution after the prompt is read at the label tokens (`yes`/`no`, or the ids a
`/generative_scoring` request names). Two templates:

- `raw`: vLLM's `/generative_scoring` exactly — the query tokenized with `add_special_tokens`, each item
  without, concatenated (`item_first` puts the item before the query), cut to `max_model_len - 1`.
- `qwen3-reranker`: the chat-format prompt Qwen3-Reranker models are trained on; the prompt text is built
  here and tokenized with the model's own tokenizer, so any tokenizer works (the chat markers are plain text
  to one that lacks them).

Prompts of one query share their leading tokens, which vLLM's prefix cache computes once.
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union

TokenIds = list[int]
Text = Union[str, TokenIds]

# the templates with an instruction line: a request's `instruction` replaces the model's configured one
TEMPLATES_WITH_INSTRUCTION = frozenset({"qwen3-reranker"})

QWEN3_RERANKER_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_RERANKER_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class Tokenizer(Protocol):
    def __call__(self, text: list[str], **kwargs): ...


def _encode(tokenizer: Tokenizer, texts: Sequence[str], add_special_tokens: bool) -> list[TokenIds]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]


def _cut(ids: TokenIds, limit: int | None) -> TokenIds:
    return ids if limit is None else ids[:limit]


def label_token_ids(tokenizer: Tokenizer, labels: Sequence[str], model_name: str) -> TokenIds:
    """The token id of each label word; every label must be exactly one token of this tokenizer."""
    ids = []
    for label, encoded in zip(labels, _encode(tokenizer, labels, add_special_tokens=False)):
        if len(encoded) != 1:
            raise ValueError(
                f"model {model_name!r}: label_tokens entry {label!r} is {len(encoded)} tokens ({encoded}) "
                "with this tokenizer; each label must be a single token"
            )
        ids.append(encoded[0])
    return ids


class PromptTemplate(Protocol):
    def prompts(
        self,
        query: Text,
        items: Sequence[Text],
        *,
        item_first: bool = False,
        add_special_tokens: bool = True,
        max_query_tokens: int | None = None,
        max_item_tokens: int | None = None,
    ) -> list[TokenIds]:
        """One prompt (token ids, at most `max_prompt_tokens`) per item."""
        ...


class RawTemplate:
    """Query and item token ids concatenated, as vLLM's `/generative_scoring` does."""

    def __init__(self, tokenizer: Tokenizer, max_prompt_tokens: int):
        self._tokenizer = tokenizer
        self._max_prompt_tokens = max_prompt_tokens

    def prompts(self, query, items, *, item_first=False, add_special_tokens=True, max_query_tokens=None,
                max_item_tokens=None):
        query_ids = query if not isinstance(query, str) else _encode(self._tokenizer, [query], add_special_tokens)[0]
        query_ids = _cut(list(query_ids), max_query_tokens)
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        encoded = dict(zip(texts, _encode(self._tokenizer, [items[i] for i in texts], add_special_tokens=False)))
        prompts = []
        for i, item in enumerate(items):
            item_ids = _cut(encoded[i] if i in encoded else list(item), max_item_tokens)
            ids = item_ids + query_ids if item_first else query_ids + item_ids
            prompts.append(ids[: self._max_prompt_tokens])
        return prompts


class Qwen3RerankerTemplate:
    """`<Instruct>`, `<Query>`, `<Document>` in the Qwen3-Reranker chat format; the answer is `yes` or `no`."""

    def __init__(self, tokenizer: Tokenizer, max_prompt_tokens: int, instruction: str):
        self._tokenizer = tokenizer
        self._max_prompt_tokens = max_prompt_tokens
        self._instruction = instruction
        self._assistant_ids = _encode(tokenizer, [QWEN3_RERANKER_ASSISTANT], add_special_tokens=False)[0]

    def head(self, query: str) -> str:
        return f"{QWEN3_RERANKER_SYSTEM}<Instruct>: {self._instruction}\n<Query>: {query}\n<Document>: "

    def prompts(self, query, items, *, item_first=False, add_special_tokens=True, max_query_tokens=None,
                max_item_tokens=None):
        if not isinstance(query, str) or not all(isinstance(item, str) for item in items):
            raise ValueError("the qwen3-reranker template takes text, not token ids")
        if max_query_tokens is not None:
            query = self._truncate_text(query, max_query_tokens)
        head = self.head(query)
        # The whole prompt is tokenized as one text, as the model was trained; only a document that must be
        # cut is tokenized apart from the text around it.
        prompts = _encode(self._tokenizer, [head + item + QWEN3_RERANKER_ASSISTANT for item in items], False)
        for i, ids in enumerate(prompts):
            if len(ids) > self._max_prompt_tokens or max_item_tokens is not None:
                prompts[i] = self._cut_document(head, items[i], max_item_tokens)
        return prompts

    def _cut_document(self, head: str, item: str, max_item_tokens: int | None) -> TokenIds:
        head_ids, item_ids = _encode(self._tokenizer, [head, item], add_special_tokens=False)
        room = self._max_prompt_tokens - len(head_ids) - len(self._assistant_ids)
        if room < 0:
            raise ValueError(f"the query leaves no room for a document within {self._max_prompt_tokens} tokens")
        limit = room if max_item_tokens is None else min(room, max_item_tokens)
        return head_ids + item_ids[:limit] + self._assistant_ids

    def _truncate_text(self, text: str, max_tokens: int) -> str:
        ids = _encode(self._tokenizer, [text], add_special_tokens=False)[0]
        if len(ids) <= max_tokens:
            return text
        return self._tokenizer.decode(ids[:max_tokens])


def build_template(kind: str, tokenizer: Tokenizer, max_model_len: int, instruction: str = "") -> PromptTemplate:
    """`kind`: a `GenerativeModelConfig.template` value."""
    # One position is left for the token whose distribution is read.
    max_prompt_tokens = max_model_len - 1
    if kind == "qwen3-reranker":
        return Qwen3RerankerTemplate(tokenizer, max_prompt_tokens, instruction)
    if kind == "raw":
        return RawTemplate(tokenizer, max_prompt_tokens)
    raise ValueError(f"unknown template {kind!r}")
