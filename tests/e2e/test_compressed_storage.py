"""`document_dtype: int8` served end to end: every document is stored as int8 rows with a scale per token, the query
is quantised the same way, and each score equals a float64 MaxSim of those quantised values, computed here from HF
transformers' token embeddings of the same model; the ranking agrees with the float64 one on the same embeddings.

The app `int8` is serve_config.yaml's application with `cache.document_dtype: int8`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.e2e.serve_configs import app_from_serve_config, serving

pytestmark = pytest.mark.e2e

APP, PREFIX = "int8", "/int8"
QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "The Great Barrier Reef is the world's largest coral reef system, off the coast of Queensland.",
    "a",
    " ".join(["long document"] * 300),  # longer than max_tokens_per_doc: truncated, several pages
]


@pytest.fixture(scope="module")
def int8_app(serve_instance):
    fixed = {"autoscaling_config": None, "num_replicas": 1}
    app = app_from_serve_config(APP, PREFIX, {"Encoder-minilm-colbert": fixed, "Scorer": fixed})
    app["args"].setdefault("cache", {})["document_dtype"] = "int8"
    with serving(app, serve_instance) as client:
        yield client


def test_int8_scores_are_maxsim_of_the_quantised_embeddings(int8_app, hf_token_embeddings):
    from scoring.store.maxsim import quantize_int8
    from scoring.store.pages import quantize

    r = int8_app.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    q = hf_token_embeddings(QUERY, "query")
    q_int, q_scale = quantize_int8(q.astype(np.float32))
    q_values = q_int.astype(np.float64) * q_scale[:, None]
    exact = {}
    for i, text in enumerate(DOCUMENTS):
        d = hf_token_embeddings(text, "document")
        # documents reach the scorer as float16 (`embedding_dtype: auto`) and are quantised from those values
        d_int, d_scale = quantize(torch.from_numpy(d.astype(np.float16).astype(np.float32)), torch.int8)
        d_values = d_int.double().numpy() * d_scale.double().numpy()[:, None]
        assert got[i] == pytest.approx(float((q_values @ d_values.T).max(axis=1).sum()), rel=1e-3, abs=1e-3), i
        exact[i] = float((q @ d.T).max(axis=1).sum())
        assert got[i] == pytest.approx(exact[i], rel=0.02), i  # int8's error, against float64 on the embeddings
    margin = 0.04 * max(abs(v) for v in exact.values())  # twice int8's error: pairs apart by more keep their order
    for i in exact:
        for j in exact:
            if exact[i] > exact[j] + margin:
                assert got[i] > got[j], (i, j, got, exact)
    assert max(got, key=got.get) == max(exact, key=exact.get) == 0
