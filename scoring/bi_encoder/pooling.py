"""Bi-encoders: one vector per text with the checkpoint's own pooling, scored by cosine similarity.

A sentence-transformers checkpoint says how it turns token states into one vector: `modules.json` lists the
modules (Transformer, Pooling, optionally Normalize), `1_Pooling/config.json` the pooling (mean, CLS or last
token), `sentence_bert_config.json` the length texts are cut to, `config_sentence_transformers.json` the
similarity function and prompts. `SentenceTransformerLayout` reads them; vLLM pools (`embed`), and every vector
is L2-normalised here when the similarity is cosine, so that a dot product is the checkpoint's similarity.

The vectors go through the scorer like late-interaction embeddings, one row per text: MaxSim of a 1-row query
against 1-row documents is their dot product, so the scorer's query and document caches hold them unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from scoring.api.requests import tightest
from scoring.chunking import WindowBudget
from scoring.config.schema import BiEncoderModelConfig

POOLING = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}  # sentence-transformers mode → vLLM pooling type
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class SentenceTransformerLayout:
    pooling: Literal["MEAN", "CLS", "LAST"]
    normalize: bool  # a Normalize module, or cosine similarity: vectors are unit length before the dot product
    similarity: Literal["cosine", "dot"]
    max_seq_length: int | None
    query_prompt: str
    document_prompt: str

    def describe(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling.lower(),
            "normalize": self.normalize,
            "similarity": self.similarity,
            "max_seq_length": self.max_seq_length,
        }


def read_layout(model_dir: str | Path, name: str) -> SentenceTransformerLayout:
    """The layout of a sentence-transformers checkpoint in `model_dir`; a plain transformers checkpoint (no
    modules.json) is read as sentence-transformers reads one: mean pooling, cosine similarity."""
    root = Path(model_dir)
    modules = _json(root / "modules.json") or [
        {"type": "sentence_transformers.models.Transformer", "path": ""},
        {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
    ]
    kinds = {}
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in SUPPORTED_MODULES:
            raise ValueError(
                f"model {name!r}: module {module['type']!r} of modules.json is not supported by a bi_encoder "
                f"(supported: {', '.join(SUPPORTED_MODULES)})"
            )
        kinds[kind] = module
    pooling_config = _json(root / kinds["Pooling"]["path"] / "config.json") if "Pooling" in kinds else None
    pooling = _pooling_mode(pooling_config or {})
    if pooling not in POOLING:
        raise ValueError(
            f"model {name!r}: pooling mode {pooling!r} is not supported by a bi_encoder (supported: "
            f"{', '.join(POOLING)})"
        )
    settings = _json(root / "config_sentence_transformers.json") or {}
    similarity = settings.get("similarity_fn_name") or "cosine"
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"model {name!r}: similarity {similarity!r} is not supported (cosine or dot)")
    prompts = settings.get("prompts") or {}
    transformer = _json(root / kinds.get("Transformer", {}).get("path", "") / "sentence_bert_config.json") or {}
    return SentenceTransformerLayout(
        pooling=POOLING[pooling],
        normalize="Normalize" in kinds or similarity == "cosine",
        similarity=similarity,
        max_seq_length=transformer.get("max_seq_length"),
        query_prompt=prompts.get("query", ""),
        document_prompt=prompts.get("document", ""),
    )


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling_mode(config: dict[str, Any]) -> str:
    """`pooling_mode` (sentence-transformers >= 5) or the one legacy `pooling_mode_*` flag that is set."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return mode if isinstance(mode, str) else "+".join(mode)
    active = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)]
    return "+".join(active) if active else "mean"


def l2_normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as sentence-transformers' Normalize and cosine similarity do)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class BiEncoderTokenizer:
    """Query and document token ids: the prompt before the text, cut to the length the checkpoint was used with."""

    def __init__(
        self, tokenizer: Any, model: BiEncoderModelConfig, layout: SentenceTransformerLayout, max_model_len: int
    ):
        self._tokenizer = tokenizer
        self._query_prefix = layout.query_prompt if model.query_prefix is None else model.query_prefix
        self._document_prefix = layout.document_prompt if model.document_prefix is None else model.document_prefix
        self._max_doc = tightest(model.max_tokens_per_doc or layout.max_seq_length, max_model_len)
        self._max_query = tightest(model.max_tokens_per_query, self._max_doc)

    def query_ids(
        self, texts: Sequence[str], max_tokens: int | None = None, instruction: str | None = None
    ) -> list[list[int]]:
        """`instruction`: a request's query prompt in place of the model's."""
        prefix = self._query_prefix if instruction is None else instruction
        return self._encode([prefix + t for t in texts], tightest(max_tokens, self._max_query))

    def document_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        return self._encode([self._document_prefix + t for t in texts], tightest(max_tokens, self._max_doc))

    def window_budget(self, tokenizer: str) -> WindowBudget:
        """The document text one vector holds: the length less the special tokens and the document prompt."""
        prompt = len(self._tokenizer(self._document_prefix, add_special_tokens=False)["input_ids"])
        overhead = self._tokenizer.num_special_tokens_to_add(pair=False) + prompt
        return WindowBudget(tokenizer, document_tokens=self._max_doc - overhead, document_overhead=overhead)

    def _encode(self, texts: list[str], limit: int | None) -> list[list[int]]:
        if not texts:
            return []
        encoded = self._tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit)
        return [list(ids) for ids in encoded["input_ids"]]

