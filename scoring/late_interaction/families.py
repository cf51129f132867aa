"""ColBERT checkpoints whose backbone is not BERT: the vLLM class each one runs on, and how each is encoded.

vLLM 0.32 has a ColBERT class per backbone (`ColBERTModernBertModel`, `ColBERTJinaRobertaModel`,
`ColBERTLfm2Model`); it picks one only by the architecture named in config.json, and the checkpoints users download
name another (`ModernBertModel`, `Lfm2Model` in PyLate's layout, `HF_ColBERT` for jina-colbert-v2), so the engine
is told the class (`hf_overrides`) over the checkpoint's own folder: every one of those classes reads the layout as
it is (the projection from `1_Dense/`, or `linear.weight` beside jina's `roberta.*` weights).

- ModernBERT (lightonai/GTE-ModernColBERT-v1, LateOn) and LFM2 (LiquidAI/LFM2-ColBERT-350M) are PyLate
  checkpoints: encoded from `config_sentence_transformers.json` like any PyLate one. LFM2-ColBERT-350M is causal
  (LiquidAI's first bidirectional retrievers are the later LFM2.5 ones), as PyLate runs it through transformers'
  `Lfm2Model` and as vLLM's `Lfm2Model` runs it; on vLLM's CPU build its engine needs the rotary plugin of
  `deployments/rotary_cpu_compat.py` (`Family.cpu_rotary_plugin`), without which its queries are rotated wrongly.
- jina-colbert-v2 is a Stanford-library checkpoint over Jina's rotary XLM-RoBERTa, whose config class is code in
  the model's repository (`auto_map`). It is encoded as its model card's PyLate usage encodes it: markers
  `[QueryMarker]` / `[DocumentMarker]`, `[MASK]` expansion attended to (`attend_to_expansion_tokens=True`), query
  and document lengths from `artifact.metadata` (`query_maxlen`, `doc_maxlen`) as PyLate reads them, punctuation
  skiplist. Its Matryoshka widths (128 / 96 / 64, trained with Matryoshka representation loss; the card also
  publishes jina-colbert-v2-96 and -64 as checkpoints of their own) are the model option `embedding_dim`: the first
  `embedding_dim` values of each normalised token embedding, normalised again, which equals normalising the output
  of the projection's first `embedding_dim` rows (Matryoshka truncation). That the -96 / -64 checkpoints are
  exactly those rows is assumed here, not checked against them.
No Ray or vLLM import here.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

JINA_QUERY_MARKER = "[QueryMarker]"
JINA_DOCUMENT_MARKER = "[DocumentMarker]"
JINA_MATRYOSHKA_WIDTHS = (128, 96, 64)


@dataclass(frozen=True)
class Family:
    name: str  # modernbert, lfm2, jina-xlm-roberta
    architecture: str  # the vLLM class the engine runs
    # whether transformers can run the backbone offline (for queries whose expansion is not attended to)
    transformers_forward: bool
    # why this service does not serve the family yet (its scores would not be its library's), or None
    unsupported: str | None = None
    # its vLLM class hands the rotary embedding a [tokens, heads, head_size] query, which vLLM 0.32's CPU kernel
    # rotates wrongly: the engine loads deployments/rotary_cpu_compat.py's plugin
    cpu_rotary_plugin: bool = False


MODERNBERT = Family("modernbert", "ColBERTModernBertModel", transformers_forward=True)
LFM2 = Family("lfm2", "ColBERTLfm2Model", transformers_forward=True, cpu_rotary_plugin=True)
JINA = Family("jina-xlm-roberta", "ColBERTJinaRobertaModel", transformers_forward=False)


def family_of(config: dict[str, Any], stanford: bool) -> Family | None:
    """The family of a checkpoint's config.json (None: BERT, which vLLM runs from its own architecture name)."""
    model_type = config.get("model_type")
    if stanford:
        rotary = config.get("position_embedding_type") in ("rotary", "rope")
        return JINA if model_type == "xlm-roberta" and rotary else None
    return {"modernbert": MODERNBERT, "lfm2": LFM2}.get(model_type)


def remote_code(config: dict[str, Any]) -> str | None:
    """The config class a checkpoint names behind `auto_map` (code from its repository), or None."""
    auto_map = config.get("auto_map") or {}
    return auto_map.get("AutoConfig") or auto_map.get("AutoModel")


def remote_code_refusal(model_name: str, path: Path, config: dict[str, Any], trusted: bool) -> str | None:
    """Why a checkpoint may not load (its config needs remote code that its model entry does not allow), or None."""
    code = remote_code(config)
    if code is None or trusted:
        return None
    return (
        f"model {model_name!r}: {path}/config.json loads its config class from code in the model's repository "
        f"(auto_map: {code!r}); set `trust_remote_code: true` on this model to run that code"
    )


def family_refusal(model_name: str, family: Family | None) -> str | None:
    """Why a recognised family is not served (`Family.unsupported`), or None."""
    if family is None or family.unsupported is None:
        return None
    return f"model {model_name!r}: a {family.name} ColBERT is not served: {family.unsupported}"


def jina_settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """jina-colbert-v2's encoding as its model card's PyLate usage gives it (`artifact.metadata` for the lengths,
    PyLate's defaults where absent)."""
    return {
        "query_prefix": JINA_QUERY_MARKER,
        "document_prefix": JINA_DOCUMENT_MARKER,
        "query_length": int(metadata.get("query_maxlen") or 32),
        "document_length": int(metadata.get("doc_maxlen") or 180),
        "query_expansion": True,
        "attend_to_expansion_tokens": True,
        "skiplist_words": tuple(string.punctuation),
    }


def projection_width(weights: Path, name: str = "linear.weight") -> int:
    """Rows of the projection `name` inside a safetensors file, read from its header."""
    from safetensors import safe_open

    with safe_open(str(weights), "np") as f:
        if name not in f.keys():
            raise ValueError(f"{weights}: no projection {name!r}")
        return int(f.get_slice(name).get_shape()[0])


def narrowed(rows: Sequence[np.ndarray], width: int) -> list[np.ndarray]:
    """Each row's first `width` values, L2-normalised again (Matryoshka truncation); rows already that wide as
    they are."""
    out = []
    for row in rows:
        if row.shape[1] > width:
            row = row[:, :width]
            norms = np.linalg.norm(row, axis=1, keepdims=True)
            row = row / np.maximum(norms, 1e-12)
        out.append(row)
    return out
