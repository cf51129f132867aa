"""Cross-encoders: a (query, document) pair in, one relevance score out, as sentence-transformers scores it.

`CrossEncoder(path).predict([(query, document)])` tokenizes the pair with the model's own tokenizer (its
separator and token types), runs the sequence-classification model and applies the checkpoint's activation to the
logit. The pair is built here as token ids (truncating the document first within the engine's length), vLLM runs
the model and returns the raw logit, and `CrossEncoderHead` applies the activation.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from scoring.api.requests import tightest
from scoring.chunking import WindowBudget

SIGMOID = "torch.nn.Sigmoid"
IDENTITY = "torch.nn.Identity"


class PairTokenizer(Protocol):
    is_fast: bool

    def __call__(self, text: Any, text_pair: Any = None, **kwargs): ...

    def num_special_tokens_to_add(self, pair: bool = False) -> int: ...


@dataclass(frozen=True)
class PairInput:
    """One pair as the engine sees it: token ids and where the second segment's token type starts (None: the
    tokenizer has no token types)."""

    token_ids: list[int]
    second_segment_start: int | None


def activation_name(hf_config: Any, configured: str | None) -> str:
    """The activation sentence-transformers' CrossEncoder applies by default: the config's name when given, else
    the checkpoint's `sentence_transformers.activation_fn` (or the pre-v4 `sbert_ce_default_activation_function`)
    when it is a `torch.` path, else Sigmoid for one label (Identity for more)."""
    if configured is not None:
        return configured
    saved = (getattr(hf_config, "sentence_transformers", None) or {}).get("activation_fn") or getattr(
        hf_config, "sbert_ce_default_activation_function", None
    )
    if isinstance(saved, str) and saved.startswith("torch."):
        return saved
    return SIGMOID if getattr(hf_config, "num_labels", 1) == 1 else IDENTITY


class CrossEncoderHead:
    """The activation on the model's logit, as a torch module of the named class (what sentence-transformers
    instantiates from the same dotted path)."""

    def __init__(self, name: str):
        module, _, attribute = name.rpartition(".")
        try:
            self._activation = getattr(importlib.import_module(module), attribute)()
        except (ImportError, AttributeError, TypeError) as exc:
            raise ValueError(f"activation_fn {name!r} is not a torch module that takes no arguments: {exc}") from None
        self.name = name

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """[B] logits (float32, one label) → [B] scores."""
        with torch.no_grad():
            return self._activation(torch.from_numpy(np.asarray(logits, dtype=np.float32))).double().numpy()


def check_one_label(hf_config: Any, model: str) -> None:
    labels = getattr(hf_config, "num_labels", 1)
    if labels != 1:
        raise ValueError(
            f"model {model!r}: a cross_encoder ranks with one output label (num_labels=1); this checkpoint has "
            f"{labels}"
        )


class CrossEncoderTokenizer:
    """Builds each (query, document) pair's token ids with the model's tokenizer, the way it pairs two texts.

    The pair is cut to `max_model_len`, the document first (`truncation="only_second"`); the query is cut to its
    own limit first (and always leaves room for one document token)."""

    def __init__(
        self,
        tokenizer: PairTokenizer,
        max_model_len: int,
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
    ):
        if not tokenizer.is_fast:
            raise ValueError("a cross_encoder needs a fast (tokenizers) tokenizer: tokenizer.json")
        self._tokenizer = tokenizer
        self._max_model_len = max_model_len
        self._max_query = max_tokens_per_query
        self._max_doc = max_tokens_per_doc
        self._specials = tokenizer.num_special_tokens_to_add(pair=True)

    def pairs(
        self,
        query: str,
        documents: Sequence[str],
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> list[PairInput]:
        query, query_tokens = self._cut_query(query, tightest(max_tokens_per_query, self._max_query))
        length = self._max_model_len
        doc_limit = tightest(max_tokens_per_doc, self._max_doc)
        if doc_limit is not None:
            length = min(length, query_tokens + self._specials + doc_limit)
        encoded = self._tokenizer(
            [query] * len(documents),
            list(documents),
            truncation="only_second",
            max_length=length,
            add_special_tokens=True,
        )
        types = encoded.get("token_type_ids")
        return [
            PairInput(list(ids), _second_segment(types[i]) if types is not None else None)
            for i, ids in enumerate(encoded["input_ids"])
        ]

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The document text one pair holds: the pair's length less its special tokens and the query."""
        return WindowBudget(
            tokenizer,
            document_tokens=self._max_model_len - self._specials,
            document_limit=self._max_doc,
            query_shares_input=True,
            query_limit=tightest(self._max_query, self._max_model_len - self._specials - 1),
        )

    def _cut_query(self, query: str, limit: int | None) -> tuple[str, int]:
        """The query text cut after its `limit`-th token (by character offsets, so the text is unchanged up to
        there), and its token count."""
        room = self._max_model_len - self._specials - 1
        limit = room if limit is None else min(limit, room)
        encoded = self._tokenizer(query, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= limit:
            return query, len(offsets)
        return query[: offsets[limit - 1][1]], limit



def _second_segment(token_type_ids: Sequence[int]) -> int | None:
    """Where token type 1 starts (vLLM's compressed form of a pair's token types); None when there is none."""
    for i, type_id in enumerate(token_type_ids):
        if type_id:
            return i
    return None


class Qwen3RerankerPairs:
    """Pairs for Qwen3-Reranker's sequence-classification conversions (e.g. tomaarsen/Qwen3-Reranker-0.6B-seq-cls),
    as their model card scores them with sentence-transformers: the query text is the Qwen3-Reranker system turn,
    `<Instruct>: {instruction}\\n<Query>: {query}\\n`, the document text `<Document>: {document}` and the assistant
    turn, each tokenized whole and the two ids concatenated (a Qwen tokenizer adds nothing around a pair). A document
    that must be cut (the engine's length, `max_tokens_per_doc`) is cut inside the template, so the assistant turn
    the score is read after always stays."""

    DOCUMENT = "<Document>: "

    def __init__(
        self,
        tokenizer: PairTokenizer,
        max_model_len: int,
        instruction: str,
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
    ):
        from scoring.generative.templates import QWEN3_RERANKER_ASSISTANT

        if tokenizer.num_special_tokens_to_add(pair=True):
            raise ValueError(
                "the qwen3-reranker template is for Qwen3-Reranker conversions, whose tokenizer adds no special "
                "tokens around a pair; this tokenizer adds some"
            )
        self._tokenizer = tokenizer
        self._max_model_len = max_model_len
        self._instruction = instruction
        self._max_query = max_tokens_per_query
        self._max_doc = max_tokens_per_doc
        self._assistant = QWEN3_RERANKER_ASSISTANT
        self._document_ids, self._assistant_ids = self._encode([self.DOCUMENT, QWEN3_RERANKER_ASSISTANT])

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The document text one pair holds beside the template (its configured instruction counted: a request's
        own takes its place) and the query."""
        fixed = sum(len(ids) for ids in self._encode([self.query_text(""), self.DOCUMENT, self._assistant]))
        return WindowBudget(
            tokenizer,
            document_tokens=self._max_model_len - fixed,
            document_limit=self._max_doc,
            query_shares_input=True,
            query_limit=self._max_query,
            instruction_tokens=len(self._encode([self._instruction])[0]),
        )

    def query_text(self, query: str, instruction: str | None = None) -> str:
        from scoring.generative.templates import QWEN3_RERANKER_SYSTEM

        instruction = self._instruction if instruction is None else instruction
        return f"{QWEN3_RERANKER_SYSTEM}<Instruct>: {instruction}\n<Query>: {query}\n"

    def pairs(
        self,
        query: str,
        documents: Sequence[str],
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
    ) -> list[PairInput]:
        query_limit = tightest(max_tokens_per_query, self._max_query)
        if query_limit is not None:
            ids = self._encode([query])[0]
            if len(ids) > query_limit:
                query = self._tokenizer.decode(ids[:query_limit])
        head = self._encode([self.query_text(query, instruction)])[0]
        room = self._max_model_len - len(head) - len(self._document_ids) - len(self._assistant_ids)
        if room < 1:
            from scoring.errors import ValidationFailed

            raise ValidationFailed(
                f"the query takes {len(head)} tokens with its template, leaving no room for a document within "
                f"{self._max_model_len}; shorten it or set max_tokens_per_query"
            )
        doc_limit = tightest(max_tokens_per_doc, self._max_doc)
        whole = self._encode([f"{self.DOCUMENT}{d}{self._assistant}" for d in documents])
        pairs = []
        for document, ids in zip(documents, whole):
            if doc_limit is not None or len(head) + len(ids) > self._max_model_len:
                cut = self._encode([document])[0][: min(room, doc_limit or room)]
                ids = self._document_ids + cut + self._assistant_ids
            pairs.append(PairInput(head + ids, None))
        return pairs

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]
