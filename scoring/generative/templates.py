"""Prompts for generative scoring: how a query and an item become the token ids a CausalLM reads.

The model's next-token distribution after the prompt is read at the label tokens (`yes`/`no`, or the ids a
`/generative_scoring` request names). The templates:

- `raw`: vLLM's `/generative_scoring` exactly — the query tokenized with `add_special_tokens`, each item
  without, concatenated (`item_first` puts the item before the query), cut to `max_model_len - 1`.
- `qwen3-reranker`: the chat-format prompt Qwen3-Reranker models are trained on; the prompt text is built
  here and tokenized with the model's own tokenizer, so any tokenizer works (the chat markers are plain text
  to one that lacks them).
- `bge-reranker-v2-gemma`: FlagEmbedding's `FlagLLMReranker` prompt — `<bos>A: {query}`, `\n`, `B: {passage}`, `\n`,
  the yes/no question — cut as it cuts it (the query to 3/4 of `max_length`, the passage to `max_length`); the
  score is the "Yes" logit (sigmoid with `normalize`).
- `mxbai-rerank-v2`: the mxbai-rerank library's prompt for its v2 models — the Qwen chat turn around
  `query: {query}`, `\n`, `document: {document}`, `\n`, the relevance task — cut as it cuts it; the score is the
  logit of "1" less that of "0" (sigmoid with `normalize`).

Every template takes an `instruction` per call (None: the model's configured one, which defaults to the template's
own: Qwen3-Reranker's `<Instruct>` line, FlagEmbedding's yes/no question, none for mxbai).

Prompts of one query share their leading tokens, which vLLM's prefix cache computes once.
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union

TokenIds = list[int]
Text = Union[str, TokenIds]

# the templates with an instruction line: a request's `instruction` replaces the model's configured one
TEMPLATES_WITH_INSTRUCTION = frozenset({"qwen3-reranker", "bge-reranker-v2-gemma", "mxbai-rerank-v2"})

QWEN3_RERANKER_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_RERANKER_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
BGE_GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a "
    "prediction of either 'Yes' or 'No'."
)
BGE_GEMMA_MAX_LENGTH = 512  # FlagEmbedding's default `max_length` (a passage's tokens)
MXBAI_SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_MAX_LENGTH = 8192  # the library's default `max_length` (a query-document pair's tokens)


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
        instruction: str | None = None,
    ) -> list[TokenIds]:
        """One prompt (token ids, at most `max_prompt_tokens`) per item; `instruction`: this call's, else the
        model's (a template without one ignores it)."""
        ...


class RawTemplate:
    """Query and item token ids concatenated, as vLLM's `/generative_scoring` does."""

    def __init__(self, tokenizer: Tokenizer, max_prompt_tokens: int):
        self._tokenizer = tokenizer
        self._max_prompt_tokens = max_prompt_tokens

    def prompts(self, query, items, *, item_first=False, add_special_tokens=True, max_query_tokens=None,
                max_item_tokens=None, instruction=None):
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

    def head(self, query: str, instruction: str | None = None) -> str:
        instruction = self._instruction if instruction is None else instruction
        return f"{QWEN3_RERANKER_SYSTEM}<Instruct>: {instruction}\n<Query>: {query}\n<Document>: "

    def prompts(self, query, items, *, item_first=False, add_special_tokens=True, max_query_tokens=None,
                max_item_tokens=None, instruction=None):
        _require_text(query, items, "qwen3-reranker")
        if max_query_tokens is not None:
            query = self._truncate_text(query, max_query_tokens)
        head = self.head(query, instruction)
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


def _require_text(query: Text, items: Sequence[Text], template: str) -> None:
    if not isinstance(query, str) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"the {template} template takes text, not token ids")


def _limit(*limits: int | None) -> int:
    return min(limit for limit in limits if limit is not None)


class BgeGemmaTemplate:
    """FlagEmbedding's `FlagLLMReranker` prompt (bge-reranker-v2-gemma): `[bos] A: query` (cut to 3/4 of
    `max_length`, or `max_query_tokens`), then `\n B: passage` (the passage cut to `max_length`, then the pair cut
    to `max_length` plus the question's tokens, the passage first), then `\n` and the question (`instruction`)."""

    def __init__(self, tokenizer, max_prompt_tokens: int, instruction: str, max_length: int | None = None):
        self._tokenizer = tokenizer
        self._max_prompt_tokens = max_prompt_tokens
        self._instruction = instruction
        self._max_length = max_length or BGE_GEMMA_MAX_LENGTH
        self._sep = _encode(tokenizer, ["\n"], False)[0]
        bos = getattr(tokenizer, "bos_token_id", None)
        # FlagEmbedding puts bos first unless the tokenizer has none (or pads with it)
        self._bos = [bos] if bos is not None and bos != getattr(tokenizer, "pad_token_id", None) else []

    def prompts(self, query, items, *, item_first=False, add_special_tokens=True, max_query_tokens=None,
                max_item_tokens=None, instruction=None):
        _require_text(query, items, "bge-reranker-v2-gemma")
        max_length = _limit(max_item_tokens, self._max_length)
        question = _encode(self._tokenizer, [self._instruction if instruction is None else instruction], False)[0]
        query_ids = self._bos + _encode(self._tokenizer, [f"A: {query}"], False)[0][
            : _limit(max_query_tokens, max_length * 3 // 4)
        ]
        pair_limit = min(max_length + len(self._sep) + len(question),
                         self._max_prompt_tokens - len(self._sep) - len(question))
        prompts = []
        for passage in _encode(self._tokenizer, [f"B: {item}" for item in items], False):
            second = (self._sep + passage[:max_length])[: max(pair_limit - len(query_ids), 0)]
            prompts.append(query_ids + second + self._sep + question)
        return prompts


class MxbaiV2Template:
    """The mxbai-rerank library's prompt for its v2 models: the Qwen chat turn around `query: q` (with an
    instruction, `instruction: i\nquery: q`; cut to 3/4 of `max_length`), `\n document: d` (the pair cut to
    `max_length`, the document first), `\n` and the relevance task. `max_length` is lowered so the whole prompt
    fits the model's length, as the library lowers it."""

    def __init__(self, tokenizer, max_prompt_tokens: int, instruction: str | None, max_length: int | None = None):
        self._tokenizer = tokenizer
        self._instruction = instruction
        self._sep, self._prefix, self._task, self._suffix = _encode(
            tokenizer, ["\n", MXBAI_SYSTEM, MXBAI_TASK, MXBAI_ASSISTANT], False
        )
        fixed = len(self._prefix) + len(self._task) + len(self._suffix) + len(self._sep)
        self._model_max_length = max_prompt_tokens
        self._max_length = min(max_length or MXBAI_MAX_LENGTH, max_prompt_tokens - fixed)

    def prompts(self, query, items, *, item_first=False, add_special_tokens=True, max_query_tokens=None,
                max_item_tokens=None, instruction=None):
        _require_text(query, items, "mxbai-rerank-v2")
        max_length = _limit(max_item_tokens, self._max_length)
        instruction = self._instruction if instruction is None else instruction
        text = f"query: {query}" if not instruction else f"instruction: {instruction}\nquery: {query}"
        query_ids = _encode(self._tokenizer, [text], False)[0][: _limit(max_query_tokens, max_length * 3 // 4)]
        document_limit = min(self._model_max_length - len(query_ids), max_length)
        prompts = []
        for document in _encode(self._tokenizer, [f"document: {item}" for item in items], False):
            second = (self._sep + document[:document_limit])[: max(max_length - len(query_ids), 0)]
            prompts.append(self._prefix + query_ids + second + self._sep + self._task + self._suffix)
        return prompts


def build_template(
    kind: str, tokenizer: Tokenizer, max_model_len: int, instruction: str | None = "", max_length: int | None = None
) -> PromptTemplate:
    """`kind`: a `GenerativeModelConfig.template` value; `max_length`: the library's `max_length` for the templates
    that have one (bge-reranker-v2-gemma, mxbai-rerank-v2), None for its default."""
    # One position is left for the token whose distribution is read.
    max_prompt_tokens = max_model_len - 1
    if kind == "qwen3-reranker":
        return Qwen3RerankerTemplate(tokenizer, max_prompt_tokens, instruction)
    if kind == "bge-reranker-v2-gemma":
        return BgeGemmaTemplate(tokenizer, max_prompt_tokens, instruction, max_length)
    if kind == "mxbai-rerank-v2":
        return MxbaiV2Template(tokenizer, max_prompt_tokens, instruction, max_length)
    if kind == "raw":
        return RawTemplate(tokenizer, max_prompt_tokens)
    raise ValueError(f"unknown template {kind!r}")
