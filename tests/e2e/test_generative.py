"""Generative scoring end to end: a tiny Qwen3 CausalLM (tests/e2e/conftest.py builds it), served by real vLLM in
real Ray Serve in the app this file shares with test_kinds, against a `transformers` forward pass on the same prompt
ids; and the cascade, stage by stage."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from tests.e2e.shared_app import CANDIDATES
from tests.e2e.shared_app import NAME as SHARED_APP
from tests.scoring.generative.test_templates import qwen3_reference_text

pytestmark = pytest.mark.e2e

YES, NO, THE = 2748, 2053, 1996  # MiniLM token ids of "yes", "no", "the"
QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Bananas are rich in potassium and grow in tropical climates.",
    "The stock market closed higher on Tuesday.",
    "Berlin is the capital of Germany.",
    "Photosynthesis converts light energy into chemical energy.",
    "France is a country in Western Europe; its capital is Paris.",
]


@pytest.fixture(scope="module")
def tiny_model(shared_checkpoints):
    return shared_checkpoints["generative"]


@pytest.fixture(scope="module")
def generative_app(shared_app):
    """The app this file shares with test_kinds (tests/e2e/shared_app.py): MiniLM late interaction, the tiny Qwen3
    as `tiny-qwen3` (qwen3-reranker template, the app's first generative model) and `cascade` of the two."""
    return shared_app


@pytest.fixture(scope="module")
def client(generative_app):
    with httpx.Client(base_url=generative_app[0], timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_model):
    """Full-vocabulary log-probabilities of the next token after `ids`, from transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def next_token_logprobs(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        return torch.log_softmax(logits.double(), dim=-1).numpy()

    next_token_logprobs.tokenizer = tokenizer
    return next_token_logprobs


def expected_score(logprobs: np.ndarray, labels: list[int], apply_softmax: bool = True) -> float:
    chosen = logprobs[labels]
    if not apply_softmax:
        return math.exp(chosen[0])
    return float(np.exp(chosen[0] - np.logaddexp.reduce(chosen)))


def raw_ids(tokenizer, query: str, item: str, item_first: bool = False, add_special_tokens: bool = True) -> list[int]:
    q = tokenizer.encode(query, add_special_tokens=add_special_tokens)
    i = tokenizer.encode(item, add_special_tokens=False)
    return i + q if item_first else q + i


def qwen3_ids(tokenizer, query: str, document: str) -> list[int]:
    return tokenizer.encode(qwen3_reference_text(query, document), add_special_tokens=False)


@pytest.mark.parametrize(
    "options",
    [{}, {"apply_softmax": False}, {"item_first": True}, {"add_special_tokens": False, "apply_softmax": False}],
)
def test_generative_scoring_matches_transformers(client, reference, options):
    labels = [YES, NO, THE]
    body = {"model": "tiny-qwen3", "query": QUERY, "items": DOCUMENTS, "label_token_ids": labels, **options}
    r = client.post("/generative_scoring", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [d["index"] for d in got["data"]] == list(range(len(DOCUMENTS)))
    item_first, special = options.get("item_first", False), options.get("add_special_tokens", True)
    prompts = [raw_ids(reference.tokenizer, QUERY, d, item_first, special) for d in DOCUMENTS]
    for d, ids in zip(got["data"], prompts):
        expected = expected_score(reference(ids), labels, options.get("apply_softmax", True))
        assert d["score"] == pytest.approx(expected, abs=1e-4), (d, expected)
    usage = got["usage"]
    assert usage["prompt_tokens"] == sum(len(p) for p in prompts)
    assert usage["completion_tokens"] == len(DOCUMENTS)
    assert usage["total_tokens"] == usage["prompt_tokens"] + len(DOCUMENTS)


def test_generative_scoring_token_ids_and_handle(client, generative_app, reference):
    query_ids = reference.tokenizer.encode(QUERY)
    items = [reference.tokenizer.encode(d, add_special_tokens=False) for d in DOCUMENTS[:2]]
    body = {"query": query_ids, "items": items, "label_token_ids": [NO, YES]}  # no model: the generative one
    http = client.post("/generative_scoring", json=body)
    assert http.status_code == 200, http.text
    for d, item in zip(http.json()["data"], items):
        assert d["score"] == pytest.approx(expected_score(reference(query_ids + item), [NO, YES]), abs=1e-4)
    from_handle = generative_app[1].generative_scoring.remote(body).result()
    assert [d.score for d in from_handle.data] == [d["score"] for d in http.json()["data"]]


def qwen3_scores(reference, query: str, documents: list[str]) -> list[float]:
    return [expected_score(reference(qwen3_ids(reference.tokenizer, query, d)), [YES, NO]) for d in documents]


def test_rerank_and_score_with_the_generative_model(client, reference):
    expected = qwen3_scores(reference, QUERY, DOCUMENTS)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    r = client.post("/v1/rerank", json={"model": "tiny-qwen3", "query": QUERY, "documents": DOCUMENTS, "top_n": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == order[:4]
    for x in results:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-4)
    prompt_tokens = sum(len(qwen3_ids(reference.tokenizer, QUERY, d)) for d in DOCUMENTS)
    assert r.json()["usage"]["prompt_tokens"] == prompt_tokens

    v2 = client.post("/v2/rerank", json={"model": "tiny-qwen3", "query": QUERY, "documents": DOCUMENTS}).json()
    assert [x["index"] for x in v2["results"]] == order
    assert v2["meta"]["tokens"]["input_tokens"] == prompt_tokens

    score = client.post("/v1/score", json={"model": "tiny-qwen3", "queries": QUERY, "documents": DOCUMENTS[:3]})
    assert score.status_code == 200, score.text
    assert [d["score"] for d in score.json()["data"]] == pytest.approx(expected[:3], abs=1e-4)


def test_hundred_items_and_concurrent_requests(client, reference):
    items = [f"document number {i} about {['Paris', 'bananas', 'markets', 'Berlin'][i % 4]}" for i in range(100)]
    r = client.post("/generative_scoring", json={"query": QUERY, "items": items, "label_token_ids": [YES, NO]})
    assert r.status_code == 200, r.text
    got = [d["score"] for d in r.json()["data"]]
    expected = [expected_score(reference(raw_ids(reference.tokenizer, QUERY, i)), [YES, NO]) for i in items]
    assert got == pytest.approx(expected, abs=1e-4)

    queries = [f"question {i}: where is {['Paris', 'Berlin'][i % 2]}?" for i in range(8)]

    def rerank(query: str) -> list[float]:
        body = {"model": "tiny-qwen3", "query": query, "documents": DOCUMENTS, "top_n": 0}
        response = client.post("/v1/rerank", json=body)
        assert response.status_code == 200, response.text
        return [x["relevance_score"] for x in sorted(response.json()["results"], key=lambda x: x["index"])]

    with ThreadPoolExecutor(len(queries)) as pool:
        concurrent = list(pool.map(rerank, queries))
    for query, scores in zip(queries, concurrent):
        assert scores == pytest.approx(qwen3_scores(reference, query, DOCUMENTS), abs=1e-4)


def test_long_shared_query_reuses_its_prefix_in_small_blocks(client, reference):
    """A query of ~150 tokens before 12 short items: the replica's KV blocks are 32 tokens (vLLM's CPU default is
    128), the first item computes the query's blocks and the rest reuse them; every score still equals the
    reference forward pass of its whole prompt, twice (the second time every query block comes from the cache)."""
    from ray import serve

    from deployments.app import generative_deployment_name

    replica = serve.get_deployment_handle(generative_deployment_name("tiny-qwen3"), SHARED_APP)
    info = replica.info.remote().result()
    assert info.kv_block_size == 32
    query = " ".join(f"clue {i} points to {['Paris', 'Berlin', 'Rome'][i % 3]}" for i in range(30))
    items = [f"answer {i}: {['Paris', 'Berlin', 'Rome', 'Madrid'][i % 4]}" for i in range(12)]
    assert len(reference.tokenizer.encode(query)) > 4 * info.kv_block_size
    expected = [expected_score(reference(raw_ids(reference.tokenizer, query, i)), [YES, NO]) for i in items]
    for _ in range(2):
        r = client.post("/generative_scoring", json={"query": query, "items": items, "label_token_ids": [YES, NO]})
        assert r.status_code == 200, r.text
        assert [d["score"] for d in r.json()["data"]] == pytest.approx(expected, abs=1e-4)


def test_cascade_stage_by_stage(client, reference):
    first = client.post("/v1/rerank", json={"model": "minilm-colbert", "query": QUERY, "documents": DOCUMENTS})
    first_scores = {x["index"]: x["relevance_score"] for x in first.json()["results"]}
    shortlist = [x["index"] for x in first.json()["results"]][:CANDIDATES]
    second = dict(zip(shortlist, qwen3_scores(reference, QUERY, [DOCUMENTS[i] for i in shortlist])))
    rest = [x["index"] for x in first.json()["results"]][CANDIDATES:]
    expected_order = sorted(shortlist, key=lambda i: -second[i]) + rest

    r = client.post("/v1/rerank", json={"model": "cascade", "query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "cascade"
    assert [x["index"] for x in body["results"]] == expected_order
    for x in body["results"]:
        expected = second.get(x["index"], first_scores[x["index"]])
        assert x["relevance_score"] == pytest.approx(expected, abs=1e-4)
    generative_tokens = sum(len(qwen3_ids(reference.tokenizer, QUERY, DOCUMENTS[i])) for i in shortlist)
    assert body["usage"]["prompt_tokens"] == first.json()["usage"]["prompt_tokens"] + generative_tokens

    top = client.post("/v2/rerank", json={"model": "cascade", "query": QUERY, "documents": DOCUMENTS, "top_n": 4})
    assert [x["index"] for x in top.json()["results"]] == expected_order[:4]


BAD_REQUESTS = [
    ({"query": QUERY, "items": DOCUMENTS, "label_token_ids": [YES, 30522]}, 422, "outside the vocabulary"),
    ({"query": QUERY, "items": DOCUMENTS, "label_token_ids": [-1]}, 422, "outside the vocabulary"),
    ({"query": QUERY, "items": DOCUMENTS, "label_token_ids": list(range(129))}, 422, "label_token_ids"),
    ({"query": QUERY, "items": DOCUMENTS, "label_token_ids": []}, 422, "label_token_ids"),
    ({"query": QUERY, "items": [], "label_token_ids": [YES]}, 422, "items must not be empty"),
    ({"query": QUERY, "items": DOCUMENTS}, 422, "label_token_ids"),
    ({"query": QUERY, "items": [1, 2], "label_token_ids": [YES]}, 422, "items"),
    ({"query": "", "items": DOCUMENTS, "label_token_ids": [YES]}, 422, "query"),
    ({"model": "minilm-colbert", "query": QUERY, "items": DOCUMENTS, "label_token_ids": [YES]}, 400, "late_inter"),
    ({"model": "cascade", "query": QUERY, "items": DOCUMENTS, "label_token_ids": [YES]}, 400, "cascade"),
    ({"model": "gpt-9", "query": QUERY, "items": DOCUMENTS, "label_token_ids": [YES]}, 404, "gpt-9"),
    ({"query": QUERY, "items": ["x"] * 1001, "label_token_ids": [YES]}, 413, "1001"),
]


@pytest.mark.parametrize("body,status,mentions", BAD_REQUESTS)
def test_bad_generative_input_is_a_clear_4xx(client, body, status, mentions):
    r = client.post("/generative_scoring", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and mentions in error["message"]


def test_cascade_on_score_is_a_4xx_and_app_stays_healthy(client):
    r = client.post("/v1/score", json={"model": "cascade", "queries": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 400 and "rerank" in r.json()["error"]["message"]
    assert client.get("/health").status_code == 200
    ok = client.post("/generative_scoring", json={"query": QUERY, "items": DOCUMENTS[:1], "label_token_ids": [YES]})
    assert ok.status_code == 200, ok.text


def test_cascade_through_the_cohere_sdk_and_its_metrics(generative_app, metrics_url):
    """The Cohere SDK on /v2/rerank with the cascade model; the generative stage shows in the metrics."""
    import cohere

    from tests.conftest import wait_until
    from tests.e2e.prometheus import scrape, total

    co = cohere.ClientV2(api_key="unused", base_url=generative_app[0], timeout=300)
    response = co.rerank(model="cascade", query=QUERY, documents=DOCUMENTS, top_n=2)
    assert len(response.results) == 2 and response.meta.tokens.input_tokens > 0

    def generative_recorded() -> bool:
        samples = scrape(metrics_url)
        return (
            total(samples, "ray_rerank_stage_seconds_count", stage="generative", model="tiny-qwen3") >= 1
            and total(samples, "ray_rerank_documents_scored_total", model="tiny-qwen3") >= CANDIDATES
        )

    wait_until(generative_recorded, timeout=120, interval=1.0)


INSTRUCTION = "Decide whether the document names the capital city"


def test_instruction_replaces_the_templates_on_every_route(client, reference):
    tokenizer = reference.tokenizer

    def expected(documents: list[str], instruction: str | None) -> list[float]:
        texts = [qwen3_reference_text(QUERY, d, *([instruction] if instruction else [])) for d in documents]
        return [expected_score(reference(tokenizer.encode(t, add_special_tokens=False)), [YES, NO]) for t in texts]

    instructed, default = expected(DOCUMENTS, INSTRUCTION), expected(DOCUMENTS, None)
    assert max(abs(a - b) for a, b in zip(instructed, default)) > 1e-3  # the check would see it ignored
    body = {"model": "tiny-qwen3", "query": QUERY, "documents": DOCUMENTS, "instruction": INSTRUCTION}
    for route in ("/v1/rerank", "/v2/rerank"):
        r = client.post(route, json=body)
        assert r.status_code == 200, r.text
        assert [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])] == (
            pytest.approx(instructed, abs=1e-4)
        )
    score = client.post("/v1/score", json={"model": "tiny-qwen3", "queries": QUERY, "documents": DOCUMENTS,
                                           "instruction": INSTRUCTION})
    assert [d["score"] for d in score.json()["data"]] == pytest.approx(instructed, abs=1e-4)
    plain = client.post("/v1/score", json={"model": "tiny-qwen3", "queries": QUERY, "documents": DOCUMENTS})
    assert [d["score"] for d in plain.json()["data"]] == pytest.approx(default, abs=1e-4)  # the model's stays
    # the cascade's first stage (late interaction) takes none; its generative stage does
    cascade = client.post("/v1/rerank", json={**body, "model": "cascade"})
    assert cascade.status_code == 200, cascade.text
    for x in cascade.json()["results"][:CANDIDATES]:
        assert x["relevance_score"] == pytest.approx(instructed[x["index"]], abs=1e-4)
    r = client.post("/v1/rerank", json={**body, "model": "minilm-colbert"})
    assert r.status_code == 400 and "'minilm-colbert'" in r.json()["error"]["message"]


def test_long_document_chunked_under_the_template(client, reference):
    """Windows fit the prompt beside the template, the query and the request's instruction: a document scores as
    its best window sent alone."""
    text = " ".join(f"sentence {i} is about the river and the old mill near the town." for i in range(60))
    body = {"model": "tiny-qwen3", "query": QUERY, "instruction": INSTRUCTION, "top_n": 0}
    chunked = client.post("/v1/rerank", json={**body, "documents": [text], "long_documents": "chunk"})
    assert chunked.status_code == 200, chunked.text
    result = chunked.json()["results"][0]
    start, end = result["chunk"]["start"], result["chunk"]["end"]
    assert 0 <= start < end <= len(text) and end - start < len(text)
    window = text[start:end]
    prompt = reference.tokenizer.encode(qwen3_reference_text(QUERY, window, INSTRUCTION), add_special_tokens=False)
    assert len(prompt) <= 511  # the window fits the 512-token model with the prompt around it, uncut
    assert result["relevance_score"] == pytest.approx(expected_score(reference(prompt), [YES, NO]), abs=1e-4)
    alone = client.post("/v1/rerank", json={**body, "documents": [window]}).json()["results"][0]
    assert result["relevance_score"] == pytest.approx(alone["relevance_score"], abs=1e-6)
