"""Cross-encoders, bi-encoders and cascades of two kinds, end to end through real vLLM engines in real Ray Serve.

One application, shared with test_generative (tests/e2e/shared_app.py): the default late-interaction model, tiny
random cross-encoders (BERT, XLM-RoBERTa, ModernBERT) written there, the packaged MiniLM as the bi-encoder it was
trained as, a tiny Qwen3 generative model (`tiny-qwen3-raw`, the raw template), and cascades pairing them. The new
kinds are given by `{name, kind, model}` only. References: sentence-transformers' `CrossEncoder.predict` and
`SentenceTransformer.similarity` on the same checkpoints, and transformers' own forward pass + sigmoid.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path
from tests.e2e.shared_app import CANDIDATES, CHUNK_OVERLAP

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
FP16_DOCUMENTS = 2e-3  # the scorer stores documents as float16 (cache.document_dtype): cosine to ~1e-3


@pytest.fixture(scope="module")
def checkpoints(shared_checkpoints):
    return shared_checkpoints


@pytest.fixture(scope="module")
def kinds_app(shared_app):
    return shared_app


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

    def scores(query: str, documents: list[str], prompt: str | None = None) -> np.ndarray:
        return st.similarity(st.encode([query], prompt=prompt), st.encode(documents))[0].double().numpy()

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
    generative = rerank(client, "tiny-qwen3-raw", documents=[DOCUMENTS[i] for i in shortlist])
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


# Long documents: windows of the model's document length, a document scored as its best window.

RELEVANT = "Paris is the capital and largest city of France."
FILLER = ("the old river road runs past green fields and quiet farms while the morning wind moves slowly over "
          "hills near small towns").split()
# less relevant than the 4th window for both trained kinds, more than the filler windows
CHUNK_DISTRACTORS = ["Lyon is a large city.", "Bananas are rich in potassium."]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))


def five_windows(tokenizer, window: int) -> tuple[str, list[tuple[int, int]]]:
    """A document of filler words (one token each) whose 5 windows of `window` tokens (overlapping by
    CHUNK_OVERLAP) hold RELEVANT in the 4th only; returns it and the windows' character spans."""
    stride = window - CHUNK_OVERLAP
    relevant_at = 3 * stride + CHUNK_OVERLAP + 1  # after the 3rd window's end, ending before the 5th's start
    relevant_tokens = len(tokenizer.tokenize(RELEVANT))
    assert relevant_at + relevant_tokens <= 4 * stride
    total = 4 * stride + window
    words = [FILLER[i % len(FILLER)] for i in range(total - relevant_tokens)]
    text = " ".join(words[:relevant_at] + [RELEVANT] + words[relevant_at:])
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == total  # every filler word is one token
    spans = []
    for k in range(5):
        first, last = k * stride, min(k * stride + window, total)
        spans.append((offsets[first][0], offsets[last - 1][1]))
    assert [RELEVANT in text[s:e] for s, e in spans] == [False, False, False, True, False]
    return text, spans


# (model, max_tokens_per_doc, window): a late-interaction or bi-encoder document's limit counts [CLS] and [SEP];
# a cross-encoder's or generative model's counts the document's own tokens
CHUNKED_KINDS = [("minilm-colbert", 32, 30), ("minilm-bi", 32, 30), ("tiny-ce", 30, 30), ("tiny-qwen3-raw", 30, 30)]


@pytest.mark.parametrize("model,max_tokens_per_doc,window", CHUNKED_KINDS)
def test_long_document_scored_as_its_best_window(client, minilm_tokenizer, model, max_tokens_per_doc, window):
    text, spans = five_windows(minilm_tokenizer, window)
    documents = [*CHUNK_DISTRACTORS, text]
    options = {"max_tokens_per_doc": max_tokens_per_doc, "top_n": 0}
    chunked = rerank(client, model, documents=documents, long_documents="chunk", **options)
    # the windows sent as documents of their own: the same scores, the same usage
    expanded = rerank(client, model, documents=[*CHUNK_DISTRACTORS, *(text[s:e] for s, e in spans)], **options)
    window_scores = by_index(expanded["results"])[2:]
    best = int(np.argmax(window_scores))
    result = next(x for x in chunked["results"] if x["index"] == 2)
    assert result["relevance_score"] == pytest.approx(window_scores[best], rel=1e-6, abs=1e-6)
    assert (result["chunk"]["start"], result["chunk"]["end"]) == spans[best]
    assert result["document"]["text"] == text  # the whole document comes back
    for short in (x for x in chunked["results"] if x["index"] < 2):  # a short document is one window: itself
        assert short["chunk"] == {"start": 0, "end": len(CHUNK_DISTRACTORS[short["index"]])}
        assert short["relevance_score"] == pytest.approx(by_index(expanded["results"])[short["index"]], abs=1e-6)
    assert chunked["usage"] == expanded["usage"]

    truncated = rerank(client, model, documents=documents, **options)
    assert "chunk" not in truncated["results"][0]
    if model.startswith("minilm"):  # a trained model: the relevant window ranks its document first
        assert best == 3
        assert chunked["results"][0]["index"] == 2
        assert truncated["results"][0]["index"] != 2


def test_chunked_document_on_score_and_v2(client, minilm_tokenizer):
    text, spans = five_windows(minilm_tokenizer, 30)
    body = {"model": "minilm-colbert", "max_tokens_per_doc": 32, "long_documents": "chunk"}
    score = client.post("/v1/score", json={**body, "queries": QUERY, "documents": [CHUNK_DISTRACTORS[0], text]})
    assert score.status_code == 200, score.text
    data = score.json()["data"]
    assert data[1]["chunk"] == {"start": spans[3][0], "end": spans[3][1]}
    alone = client.post("/v1/score", json={**body, "queries": QUERY, "documents": text[spans[3][0]:spans[3][1]]})
    assert data[1]["score"] == alone.json()["data"][0]["score"]
    v2 = client.post("/v2/rerank", json={**body, "query": QUERY, "documents": [CHUNK_DISTRACTORS[0], text]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["results"][0] == {"index": 1, "relevance_score": data[1]["score"],
                                       "chunk": {"start": spans[3][0], "end": spans[3][1]}}
    plain = client.post("/v1/score", json={"model": "minilm-colbert", "queries": QUERY, "documents": ["x"]})
    assert "chunk" not in plain.json()["data"][0]


def test_too_many_windows_is_a_413_naming_the_document(client, minilm_tokenizer):
    text, _ = five_windows(minilm_tokenizer, 30)
    r = client.post("/v1/rerank", json={"model": "minilm-colbert", "query": QUERY, "documents": ["a", text],
                                        "long_documents": "chunk", "max_tokens_per_doc": 32, "max_chunks_per_doc": 4})
    assert r.status_code == 413, r.text
    assert "documents[1]" in r.json()["error"]["message"] and "max_chunks_per_doc (4)" in r.json()["error"]["message"]


@pytest.mark.parametrize("cascade,first_model", [("colbert-then-ce", "minilm-colbert"), ("bi-then-ce", "minilm-bi")])
def test_cascade_chunks_in_its_first_stage_and_rescores_the_winning_window(
    client, minilm_tokenizer, cross_encoder_reference, cascade, first_model
):
    text, spans = five_windows(minilm_tokenizer, 30)
    documents = [*CHUNK_DISTRACTORS, "Berlin is the capital of Germany.", "The stock market closed higher.", text]
    options = {"max_tokens_per_doc": 32, "long_documents": "chunk"}
    first = rerank(client, first_model, documents=documents, **options)
    shortlist = [x["index"] for x in first["results"]][:CANDIDATES]
    assert 4 in shortlist
    window_of = {x["index"]: documents[x["index"]][x["chunk"]["start"]:x["chunk"]["end"]] for x in first["results"]}
    assert window_of[4] == text[spans[3][0]:spans[3][1]]
    # the second stage sees each candidate's winning window
    second = dict(zip(shortlist, cross_encoder_reference(QUERY, [window_of[i] for i in shortlist])))
    order, _ = cascade_expected(first, second)
    body = rerank(client, cascade, documents=documents, **options)
    assert [x["index"] for x in body["results"]] == order
    for x in body["results"]:
        assert x["chunk"] == next(f["chunk"] for f in first["results"] if f["index"] == x["index"])
        if x["index"] in second:
            assert x["relevance_score"] == pytest.approx(second[x["index"]], abs=1e-5)
    if cascade == "colbert-then-ce":  # the config's default: chunk unless the request says truncate
        default = rerank(client, "colbert-then-ce-chunked", documents=documents, max_tokens_per_doc=32)
        assert [x["chunk"] for x in default["results"]] == [x["chunk"] for x in body["results"]]
        off = rerank(client, "colbert-then-ce-chunked", documents=documents, max_tokens_per_doc=32,
                     long_documents="truncate")
        assert "chunk" not in off["results"][0]


# Records scored by their rank_fields; per-request instructions.

RECORDS = [
    {"title": "Paris", "text": "Paris is the capital and largest city of France.", "url": "https://example.org/p",
     "views": 3},
    {"title": "Bananas", "text": "Bananas are rich in potassium.", "url": "https://example.org/b", "views": 1},
]


def record_lines(record: dict, fields: list[str]) -> str:
    return "\n".join(f"{field}: {record[field]}" for field in fields)


@pytest.mark.parametrize("model", ["minilm-colbert", "tiny-ce"])
def test_records_are_scored_by_their_rank_fields_on_every_route(client, model):
    for fields in (["title", "text"], ["text", "title"], ["url"]):
        expected = by_index(rerank(client, model, documents=[record_lines(r, fields) for r in RECORDS])["results"])
        v1 = rerank(client, model, documents=RECORDS, rank_fields=fields)
        assert by_index(v1["results"]) == pytest.approx(expected, abs=1e-6)
        assert all(x["document"] == RECORDS[x["index"]] for x in v1["results"])  # echoed unchanged
        v2 = client.post("/v2/rerank", json={"model": model, "query": QUERY, "documents": RECORDS,
                                             "rank_fields": fields, "return_documents": True})
        assert v2.status_code == 200, v2.text
        assert by_index(v2.json()["results"]) == pytest.approx(expected, abs=1e-6)
        assert all(x["document"] == RECORDS[x["index"]] for x in v2.json()["results"])
        score = client.post("/v1/score", json={"model": model, "queries": QUERY, "documents": RECORDS,
                                               "rank_fields": fields})
        assert score.status_code == 200, score.text
        assert [d["score"] for d in score.json()["data"]] == pytest.approx(expected, abs=1e-6)
    # a record that is long is chunked like any document: its span is within its rank_fields text
    long = {"title": "Rivers", "text": " ".join(FILLER * 8)}
    chunked = rerank(client, model, documents=[long], rank_fields=["title", "text"], long_documents="chunk",
                     max_tokens_per_doc=32)
    span = chunked["results"][0]["chunk"]
    assert 0 <= span["start"] < span["end"] <= len(record_lines(long, ["title", "text"]))
    assert chunked["results"][0]["document"] == long


BAD_RECORDS = [
    ({"documents": RECORDS, "rank_fields": ["title", "summary"]}, "documents[0] has no field 'summary'"),
    ({"documents": RECORDS, "rank_fields": ["views"]}, "documents[0].views is int"),
    ({"documents": [RECORDS[0], {"title": None}], "rank_fields": ["title"]}, "documents[1].title is NoneType"),
    ({"documents": RECORDS, "rank_fields": []}, "rank_fields"),
    ({"documents": [RECORDS[0], "a plain string"], "rank_fields": ["title"]}, "documents[1] is a string"),
    ({"documents": [{"title": "no text"}]}, "documents[0] has no `text` field"),
    ({"documents": RECORDS, "rank_fields": "title"}, "rank_fields"),
]


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/v1/score"])
@pytest.mark.parametrize("body,mentions", BAD_RECORDS)
def test_bad_records_are_a_422_naming_the_document_and_field(client, route, body, mentions):
    query = {"queries": QUERY} if route == "/v1/score" else {"query": QUERY}
    r = client.post(route, json={"model": "minilm-colbert", **query, **body})
    assert r.status_code == 422, r.text
    assert mentions in r.json()["error"]["message"]


INSTRUCTION = "Represent this question for finding the city it asks about: "


def test_instruction_is_the_bi_encoders_query_prompt_on_every_route(client, kinds_app, bi_encoder_reference):
    expected = bi_encoder_reference(QUERY, DOCUMENTS, prompt=INSTRUCTION)
    plain = bi_encoder_reference(QUERY, DOCUMENTS)
    assert np.abs(expected - plain).max() > 10 * FP16_DOCUMENTS  # the check would see the prompt missing
    before = kinds_app[1].scorer_stats.remote().result()
    for _ in range(2):  # the second request finds the instructed query in the cache
        body = rerank(client, "minilm-bi", instruction=INSTRUCTION)
        assert by_index(body["results"]) == pytest.approx(expected, abs=FP16_DOCUMENTS)
    after = kinds_app[1].scorer_stats.remote().result()
    assert after["query_cache"]["hits"] - before["query_cache"]["hits"] >= 1
    # the cache is keyed by the instruction: the same query without one is the model's own prompt
    assert by_index(rerank(client, "minilm-bi")["results"]) == pytest.approx(plain, abs=FP16_DOCUMENTS)
    v2 = client.post("/v2/rerank", json={"model": "minilm-bi", "query": QUERY, "documents": DOCUMENTS,
                                         "instruction": INSTRUCTION})
    assert by_index(v2.json()["results"]) == pytest.approx(expected, abs=FP16_DOCUMENTS)
    score = client.post("/v1/score", json={"model": "minilm-bi", "queries": QUERY, "documents": DOCUMENTS,
                                           "instruction": INSTRUCTION})
    assert [d["score"] for d in score.json()["data"]] == pytest.approx(expected, abs=FP16_DOCUMENTS)
    # a cascade hands it to the stage that takes one (the bi-encoder here)
    cascade = rerank(client, "bi-then-ce", instruction=INSTRUCTION)
    first = rerank(client, "minilm-bi", instruction=INSTRUCTION)
    shortlist = {x["index"] for x in first["results"][:CANDIDATES]}
    assert {x["index"] for x in cascade["results"][:CANDIDATES]} == shortlist


@pytest.mark.parametrize(
    "route,model",
    [(route, model) for route in ("/v1/rerank", "/v2/rerank", "/v1/score")
     for model in ("minilm-colbert", "tiny-ce", "tiny-qwen3-raw")] + [("/v1/rerank", "colbert-then-ce")],
)
def test_instruction_for_a_model_without_a_slot_is_a_400_naming_it(client, route, model):
    query = {"queries": QUERY} if route == "/v1/score" else {"query": QUERY}
    r = client.post(route, json={"model": model, **query, "documents": DOCUMENTS, "instruction": "Find it"})
    assert r.status_code == 400, r.text
    assert f"model {model!r}" in r.json()["error"]["message"] and "takes no instruction" in r.json()["error"]["message"]


def test_handle_methods_take_the_same_fields(client, kinds_app, minilm_tokenizer):
    handle = kinds_app[1]
    text, spans = five_windows(minilm_tokenizer, 30)
    chunked = {"model": "minilm-colbert", "query": QUERY, "documents": [CHUNK_DISTRACTORS[0], text],
               "long_documents": "chunk", "max_tokens_per_doc": 32}
    over_http = client.post("/v1/rerank", json=chunked).json()
    by_handle = handle.rerank.remote(chunked).result()
    assert [(r.index, r.relevance_score, r.chunk.start, r.chunk.end) for r in by_handle.results] == [
        (r["index"], r["relevance_score"], r["chunk"]["start"], r["chunk"]["end"]) for r in over_http["results"]
    ]
    v2 = handle.rerank_v2.remote({"model": "minilm-colbert", "query": QUERY, "documents": RECORDS,
                                  "rank_fields": ["title", "text"], "return_documents": True}).result()
    assert [r.document for r in sorted(v2.results, key=lambda r: r.index)] == RECORDS
    score = handle.score.remote({"model": "minilm-bi", "queries": QUERY, "documents": DOCUMENTS,
                                 "instruction": INSTRUCTION}).result()
    http_score = client.post("/v1/score", json={"model": "minilm-bi", "queries": QUERY, "documents": DOCUMENTS,
                                                "instruction": INSTRUCTION}).json()
    assert [d.score for d in score.data] == [d["score"] for d in http_score["data"]]
    with pytest.raises(Exception, match="takes no instruction"):
        handle.rerank.remote({"model": "tiny-ce", "query": QUERY, "documents": DOCUMENTS, "instruction": "x"}).result()
