"""Prometheus metrics end to end: traffic on the default app, then a scrape of Ray's metrics endpoint."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.prometheus import scrape, total

pytestmark = pytest.mark.e2e

RUN = uuid.uuid4().hex[:8]  # texts no other test sent, so every cache lookup of the first request is a miss
QUERY = f"which metrics does the reranker export? ({RUN})"
DOCUMENTS = [f"Counters of requests by route and status ({RUN}).", f"Histograms of stage latency ({RUN}).", f"{RUN}"]


def test_metrics_after_traffic(default_app, metrics_url):
    url, _ = default_app
    before = scrape(metrics_url)  # counters are cumulative over the session: compare against this
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(2):  # the second request finds the query and every document cached
            r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
            assert r.status_code == 200, r.text
        assert client.post("/v1/rerank", json={"documents": DOCUMENTS}).status_code == 422
        assert client.get("/no/such/route").status_code == 404

    expected = {
        ("ray_rerank_requests_total", (("route", "/v1/rerank"), ("status", "200"))): 2,
        ("ray_rerank_requests_total", (("route", "/v1/rerank"), ("status", "422"))): 1,
        ("ray_rerank_requests_total", (("route", "other"), ("status", "404"))): 1,
        ("ray_rerank_documents_scored_total", (("model", "minilm-colbert"),)): 2 * len(DOCUMENTS),
        ("ray_rerank_tokens_scored_total", (("model", "minilm-colbert"),)): 2 * len(DOCUMENTS),
        ("ray_rerank_cache_lookups_total", (("cache", "query"), ("result", "hit"))): 1,
        ("ray_rerank_cache_lookups_total", (("cache", "query"), ("result", "miss"))): 1,
        ("ray_rerank_cache_lookups_total", (("cache", "document"), ("result", "hit"))): len(DOCUMENTS),
        ("ray_rerank_cache_lookups_total", (("cache", "document"), ("result", "miss"))): len(DOCUMENTS),
        ("ray_rerank_cache_lookups_total", (("cache", "encoder_document"), ("result", "miss"))): len(DOCUMENTS),
        ("ray_rerank_batch_size_count", (("batch", "encode_queries"),)): 1,
        ("ray_rerank_batch_size_count", (("batch", "encode_documents"),)): 1,
        ("ray_rerank_batch_size_count", (("batch", "maxsim"),)): 2,
        ("ray_rerank_stage_seconds_count", (("stage", "encode"), ("model", "minilm-colbert"))): 2,
        ("ray_rerank_stage_seconds_count", (("stage", "maxsim"),)): 2,
    }

    def missing() -> dict:
        samples = scrape(metrics_url)
        found = {(name, labels): total(samples, name, **dict(labels)) - total(before, name, **dict(labels))
                 for name, labels in expected}
        return {key: (found[key], want) for key, want in expected.items() if found[key] < want}

    # Replicas push metrics to the agent periodically: wait until every series has caught up.
    try:
        wait_until(lambda: not missing(), timeout=120, interval=1.0)
    except TimeoutError:
        pytest.fail(f"metrics below the traffic sent (found, expected): {missing()}")
    samples = scrape(metrics_url)
    encode = [labels for labels, _ in samples["ray_rerank_stage_seconds_count"] if labels.get("stage") == "encode"]
    assert {"deployment", "replica", "application"} <= encode[0].keys()  # Serve's own tags are attached
