"""The encoder's document cache: documents that reach the encoder again skip the model, whichever scorer replica
sends them, and score exactly as when they were first encoded.

The app `doccache` is serve_config.yaml's application with one encoder and two scorer replicas whose own document
caches are off, so every request's documents reach the encoder, from both scorer replicas (requests are routed by
query).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from ray import serve

from tests.e2e.serve_configs import app_from_serve_config, serving

pytestmark = pytest.mark.e2e

APP, PREFIX = "doccache", "/doccache"
ENCODER = "Encoder-minilm-colbert"
DOCUMENTS = [
    "Paris is the capital of France.",
    "The Eiffel Tower was finished in 1889.",
    "Bananas are rich in potassium.",
    "Berlin is the capital of Germany.",
    "The Louvre is the world's most visited museum.",
]
QUERIES = [f"question {i}: what is the capital of France?" for i in range(6)]


@pytest.fixture(scope="module")
def doccache(serve_instance):
    fixed = {"autoscaling_config": None}
    app = app_from_serve_config(
        APP, PREFIX, {ENCODER: {**fixed, "num_replicas": 1}, "Scorer": {**fixed, "num_replicas": 2}}
    )
    app["args"]["cache"] = {"document_cache_bytes": 0}
    with serving(app, serve_instance) as client:
        yield client


def encoder_cache() -> dict:
    return serve.get_deployment_handle(ENCODER, APP).stats.remote().result()["encoder_document_cache"]


def rerank(client: httpx.Client, query: str) -> list[dict]:
    r = client.post("/v1/rerank", json={"query": query, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_documents_the_encoder_has_seen_skip_the_model(doccache):
    first = rerank(doccache, QUERIES[0])
    assert encoder_cache()["misses"] == len(DOCUMENTS) and encoder_cache()["hits"] == 0
    for query in QUERIES[1:]:
        assert sorted(r["index"] for r in rerank(doccache, query)) == list(range(len(DOCUMENTS)))
    stats = encoder_cache()
    assert stats["misses"] == len(DOCUMENTS)  # the model encoded each document once
    assert stats["hits"] == len(DOCUMENTS) * (len(QUERIES) - 1)
    assert stats["entries"] == len(DOCUMENTS) and 0 < stats["bytes"] <= stats["capacity_bytes"]
    assert rerank(doccache, QUERIES[0]) == first  # cached embeddings score exactly as fresh ones


def test_documents_reach_the_scorer_as_float16_and_queries_as_float32(doccache):
    """`embedding_dtype: auto` with float16 storage (the default): documents cross as float16, which the scorer
    rounds them to anyway, queries as float32; the encoder cache keeps float16 rows."""
    handle = serve.get_deployment_handle(ENCODER, APP)
    documents = handle.encode_documents.remote(DOCUMENTS[:2]).result()
    queries = handle.encode_queries.remote(QUERIES[:1]).result()
    assert documents.data.dtype == np.float16 and queries.data.dtype == np.float32
    stats = encoder_cache()
    assert stats["bytes"] < stats["capacity_bytes"]
