"""Reliability on a strictly configured copy of the default app: API keys, overload, faults, timeouts, memory.

The app `strict` is serve_config.yaml's application with small limits and caches, an API key, and two
encoder replicas, deployed from config the way `serve run` does.
"""

from __future__ import annotations

import concurrent.futures as futures
import time

import httpx
import pytest
import ray
from ray import serve

from tests.conftest import wait_until
from tests.e2e.serve_configs import app_from_serve_config, replica_states, serving

pytestmark = pytest.mark.e2e

APP, PREFIX, KEY = "strict", "/strict", "test-key-7f3a9c"
ENCODER = "Encoder-minilm-colbert"
QUERY = "what is the capital of France?"
DOCUMENTS = ["Bananas are yellow.", "Paris is the capital of France.", "The stock market rose."]
AUTH = {"authorization": f"Bearer {KEY}"}
QUERY_CACHE_BYTES = DOCUMENT_CACHE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def strict(serve_instance):
    app = app_from_serve_config(
        APP,
        PREFIX,
        {
            ENCODER: {"num_replicas": 2, "autoscaling_config": None, "max_queued_requests": 64},
            "Scorer": {"num_replicas": 1, "autoscaling_config": None, "max_queued_requests": 64},
        },
    )
    app["args"]["limits"].update(max_concurrent_requests=4, request_timeout_s=20)
    app["args"]["cache"] = {"query_cache_bytes": QUERY_CACHE_BYTES, "document_cache_bytes": DOCUMENT_CACHE_BYTES}
    app["args"]["auth"] = {"api_keys": [KEY]}
    # inductor, as a deployment runs: 20,000 queries through the encoders took about twice as long (300 s, not 120 s)
    # on the tests' eager backend (tests/conftest.py), far more than the compile costs
    app["runtime_env"]["env_vars"]["VLLM_CPU_CI_ENV"] = "0"
    with serving(app, serve_instance, headers=AUTH) as client:
        expected = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["results"]
        yield client, expected


def scorer_stats() -> dict:
    return serve.get_deployment_handle("Scorer", APP).stats.remote().result()


def test_api_key_required_health_open(strict, serve_instance):
    client, _ = strict
    with httpx.Client(base_url=serve_instance + PREFIX, timeout=60) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for route in ("/v1/rerank", "/v2/rerank", "/v1/score", "/v1/models"):
            r = anonymous.post(route, json={"query": QUERY, "documents": DOCUMENTS})
            assert r.status_code == 401, (route, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
        wrong = anonymous.post("/v1/rerank", json={}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and KEY not in wrong.text
    assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).status_code == 200


def _rerank(client: httpx.Client, body: dict) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = client.post("/v1/rerank", json=body)
    return response, time.monotonic() - start


def test_overload_rejects_fast_and_accepted_requests_are_right(strict):
    client, expected = strict
    heavy_docs = DOCUMENTS + [f"filler document number {i} " * 5 for i in range(20)]
    with futures.ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(lambda i: _rerank(client, {"query": QUERY, "documents": heavy_docs}), range(32)))
    accepted = [(r, t) for r, t in outcomes if r.status_code == 200]
    rejected = [(r, t) for r, t in outcomes if r.status_code != 200]
    assert accepted and rejected, [r.status_code for r, _ in outcomes]
    for r, _ in rejected:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "overloaded"
    for r, _ in accepted:
        top = r.json()["results"][0]
        assert top["index"] == 1
        assert top["relevance_score"] == pytest.approx(expected[0]["relevance_score"], rel=1e-5)
    # Rejected requests come back without waiting for the work in front of them.
    assert sorted(t for _, t in rejected)[len(rejected) // 2] < sorted(t for _, t in accepted)[len(accepted) // 2]


def _replica_actors(deployment: str) -> list[tuple[str, str]]:
    """(name, namespace) of the live replica actors of one deployment of the strict app."""
    return [
        (a["name"], a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if f"{APP}#{deployment}#" in a["name"]
    ]


def test_killing_an_encoder_replica_under_load(strict):
    client, expected = strict
    victims = _replica_actors(ENCODER)
    assert len(victims) == 2

    def one(i: int) -> httpx.Response:
        docs = DOCUMENTS + [f"load document {i}-{j} about nothing in particular" for j in range(30)]
        return client.post("/v1/rerank", json={"query": QUERY, "documents": docs})

    with futures.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(one, i) for i in range(40)]
        time.sleep(0.5)
        ray.kill(ray.get_actor(*victims[0]), no_restart=True)
        responses = [p.result(timeout=180) for p in pending]  # none hangs
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    for r in responses:
        if r.status_code == 200:
            top = r.json()["results"][0]
            assert top["index"] == 1 and top["relevance_score"] == pytest.approx(
                expected[0]["relevance_score"], rel=1e-5
            )
        else:
            assert r.headers["retry-after"] and r.json()["error"]["type"] in ("unavailable", "overloaded")
    wait_until(lambda: replica_states(APP, ENCODER).get("RUNNING") == 2, timeout=600, interval=0.25)
    assert victims[0] not in _replica_actors(ENCODER)


def test_killing_the_scorer_loses_its_cache_transparently(strict):
    client, expected = strict
    assert scorer_stats()["query_cache"]["entries"] > 0
    (scorer,) = _replica_actors("Scorer")
    ray.kill(ray.get_actor(*scorer), no_restart=True)
    wait_until(lambda: replica_states(APP, "Scorer").get("RUNNING") == 1, timeout=300, interval=0.5)
    r = wait_until(lambda: (resp := client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}))
                   .status_code == 200 and resp, timeout=120)
    assert r.json()["results"] == expected
    stats = scorer_stats()["query_cache"]
    assert stats["misses"] >= 1 and stats["entries"] == 1  # re-encoded the query, transparently
    # a load balancer's view: healthy again once the new replica is up (the kill's UNHEALTHY status has cleared)
    wait_until(lambda: client.get("/health").status_code == 200, timeout=120)


def test_caches_hold_their_byte_limits_and_memory_stays_flat(strict):
    """20,000 unique queries (N:N /v1/score, 50 per request) through a 1 MiB query cache."""
    client, _ = strict
    docs = ["a short document that every pair shares"] * 50
    rss = []
    for step in range(400):
        queries = [f"unique query {step}-{i} about topic {i % 17}" for i in range(50)]
        r = client.post("/v1/score", json={"queries": queries, "documents": docs})
        assert r.status_code == 200, r.text
        stats = scorer_stats()
        assert stats["query_cache"]["bytes"] <= QUERY_CACHE_BYTES
        assert stats["document_cache"]["bytes"] <= DOCUMENT_CACHE_BYTES
        rss.append(stats["rss_bytes"])
    stats = scorer_stats()["query_cache"]
    assert stats["evictions"] > 15_000
    filled = rss[40:]  # the cache (about 70 queries) filled within the first requests
    growth = max(filled) - filled[0]
    print(f"scorer RSS after fill: first {filled[0] / 2**20:.1f} MiB, max {max(filled) / 2**20:.1f} MiB, "
          f"last {filled[-1] / 2**20:.1f} MiB; query cache {stats}")
    assert growth < 64 * 2**20


def test_request_past_its_timeout_gets_504(strict):
    client, _ = strict
    docs = [f"document {i} " + "with many many words in it " * 60 for i in range(1000)]  # ~300k tokens
    r = client.post("/v1/rerank", json={"query": "a slow request", "documents": docs})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout"
    message = r.json()["error"]["message"]  # what it waited for; the documents were the work
    assert f"from {ENCODER}, Scorer for 1000 documents" in message and "send fewer documents" in message, message
    wait_until(lambda: client.get("/health").status_code == 200, timeout=60)
