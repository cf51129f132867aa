"""End to end over HTTP and through the handle: the default app from serve_config.yaml, real vLLM, real Serve."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Bananas are rich in potassium and grow in tropical climates.",
    "Paris is the capital and largest city of France.",
    "The stock market closed higher on Tuesday.",
    "Photosynthesis converts light energy into chemical energy.",
]
PARIS = 1


@pytest.fixture(scope="module")
def client(default_app):
    url, _ = default_app
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def handle(default_app):
    return default_app[1]


def post(client: httpx.Client, path: str, body) -> httpx.Response:
    return client.post(path, json=body)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_ranks_paris_first(client, path):
    r = post(client, path, {"query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "minilm-colbert"
    results = body["results"]
    assert [x["index"] for x in results][0] == PARIS
    assert sorted(x["index"] for x in results) == list(range(len(DOCUMENTS)))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert all(x["document"]["text"] == DOCUMENTS[x["index"]] for x in results)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(DOCUMENTS) * 2

    # one document given as a string alone, as vLLM's server takes it: a list of one
    one = post(client, path, {"query": QUERY, "documents": DOCUMENTS[PARIS]})
    assert one.status_code == 200, one.text
    assert [(x["index"], x["document"]["text"]) for x in one.json()["results"]] == [(0, DOCUMENTS[PARIS])]
    assert one.json()["results"][0]["relevance_score"] == pytest.approx(scores[0], rel=1e-5)


def test_top_n_and_document_objects(client):
    docs = [{"text": d} for d in DOCUMENTS]
    r = post(client, "/v1/rerank", {"query": QUERY, "documents": docs, "top_n": 2, "return_documents": False})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    assert results[0]["index"] == PARIS
    assert "document" not in results[0]
    full = post(client, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 0}).json()["results"]
    assert len(full) == len(DOCUMENTS)
    assert [x["index"] for x in full[:2]] == [x["index"] for x in results]


def test_v2_rerank_cohere_shape(client):
    r = post(client, "/v2/rerank", {"model": "minilm-colbert", "query": QUERY, "documents": DOCUMENTS, "top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 3 and body["results"][0]["index"] == PARIS
    assert "document" not in body["results"][0]  # Cohere's default: return_documents=false
    assert body["meta"]["tokens"]["input_tokens"] > 0
    with_docs = post(client, "/v2/rerank", {"query": QUERY, "documents": DOCUMENTS, "return_documents": True})
    assert with_docs.json()["results"][0]["document"] == {"text": DOCUMENTS[PARIS]}


def test_max_tokens_per_doc_truncates(client):
    long_doc = "Paris is the capital of France. " + "filler words that go on and on " * 40
    full = post(client, "/v2/rerank", {"query": QUERY, "documents": [long_doc]}).json()
    short = post(client, "/v2/rerank", {"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 12}).json()
    assert short["meta"]["tokens"]["input_tokens"] < full["meta"]["tokens"]["input_tokens"]
    assert short["results"][0]["relevance_score"] != full["results"][0]["relevance_score"]


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_shapes(client, path):
    one_to_n = post(client, path, {"queries": QUERY, "documents": DOCUMENTS})
    assert one_to_n.status_code == 200, one_to_n.text
    data = one_to_n.json()["data"]
    assert [d["index"] for d in data] == list(range(len(DOCUMENTS)))
    assert max(range(len(data)), key=lambda i: data[i]["score"]) == PARIS

    one_to_one = post(client, path, {"queries": QUERY, "documents": DOCUMENTS[PARIS]}).json()["data"]
    assert one_to_one[0]["score"] == pytest.approx(data[PARIS]["score"], rel=1e-5)

    pairs = post(client, path, {"queries": [QUERY, "how do plants make energy?"], "documents": [DOCUMENTS[PARIS], DOCUMENTS[3]]})
    assert pairs.status_code == 200, pairs.text
    pair_scores = [d["score"] for d in pairs.json()["data"]]
    assert pair_scores[0] == pytest.approx(data[PARIS]["score"], rel=1e-5)
    plants = post(client, path, {"queries": "how do plants make energy?", "documents": [DOCUMENTS[3]]}).json()
    assert pair_scores[1] == pytest.approx(plants["data"][0]["score"], rel=1e-5)

    # vLLM's other spellings of the pair (text_1/text_2 is what its older clients send)
    for first, second in (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "items")):
        other = post(client, path, {first: QUERY, second: DOCUMENTS})
        assert other.status_code == 200, other.text
        assert [d["score"] for d in other.json()["data"]] == pytest.approx([d["score"] for d in data], rel=1e-5)


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["minilm-colbert"]
    encoding = models["data"][0]["encoding"]  # a plain encoder, serve_config.yaml's lengths in force
    assert (encoding["format"], encoding["query_prefix"], encoding["query_expansion"]) == ("plain", "", False)
    assert (encoding["query_length"], encoding["document_length"], encoding["embedding_dim"]) == (64, 256, 384)
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_second_request_hits_query_cache(client, handle):
    query = "which river flows through Paris?"
    docs = ["The Seine flows through Paris.", "The Thames flows through London."]
    before = handle.scorer_stats.remote().result()["query_cache"]
    first = post(client, "/v1/rerank", {"query": query, "documents": docs}).json()
    middle = handle.scorer_stats.remote().result()["query_cache"]
    second = post(client, "/v1/rerank", {"query": query, "documents": docs}).json()
    after = handle.scorer_stats.remote().result()["query_cache"]
    assert middle["entries"] == before["entries"] + 1
    assert after["hits"] > middle["hits"]
    assert after["entries"] == middle["entries"]
    assert first["results"] == second["results"]


def test_seen_documents_skip_the_encoder(client, handle):
    docs = ["A unique document about glaciers carving fjords.", "Another one, about volcanic islands."]
    first = post(client, "/v1/rerank", {"query": "how are fjords formed?", "documents": docs}).json()
    middle = handle.scorer_stats.remote().result()["document_cache"]
    again = post(client, "/v1/rerank", {"query": "what forms islands?", "documents": docs}).json()
    after = handle.scorer_stats.remote().result()["document_cache"]
    assert after["hits"] == middle["hits"] + 2
    assert after["entries"] == middle["entries"]
    repeat = post(client, "/v1/rerank", {"query": "how are fjords formed?", "documents": docs}).json()
    assert repeat["results"] == first["results"]  # cached documents score exactly as fresh ones
    assert again["results"] != first["results"]


def test_handle_matches_http(client, handle):
    from scoring.api.protocol import RerankRequest, ScoreRequest

    body = {"query": QUERY, "documents": DOCUMENTS, "top_n": 3}
    http = post(client, "/v1/rerank", body).json()
    from_dict = handle.rerank.remote(body).result()
    from_model = handle.rerank.remote(RerankRequest(**body)).result()
    for response in (from_dict, from_model):
        assert response.model_dump(exclude_none=True)["results"] == http["results"]
    score_http = post(client, "/v1/score", {"queries": QUERY, "documents": DOCUMENTS}).json()
    score_handle = handle.score.remote(ScoreRequest(queries=QUERY, documents=DOCUMENTS)).result()
    assert [d.score for d in score_handle.data] == [d["score"] for d in score_http["data"]]
    v2 = handle.rerank_v2.remote({"query": QUERY, "documents": DOCUMENTS}).result()
    assert [r.index for r in v2.results][:3] == [r["index"] for r in http["results"]]


BAD_REQUESTS = [
    ("/v1/rerank", {"query": "", "documents": DOCUMENTS}, 422, "query"),
    ("/v1/rerank", {"query": "   ", "documents": DOCUMENTS}, 422, "query"),
    ("/v2/rerank", {"query": QUERY, "documents": "not a list"}, 422, "documents"),  # Cohere's shape: a list only
    ("/v1/rerank", {"query": QUERY, "documents": {"not": "a list"}}, 422, "documents"),
    ("/v1/rerank", {"query": QUERY, "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": QUERY, "documents": ["x"] * 1001}, 413, "1001 documents"),
    ("/v1/rerank", {"model": "no-such-model", "query": QUERY, "documents": DOCUMENTS}, 404, "no-such-model"),
    ("/v1/rerank", {"query": 42, "documents": DOCUMENTS}, 422, "query"),
    ("/v1/rerank", {"query": QUERY, "documents": [1, 2]}, 422, "documents"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": -1}, 422, "top_n"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": "3"}, 422, "top_n"),
    ("/v1/rerank", {"documents": DOCUMENTS}, 422, "query"),
    ("/v1/rerank", [1, 2, 3], 422, ""),
    ("/v2/rerank", {"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 0}, 422, "max_tokens_per_doc"),
    ("/v1/score", {"queries": [QUERY, QUERY, QUERY], "documents": DOCUMENTS}, 422, "equal length"),
    ("/v1/score", {"queries": [], "documents": DOCUMENTS}, 422, "queries"),
    ("/score", {"queries": QUERY, "documents": None}, 422, "documents"),
    ("/v1/rerank", {"query": "q" * 9000, "documents": DOCUMENTS}, 413, "characters"),
]


@pytest.mark.parametrize("path,body,status,mentions", BAD_REQUESTS)
def test_bad_input_is_a_clear_4xx(client, path, body, status, mentions):
    r = post(client, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status
    assert mentions in error["message"]
    assert error["type"]


def test_invalid_json_and_no_content_type(client):
    r = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/rerank", content=b'{"query": "capital of France", "documents": ["Paris"]}')
    assert r.status_code == 200, r.text


def test_bad_handle_call_raises_typed_error(handle):
    from scoring.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="query"):
        handle.rerank.remote({"query": "", "documents": ["x"]}).result()


def test_app_stays_healthy_after_bad_input(client):
    for path, body, _, _ in BAD_REQUESTS:
        post(client, path, body)
    assert client.get("/health").status_code == 200
    r = post(client, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200 and r.json()["results"][0]["index"] == PARIS
