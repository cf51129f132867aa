"""The non-BERT ColBERT families vLLM 0.32 has a class for, served from the checkpoint alone and encoded as PyLate
encodes them: a ModernBERT ColBERT (GTE-ModernColBERT-v1's layout), an LFM2 ColBERT (LFM2-ColBERT-350M's: causal,
convolution and attention blocks, queries padded with its end-of-sequence token) and jina-colbert-v2 (`HF_ColBERT`
over Jina's rotary XLM-RoBERTa, its config class behind `auto_map`), tiny and random
(tests/tiny_colbert_families.py), in one app.

The reference is written here from PyLate's documented encoding, independently of scoring/: the text tokenized to
one token less than the length, the marker inserted after the first token, queries padded with the mask token to
the query length (attention mask 0 on those tokens unless the checkpoint attends to them; LFM2's tokenizer has no
mask token: its end-of-sequence token), the punctuation skiplist dropped from documents, MaxSim in float64. The
forward pass: transformers' ModernBertModel / Lfm2Model (causal, as PyLate loads it) in float64 with the `1_Dense`
projection; for jina's rotary XLM-RoBERTa, whose only implementation here is vLLM's (Jina's own is code in its
repository, flash-attention only), vLLM's offline engine on the token ids built here, outside the service.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.tiny_colbert_families import build_jina_colbert, build_lfm2_colbert, build_modernbert_colbert

pytestmark = pytest.mark.e2e

JINA_DIM = 16  # the Matryoshka width served: the first 16 of the tiny projection's 32
QUERIES = [
    "what is the capital of France?",
    "vaccines, immunity & the body: how?",
    "a query far longer than the query length of these checkpoints, it goes on and on with many words",
]
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Vaccines expose the immune system to a harmless piece of a pathogen; it learns (quickly) to recognise it!",
    "a",
    " ".join(["a long document that runs past the document length"] * 4) + ".",
    "...!?",
]


class PyLateReference:
    """PyLate's `encode` of one checkpoint around a forward pass `forward(ids, attention) -> [n, d] float64`
    (normalised token embeddings), and MaxSim in float64."""

    def __init__(self, path: Path, forward, *, query_prefix: str, document_prefix: str, query_length: int,
                 document_length: int, attend: bool, width: int | None = None):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.forward = forward
        self.query_marker, self.document_marker = self.tok.convert_tokens_to_ids([query_prefix, document_prefix])
        self.query_length, self.document_length, self.attend = query_length, document_length, attend
        self.expansion = self.tok.mask_token_id if self.tok.mask_token_id is not None else self.tok.eos_token_id
        self.skiplist = {self.tok.convert_tokens_to_ids(w) for w in string.punctuation}
        self.width = width

    def _embed(self, ids: list[int], attention: list[int]) -> np.ndarray:
        out = self.forward(ids, attention)
        if self.width is not None:  # Matryoshka: the first values, normalised again
            out = out[:, : self.width] / np.linalg.norm(out[:, : self.width], axis=1, keepdims=True)
        return out

    def query_ids(self, text: str) -> tuple[list[int], list[int]]:
        body = self.tok(text, max_length=self.query_length - 1, truncation=True)["input_ids"]
        pad = self.query_length - 1 - len(body)
        ids = [body[0], self.query_marker, *body[1:]] + [self.expansion] * pad
        return ids, [1] * len(ids) if self.attend else [1] * (len(body) + 1) + [0] * pad

    def document_ids(self, text: str) -> list[int]:
        body = self.tok(text, max_length=self.document_length - 1, truncation=True)["input_ids"]
        return [body[0], self.document_marker, *body[1:]]

    def query(self, text: str) -> np.ndarray:
        return self._embed(*self.query_ids(text))

    def document(self, text: str) -> np.ndarray:
        ids = self.document_ids(text)
        return self._embed(ids, [1] * len(ids))[[i not in self.skiplist for i in ids]]

    def score(self, query: str, document: str) -> float:
        return float((self.query(query) @ self.document(document).T).max(axis=1).sum())


def transformers_reference(path: Path, model_class=None) -> PyLateReference:
    """PyLate's encoding over transformers' backbone (`model_class`, default ModernBertModel) in float64."""
    import json

    from safetensors.torch import load_file
    from transformers import ModernBertModel

    model = (model_class or ModernBertModel).from_pretrained(path, attn_implementation="eager").double().eval()
    projection = load_file(str(path / "1_Dense" / "model.safetensors"))["linear.weight"].double()
    settings = json.loads((path / "config_sentence_transformers.json").read_text())

    def forward(ids, attention):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention])).last_hidden_state
        return torch.nn.functional.normalize(hidden[0] @ projection.T, dim=-1).numpy()

    return PyLateReference(path, forward, query_prefix=settings["query_prefix"],
                           document_prefix=settings["document_prefix"], query_length=settings["query_length"],
                           document_length=settings["document_length"],
                           attend=settings["attend_to_expansion_tokens"])


class VllmForward:
    """vLLM's offline engine (`runner="pooling"`) over one checkpoint: token embeddings of given ids, float64."""

    def __init__(self, path: Path, architecture: str, **kwargs):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, on this process's cores
        from vllm import LLM

        self.llm = LLM(model=str(path), runner="pooling", hf_overrides={"architectures": [architecture]},
                       dtype="float32", enforce_eager=True, kv_cache_memory_bytes=2**26, max_model_len=64, **kwargs)
        self.cache: dict[tuple[int, ...], np.ndarray] = {}

    def encode_all(self, sequences: list[list[int]]) -> None:
        from vllm.inputs import TokensPrompt

        todo = [s for s in {tuple(s) for s in sequences} if s not in self.cache]
        outputs = self.llm.encode([TokensPrompt(prompt_token_ids=list(s)) for s in todo], pooling_task="token_embed")
        for ids, out in zip(todo, outputs):
            self.cache[ids] = out.outputs.data.double().numpy()

    def __call__(self, ids: list[int], attention: list[int]) -> np.ndarray:
        assert all(attention), "vLLM's forward pass takes no attention mask"
        return self.cache[tuple(ids)]


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("colbert-families")
    return {
        "modernbert-colbert": build_modernbert_colbert(root / "modernbert", attend_to_expansion_tokens=False),
        "lfm2-colbert": build_lfm2_colbert(root / "lfm2"),
        "jina-colbert": build_jina_colbert(root / "jina"),
    }


@pytest.fixture(scope="module")
def references(family_checkpoints):
    jina_path = family_checkpoints["jina-colbert"]
    engine = VllmForward(jina_path, "ColBERTJinaRobertaModel", trust_remote_code=True)
    jina = PyLateReference(jina_path, engine, query_prefix="[QueryMarker]", document_prefix="[DocumentMarker]",
                           query_length=12, document_length=24, attend=True, width=JINA_DIM)
    # the ids the reference builds, encoded in one engine call; then the engine goes
    engine.encode_all([jina.query_ids(q)[0] for q in QUERIES] + [jina.document_ids(d) for d in DOCUMENTS])
    del engine.llm
    from transformers import Lfm2Model

    return {"modernbert-colbert": transformers_reference(family_checkpoints["modernbert-colbert"]),
            "lfm2-colbert": transformers_reference(family_checkpoints["lfm2-colbert"], Lfm2Model), "jina-colbert": jina}


@pytest.fixture(scope="module")
def families_app(serve_instance, family_checkpoints):
    """The checkpoints, each given by path only (jina's with the remote code it needs allowed), in one app."""
    from ray import serve

    from deployments.app import build_app

    small = {"cpu_kv_cache_bytes": 67108864}
    args = {
        "models": [
            {"name": "modernbert-colbert", "kind": "late_interaction",
             "model": str(family_checkpoints["modernbert-colbert"]), **small},
            {"name": "lfm2-colbert", "kind": "late_interaction", "model": str(family_checkpoints["lfm2-colbert"]),
             **small},
            {"name": "jina-colbert", "kind": "late_interaction", "model": str(family_checkpoints["jina-colbert"]),
             "trust_remote_code": True, "embedding_dim": JINA_DIM, **small},
        ],
        "cache": {"document_dtype": "float32"},  # fp16 storage would round scores past 1e-4
    }
    serve.run(build_app(args), name="colbert-families", route_prefix="/families")
    yield f"{serve_instance}/families"
    serve.delete("colbert-families")


@pytest.mark.parametrize("model", ["modernbert-colbert", "lfm2-colbert", "jina-colbert"])
def test_rerank_scores_equal_the_pylate_reference(families_app, references, model):
    reference = references[model]
    for query in QUERIES:
        r = httpx.post(f"{families_app}/v1/rerank", json={"model": model, "query": query, "documents": DOCUMENTS},
                       timeout=120)
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        for i, document in enumerate(DOCUMENTS):
            assert got[i] == pytest.approx(reference.score(query, document), rel=1e-4, abs=1e-5), (query, document)


def test_models_show_each_family_encoding(families_app):
    r = httpx.get(f"{families_app}/v1/models", timeout=60)
    assert r.status_code == 200, r.text
    cards = {card["id"]: card["encoding"] for card in r.json()["data"]}
    modernbert = cards["modernbert-colbert"]
    assert (modernbert["format"], modernbert["query_prefix"], modernbert["document_prefix"]) == ("pylate", "[Q] ",
                                                                                                  "[D] ")
    assert (modernbert["attend_to_expansion_tokens"], modernbert["embedding_dim"]) == (False, 48)
    jina = cards["jina-colbert"]
    assert (jina["query_prefix"], jina["document_prefix"]) == ("[QueryMarker]", "[DocumentMarker]")
    assert (jina["query_length"], jina["document_length"]) == (12, 24)  # artifact.metadata's
    assert (jina["query_expansion"], jina["attend_to_expansion_tokens"], jina["embedding_dim"]) == (True, True,
                                                                                                 JINA_DIM)
