"""ColBERT checkpoints served as their own libraries encode them: a PyLate and a Stanford checkpoint (tiny, random,
written in the real on-disk formats), given by path only, through real vLLM engines and Ray Serve.

The reference is written here from the two libraries' documented behaviour, independently of scoring/: PyLate
tokenizes to one token less than the length and inserts the marker after [CLS]; the Stanford library prepends
". " and overwrites that token with the marker; queries are padded with [MASK] (attention mask 0 on them unless
the checkpoint attends to them); transformers' BertModel, the projection, L2 normalisation, the punctuation
skiplist on documents, MaxSim: all in float64. The reference itself is checked against sentence-transformers'
MultiVectorEncoder (its port of PyLate, which reads both formats) where that is installed.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.tiny_colbert import build_pylate_colbert, build_stanford_colbert

pytestmark = pytest.mark.e2e

STANFORD_DOC_LENGTH = 14  # our config's override of the checkpoint's doc_maxlen (16)
QUERIES = [
    "what is the capital of France?",
    "vaccines, immunity & the body: how?",
    "a query far longer than the query length of these checkpoints, it goes on and on with many words",
]
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Vaccines expose the immune system to a harmless piece of a pathogen; it learns (quickly) to recognise it!",
    "a",
    "no punctuation here at all",
    " ".join(["a long document that runs past the document length"] * 8) + ".",
    "...!?",
]


class Reference:
    """`ColBERT(path).encode(...)` + MaxSim of one checkpoint, float64."""

    def __init__(self, path: Path, stanford: bool, document_length: int | None = None):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertConfig, BertModel

        self.tok = AutoTokenizer.from_pretrained(path)
        self.stanford = stanford
        if stanford:
            meta = json.loads((path / "artifact.metadata").read_text())
            state = load_file(str(path / "model.safetensors"))
            self.bert = BertModel(BertConfig.from_pretrained(path), add_pooling_layer=False)
            self.bert.load_state_dict({k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")})
            self.projection = state["linear.weight"]
            markers = meta["query_token_id"], meta["doc_token_id"]
            self.query_length, self.document_length = meta["query_maxlen"], meta["doc_maxlen"]
            self.attend = meta["attend_to_mask_tokens"]
            self.skiplist = {self.tok.encode(p, add_special_tokens=False)[0] for p in string.punctuation}
        else:
            settings = json.loads((path / "config_sentence_transformers.json").read_text())
            self.bert = BertModel.from_pretrained(path)
            self.projection = load_file(str(path / "1_Dense" / "model.safetensors"))["linear.weight"]
            markers = settings["query_prefix"], settings["document_prefix"]
            self.query_length, self.document_length = settings["query_length"], settings["document_length"]
            self.attend = settings["attend_to_expansion_tokens"]
            self.skiplist = {self.tok.convert_tokens_to_ids(w) for w in settings["skiplist_words"]}
        self.document_length = document_length or self.document_length
        self.query_marker, self.document_marker = self.tok.convert_tokens_to_ids(list(markers))
        self.bert = self.bert.double().eval()
        self.projection = self.projection.double()

    def _forward(self, ids: list[int], attention: list[int]) -> np.ndarray:
        with torch.no_grad():
            hidden = self.bert(
                input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention])
            ).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden @ self.projection.T, dim=-1).numpy()

    def query(self, text: str) -> np.ndarray:
        mask = self.tok.mask_token_id
        if self.stanford:
            enc = self.tok(". " + text, max_length=self.query_length, truncation=True, padding="max_length")
            ids, attention = list(enc["input_ids"]), list(enc["attention_mask"])
            ids[1] = self.query_marker
            ids = [mask if i == self.tok.pad_token_id else i for i in ids]
            if self.attend:
                attention = [1 if i == mask else a for i, a in zip(ids, attention)]
        else:
            body = self.tok(text, max_length=self.query_length - 1, truncation=True)["input_ids"]
            pad = self.query_length - 1 - len(body)
            ids = [body[0], self.query_marker, *body[1:]] + [mask] * pad
            attention = [1] * len(ids) if self.attend else [1] * (len(body) + 1) + [0] * pad
        return self._forward(ids, attention)

    def document(self, text: str) -> np.ndarray:
        if self.stanford:
            ids = self.tok(". " + text, max_length=self.document_length, truncation=True)["input_ids"]
            ids[1] = self.document_marker
        else:
            body = self.tok(text, max_length=self.document_length - 1, truncation=True)["input_ids"]
            ids = [body[0], self.document_marker, *body[1:]]
        embeddings = self._forward(ids, [1] * len(ids))
        return embeddings[[i not in self.skiplist for i in ids]]

    def score(self, query: str, document: str) -> float:
        return float((self.query(query) @ self.document(document).T).max(axis=1).sum())


@pytest.fixture(scope="session")
def colbert_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("colbert")
    # one checkpoint of each attention choice: vLLM encodes the PyLate queries, the transformers forward pass
    # with the expansion masked the Stanford ones
    return {
        "pylate-tiny": build_pylate_colbert(root / "pylate", attend_to_expansion_tokens=True),
        "stanford-tiny": build_stanford_colbert(root / "stanford", attend_to_mask_tokens=False),
    }


@pytest.fixture(scope="session")
def colbert_app(serve_instance, colbert_checkpoints):
    """Both checkpoints, each given by path (the Stanford one with one length overridden), in one app."""
    from ray import serve

    from deployments.app import build_app
    from scoring.late_interaction.formats import load_checkpoint

    # written here first, so the test removes it afterwards (the replicas find it in place)
    layout = load_checkpoint(str(colbert_checkpoints["stanford-tiny"])).engine_path
    args = {
        "models": [
            {"name": "pylate-tiny", "model": str(colbert_checkpoints["pylate-tiny"])},
            {
                "name": "stanford-tiny",
                "model": str(colbert_checkpoints["stanford-tiny"]),
                "max_tokens_per_doc": STANFORD_DOC_LENGTH,
            },
        ],
        "cache": {"document_dtype": "float32"},  # fp16 storage would round scores past 1e-4
    }
    try:
        serve.run(build_app(args), name="colbert-formats", route_prefix="/colbert")
        yield f"{serve_instance}/colbert"
        serve.delete("colbert-formats")
    finally:
        shutil.rmtree(layout, ignore_errors=True)


@pytest.mark.parametrize("model", ["pylate-tiny", "stanford-tiny"])
def test_rerank_scores_equal_the_library_reference(colbert_app, colbert_checkpoints, model):
    stanford = model.startswith("stanford")
    reference = Reference(colbert_checkpoints[model], stanford, STANFORD_DOC_LENGTH if stanford else None)
    for query in QUERIES:
        r = httpx.post(
            f"{colbert_app}/v1/rerank", json={"model": model, "query": query, "documents": DOCUMENTS}, timeout=120
        )
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        for i, document in enumerate(DOCUMENTS):
            assert got[i] == pytest.approx(reference.score(query, document), rel=1e-4), (query, document)


def test_models_show_the_encoding_in_force(colbert_app):
    r = httpx.get(f"{colbert_app}/v1/models", timeout=60)
    assert r.status_code == 200, r.text
    cards = {card["id"]: card["encoding"] for card in r.json()["data"]}
    assert cards["pylate-tiny"] == {
        "format": "pylate",
        "query_prefix": "[unused0]",
        "document_prefix": "[unused1]",
        "query_length": 12,
        "document_length": 20,
        "query_expansion": True,
        "attend_to_expansion_tokens": True,
        "skiplist_words": list(string.punctuation),
        "embedding_dim": 48,
        # the vision fields: null for a text model
        "image_tokens": None,
        "image_document_tokens": None,
        "visual_prompt": None,
        "query_augmentation": None,
        "query_augmentation_count": None,
    }
    stanford = cards["stanford-tiny"]
    assert (stanford["format"], stanford["query_length"], stanford["embedding_dim"]) == ("stanford", 10, 32)
    assert (stanford["document_length"], stanford["attend_to_expansion_tokens"]) == (STANFORD_DOC_LENGTH, False)


@pytest.mark.parametrize("model", ["pylate-tiny", "stanford-tiny"])
def test_reference_equals_sentence_transformers_multi_vector_encoder(colbert_checkpoints, model):
    """The reference above against a second, installed implementation of PyLate's behaviour (sentence-transformers'
    MultiVectorEncoder reads both formats), where it is installed."""
    st = pytest.importorskip("sentence_transformers")
    if not hasattr(st, "MultiVectorEncoder"):
        pytest.skip("sentence-transformers without MultiVectorEncoder")
    path = colbert_checkpoints[model]
    encoder = st.MultiVectorEncoder(str(path), device="cpu")
    reference = Reference(path, model.startswith("stanford"))
    for query in QUERIES:
        q = np.asarray(encoder.encode_query([query])[0], dtype=np.float64)
        for document in DOCUMENTS:
            d = np.asarray(encoder.encode_document([document])[0], dtype=np.float64)
            expected = float((q @ d.T).max(axis=1).sum())
            assert reference.score(query, document) == pytest.approx(expected, rel=1e-5), (query, document)
