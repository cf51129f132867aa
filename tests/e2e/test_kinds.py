"""Cross-encoders, bi-encoders and cascades of two kinds, end to end through real vLLM engines in real Ray Serve.

One application: the default late-interaction model, a tiny random BERT cross-encoder written here, the packaged
MiniLM as the bi-encoder it was trained as, a tiny Qwen3 generative model, and cascades pairing them. The new
kinds are given by `{name, kind, model}` only. References: sentence-transformers' `CrossEncoder.predict` and
`SentenceTransformer.similarity` on the same checkpoints, and transformers' own forward pass + sigmoid.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from scoring.config import EMBEDDED_MODEL, resolve_model_path
from tests.conftest import default_app_args
from tests.tiny_cross_encoder import (
    build_tiny_cross_encoder,
    build_tiny_modernbert_cross_encoder,
    build_tiny_xlmr_cross_encoder,
)
from tests.tiny_qwen3 import build_tiny_qwen3

pytestmark = pytest.mark.e2e

QUERY = "what is the capital of France?"
LONG = " ".join(f"Paris, the capital of France, has {i} bridges over the Seine." for i in range(60))
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Bananas are rich in potassium and grow in tropical climates.",
    "The stock market closed higher on Tuesday.",
    "Berlin is the capital of Germany.",
    LONG,  # over 128 tokens (the cross-encoder's length) and 256 (MiniLM's max_seq_length)
    "France is a country in Western Europe; its capital is Paris.",
]
CANDIDATES = 3
FP16_DOCUMENTS = 2e-3  # the scorer stores documents as float16 (cache.document_dtype): cosine to ~1e-3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        "cross_encoder": build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder")),
        # XLM-RoBERTa (bge-reranker's architecture), saved by transformers 5: no position_embedding_type in its
        # config, so vLLM takes the position table's 130 for its length where sentence-transformers cuts to 128
        "xlmr_cross_encoder": build_tiny_xlmr_cross_encoder(tmp_path_factory.mktemp("tiny-xlmr-cross-encoder")),
        # ModernBERT (gte-reranker-modernbert's): rotary positions, local attention, pairs of up to 256 tokens
        "modernbert_cross_encoder": build_tiny_modernbert_cross_encoder(tmp_path_factory.mktemp("tiny-modernbert")),
        "generative": build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3")),
    }


@pytest.fixture(scope="module")
def kinds_app(serve_instance, checkpoints):
    from ray import serve

    from deployments.app import build_app

    args = {
        "models": [
            default_app_args()["models"][0],
            {"name": "tiny-ce", "kind": "cross_encoder", "model": str(checkpoints["cross_encoder"])},
            {"name": "tiny-xlmr-ce", "kind": "cross_encoder", "model": str(checkpoints["xlmr_cross_encoder"])},
            {"name": "tiny-modernbert-ce", "kind": "cross_encoder",
             "model": str(checkpoints["modernbert_cross_encoder"])},
            {"name": "minilm-bi", "kind": "bi_encoder", "model": EMBEDDED_MODEL},
            {"name": "tiny-qwen3", "kind": "generative", "model": str(checkpoints["generative"])},
            {"name": "colbert-then-ce", "kind": "cascade", "first": "minilm-colbert", "then": "tiny-ce",
             "candidates": CANDIDATES},
            {"name": "bi-then-ce", "kind": "cascade", "first": "minilm-bi", "then": "tiny-ce",
             "candidates": CANDIDATES},
            {"name": "ce-then-qwen3", "kind": "cascade", "first": "tiny-ce", "then": "tiny-qwen3",
             "candidates": CANDIDATES},
        ]
    }
    handle = serve.run(build_app(args), name="kinds", route_prefix="/kinds")
    yield f"{serve_instance}/kinds", handle
    serve.delete("kinds")


@pytest.fixture(scope="module")
def client(kinds_app):
    with httpx.Client(base_url=kinds_app[0], timeout=300) as c:
        yield c


def cross_encoder_scores(path, max_length: int = 128):
    """sentence-transformers' CrossEncoder on the checkpoint, and transformers' forward + sigmoid beside it (pairs
    cut to `max_length`, the checkpoint's)."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    st = CrossEncoder(str(path), device="cpu")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def scores(query: str, documents: list[str]) -> np.ndarray:
        predicted = st.predict([(query, d) for d in documents], convert_to_numpy=True)
        encoded = tokenizer([query] * len(documents), documents, truncation="only_second", max_length=max_length,
                            padding=True, return_tensors="pt")
        with torch.no_grad():
            own = torch.sigmoid(model(**encoded).logits[:, 0]).numpy()
        np.testing.assert_allclose(predicted, own, atol=1e-6)  # the two references agree
        return own.astype(np.float64)

    def tokens(query: str, documents: list[str]) -> int:
        encoded = tokenizer([query] * len(documents), documents, truncation="only_second", max_length=max_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    scores.tokens = tokens
    return scores


@pytest.fixture(scope="module")
def cross_encoder_reference(checkpoints):
    return cross_encoder_scores(checkpoints["cross_encoder"])


@pytest.fixture(scope="module")
def bi_encoder_reference():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_model_path(EMBEDDED_MODEL), device="cpu")

    def scores(query: str, documents: list[str]) -> np.ndarray:
        return st.similarity(st.encode([query]), st.encode(documents))[0].double().numpy()

    def tokens(query: str, documents: list[str]) -> int:
        """Input tokens of the query and the documents as sentence-transformers tokenizes them (what usage counts)."""
        encoded = st.tokenizer([query, *documents], truncation=True, max_length=st.max_seq_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    scores.tokens = tokens
    return scores


def rerank(client, model: str, query: str = QUERY, documents=DOCUMENTS, **options) -> dict:
    r = client.post("/v1/rerank", json={"model": model, "query": query, "documents": documents, **options})
    assert r.status_code == 200, r.text
    return r.json()


def by_index(results: list[dict]) -> list[float]:
    return [x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])]


def test_models_list_every_kind(client):
    kinds = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert kinds["tiny-ce"] == "cross_encoder" and kinds["minilm-bi"] == "bi_encoder"
    assert kinds["bi-then-ce"] == "cascade"


def test_cross_encoder_matches_sentence_transformers(client, cross_encoder_reference):
    expected = cross_encoder_reference(QUERY, DOCUMENTS)
    assert len(set(np.round(expected, 4))) == len(DOCUMENTS)  # the check would see a wrong order
    body = rerank(client, "tiny-ce", top_n=4, return_documents=True)
    order = list(np.argsort(-expected, kind="stable"))
    assert [x["index"] for x in body["results"]] == order[:4]
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-5)
        assert x["document"]["text"] == DOCUMENTS[x["index"]]
    tokens = cross_encoder_reference.tokens(QUERY, DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    for route in ("/rerank", "/v2/rerank"):
        r = client.post(route, json={"model": "tiny-ce", "query": QUERY, "documents": DOCUMENTS})
        assert r.status_code == 200, r.text
        assert by_index(r.json()["results"]) == pytest.approx(expected, abs=1e-5)
    v2 = client.post("/v2/rerank", json={"model": "tiny-ce", "query": QUERY, "documents": DOCUMENTS}).json()
    assert v2["meta"]["tokens"]["input_tokens"] == tokens and "document" not in v2["results"][0]


@pytest.mark.parametrize("model, checkpoint, max_length", [
    # bge-reranker's architecture: `<s> q </s></s> d </s>`, no token types, positions after the padding id; the
    # long document cut where sentence-transformers cuts it (128 tokens, not the 130 of the table vLLM reports)
    ("tiny-xlmr-ce", "xlmr_cross_encoder", 128),
    # gte-reranker-modernbert's: rotary positions, 64-token local attention over a 256-token pair
    ("tiny-modernbert-ce", "modernbert_cross_encoder", 256),
])
def test_other_cross_encoder_families_match_sentence_transformers(client, checkpoints, model, checkpoint, max_length):
    reference = cross_encoder_scores(checkpoints[checkpoint], max_length)
    expected = reference(QUERY, DOCUMENTS)
    assert len(set(np.round(expected, 4))) == len(DOCUMENTS)
    body = rerank(client, model)
    assert by_index(body["results"]) == pytest.approx(expected, abs=1e-5)
    tokens = reference.tokens(QUERY, DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_cross_encoder_score_pairs(client, cross_encoder_reference):
    queries = [QUERY, "where do bananas grow?", QUERY]
    pairs = DOCUMENTS[:3]
    for route in ("/v1/score", "/score"):
        r = client.post(route, json={"model": "tiny-ce", "queries": queries, "documents": pairs})
        assert r.status_code == 200, r.text
        expected = [cross_encoder_reference(q, [d])[0] for q, d in zip(queries, pairs)]
        assert [d["score"] for d in r.json()["data"]] == pytest.approx(expected, abs=1e-5)
    one_to_many = client.post("/v1/score", json={"model": "tiny-ce", "queries": QUERY, "documents": DOCUMENTS})
    assert [d["score"] for d in one_to_many.json()["data"]] == pytest.approx(
        cross_encoder_reference(QUERY, DOCUMENTS), abs=1e-5
    )


def test_cross_encoder_document_limit_and_concurrency(client, cross_encoder_reference, checkpoints):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoints["cross_encoder"])
    cut = tokenizer.decode(tokenizer.encode(LONG, add_special_tokens=False)[:20])
    body = rerank(client, "tiny-ce", documents=[LONG], max_tokens_per_doc=20)
    assert by_index(body["results"]) == pytest.approx(cross_encoder_reference(QUERY, [cut]), abs=1e-5)

    queries = [f"question {i}: where is {['Paris', 'Berlin'][i % 2]}?" for i in range(8)]
    with ThreadPoolExecutor(len(queries)) as pool:
        concurrent = list(pool.map(lambda q: by_index(rerank(client, "tiny-ce", q)["results"]), queries))
    for query, scores in zip(queries, concurrent):
        assert scores == pytest.approx(cross_encoder_reference(query, DOCUMENTS), abs=1e-5)


def test_bi_encoder_matches_sentence_transformers(client, bi_encoder_reference):
    expected = bi_encoder_reference(QUERY, DOCUMENTS)
    body = rerank(client, "minilm-bi")
    assert by_index(body["results"]) == pytest.approx(expected, abs=FP16_DOCUMENTS)
    assert [x["index"] for x in body["results"]] == list(np.argsort(-expected, kind="stable"))
    queries = [QUERY, "where do bananas grow?"]
    for route in ("/v1/score", "/score"):
        r = client.post(route, json={"model": "minilm-bi", "queries": queries, "documents": DOCUMENTS[:2]})
        assert r.status_code == 200, r.text
        expected_pairs = [bi_encoder_reference(q, [d])[0] for q, d in zip(queries, DOCUMENTS[:2])]
        assert [d["score"] for d in r.json()["data"]] == pytest.approx(expected_pairs, abs=FP16_DOCUMENTS)
    v2 = client.post("/v2/rerank", json={"model": "minilm-bi", "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert [x["index"] for x in v2.json()["results"]] == list(np.argsort(-expected, kind="stable"))[:2]
    tokens = bi_encoder_reference.tokens(QUERY, DOCUMENTS)  # one vector a text, but every token counted
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert v2.json()["meta"]["tokens"]["input_tokens"] == tokens


def test_bi_encoder_vectors_go_through_the_scorer_caches(client, kinds_app, bi_encoder_reference):
    documents = [f"a document about the number {i}" for i in range(5)]
    before = kinds_app[1].scorer_stats.remote().result()
    first = rerank(client, "minilm-bi", "a fresh query about numbers", documents)
    again = rerank(client, "minilm-bi", "a fresh query about numbers", documents)
    after = kinds_app[1].scorer_stats.remote().result()
    assert by_index(again["results"]) == by_index(first["results"])
    tokens = bi_encoder_reference.tokens("a fresh query about numbers", documents)
    assert first["usage"]["prompt_tokens"] == again["usage"]["prompt_tokens"] == tokens  # cached: the same count
    assert after["query_cache"]["hits"] - before["query_cache"]["hits"] >= 1
    assert after["document_cache"]["hits"] - before["document_cache"]["hits"] >= len(documents)


def cascade_expected(first: dict, second_scores: dict[int, float]) -> tuple[list[int], dict[int, float]]:
    """The order and scores a cascade gives: the first stage's best by second-stage score, then the rest."""
    ranked = [x["index"] for x in first["results"]]
    shortlist, rest = ranked[:CANDIDATES], ranked[CANDIDATES:]
    scores = {x["index"]: x["relevance_score"] for x in first["results"]} | second_scores
    return sorted(shortlist, key=lambda i: -second_scores[i]) + rest, scores


@pytest.mark.parametrize(
    "cascade,first_model", [("colbert-then-ce", "minilm-colbert"), ("bi-then-ce", "minilm-bi")]
)
def test_cascade_into_the_cross_encoder(client, cross_encoder_reference, cascade, first_model):
    first = rerank(client, first_model)
    shortlist = [x["index"] for x in first["results"]][:CANDIDATES]
    second = dict(zip(shortlist, cross_encoder_reference(QUERY, [DOCUMENTS[i] for i in shortlist])))
    order, scores = cascade_expected(first, second)
    body = rerank(client, cascade)
    assert [x["index"] for x in body["results"]] == order
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(scores[x["index"]], abs=FP16_DOCUMENTS)
    ce_tokens = cross_encoder_reference.tokens(QUERY, [DOCUMENTS[i] for i in shortlist])
    assert body["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"] + ce_tokens
    top = client.post("/v2/rerank", json={"model": cascade, "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert [x["index"] for x in top.json()["results"]] == order[:2]


def test_cascade_from_the_cross_encoder_into_the_generative_model(client):
    first = rerank(client, "tiny-ce")
    shortlist = [x["index"] for x in first["results"]][:CANDIDATES]
    generative = rerank(client, "tiny-qwen3", documents=[DOCUMENTS[i] for i in shortlist])
    second = {shortlist[x["index"]]: x["relevance_score"] for x in generative["results"]}
    order, scores = cascade_expected(first, second)
    body = rerank(client, "ce-then-qwen3")
    assert [x["index"] for x in body["results"]] == order
    assert by_index(body["results"]) == pytest.approx([scores[i] for i in range(len(DOCUMENTS))], abs=1e-5)
    assert body["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"] + generative["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    "path,body,status,mentions",
    [
        ("/v1/rerank", {"model": "tiny-ce", "query": "", "documents": DOCUMENTS}, 422, "query"),
        ("/v1/rerank", {"model": "minilm-bi", "query": QUERY, "documents": []}, 422, "documents"),
        ("/v1/score", {"model": "bi-then-ce", "queries": QUERY, "documents": DOCUMENTS}, 400, "cascade"),
        ("/generative_scoring", {"model": "tiny-ce", "query": QUERY, "items": ["x"], "label_token_ids": [1]}, 400,
         "cross_encoder"),
    ],
)
def test_bad_input_is_a_clear_4xx(client, path, body, status, mentions):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert mentions in r.json()["error"]["message"]
