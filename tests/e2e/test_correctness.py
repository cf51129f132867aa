"""Relevance scores equal an independent MaxSim over HF transformers token embeddings of the same model."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

QUERIES = ["what is the capital of France?", "How do vaccines train the immune system?"]
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Vaccines expose the immune system to a harmless piece of a pathogen so it learns to recognise it.",
    "The Great Barrier Reef is the world's largest coral reef system, off the coast of Queensland.",
    "a",
    "Ünïcödé text — with accents, emoji 🙂 and punctuation!?",
    " ".join(["long document"] * 300),  # longer than max_tokens_per_doc: truncated the same way
]


@pytest.fixture(scope="module")
def hf_reference(hf_token_embeddings):
    def maxsim(query: str, document: str) -> float:
        q = hf_token_embeddings(query, "query")
        d = hf_token_embeddings(document, "document")
        return float((q @ d.T).max(axis=1).sum())

    return maxsim


@pytest.mark.parametrize("query", QUERIES)
def test_scores_match_transformers_maxsim(default_app, hf_reference, query):
    url, _ = default_app
    r = httpx.post(f"{url}/v1/rerank", json={"query": query, "documents": DOCUMENTS}, timeout=120)
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    expected = {i: hf_reference(query, d) for i, d in enumerate(DOCUMENTS)}
    for i in expected:
        assert got[i] == pytest.approx(expected[i], rel=1e-3), (i, got[i], expected[i])
