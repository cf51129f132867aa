"""A model whose replica cannot be placed, and one whose replica cannot start, are reported fast by name while the
default model keeps serving: /health 503 with each reason, requests for them a 503 with Retry-After at once."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.serve_configs import app_from_serve_config, deploy

pytestmark = pytest.mark.e2e

APP, ROUTE = "readiness", "/readiness"
# ELSEWHERE needs a resource no node has; CROWDED every CPU of the cluster, which this app's own replicas hold
# part of (Ray lists it as a demand it cannot grant); BROKEN cannot load its weights.
ELSEWHERE, CROWDED, BROKEN = "minilm-elsewhere", "minilm-crowded", "broken-generative"
QUERY, DOCUMENTS = "capital of France?", ["Paris is the capital of France.", "Bananas are yellow."]


@pytest.fixture(scope="module")
def client(serve_instance):
    import ray
    from ray import serve

    app = app_from_serve_config(
        APP,
        ROUTE,
        {
            f"Encoder-{ELSEWHERE}": {"ray_actor_options": {"num_cpus": 0.25, "resources": {"no_such_node": 1}}},
            f"Encoder-{CROWDED}": {"ray_actor_options": {"num_cpus": ray.cluster_resources()["CPU"]}},
        },
    )
    app["args"]["models"] += [
        {"name": ELSEWHERE, "kind": "late_interaction", "max_model_len": 128},
        {"name": CROWDED, "kind": "late_interaction", "max_model_len": 128},
        {"name": BROKEN, "kind": "generative", "model": "/nonexistent/causal-lm"},
    ]
    deploy(app)
    with httpx.Client(base_url=f"{serve_instance}{ROUTE}", timeout=120) as c:
        yield c
    serve.delete(APP)


def _health(client: httpx.Client) -> dict | None:
    try:
        response = client.get("/health")
    except httpx.TransportError:
        return None
    return response.json() if response.headers.get("content-type") == "application/json" else None


def test_health_names_what_cannot_be_placed_and_what_cannot_start(client):
    def settled():
        health = _health(client)
        models = (health or {}).get("models", {})
        states = {name: m["state"] for name, m in models.items()}
        placed = states.get("minilm-colbert") == "ready" and states.get(BROKEN) in ("failing", "failed")
        return health if placed and states.get(ELSEWHERE) == states.get(CROWDED) == "unplaceable" else None

    health = wait_until(settled, timeout=600, interval=0.5)
    print(json.dumps(health["models"], indent=1))
    assert client.get("/health").status_code == 503
    assert health["status"] == "unavailable"
    elsewhere = health["models"][ELSEWHERE]["message"]
    assert elsewhere.startswith(f"Encoder-{ELSEWHERE} cannot be placed: each replica needs")
    assert "no_such_node" in elsewhere
    assert health["models"][ELSEWHERE]["deployments"] == [f"Encoder-{ELSEWHERE}", "Scorer"]
    crowded = health["models"][CROWDED]["message"]
    assert crowded.startswith(f"Encoder-{CROWDED} cannot be placed: each replica needs") and "waiting" in crowded
    broken = health["models"][BROKEN]["message"]
    assert f"Generative-{BROKEN}" in broken and "/nonexistent/causal-lm" in broken, broken
    assert health["deployments"]["Scorer"]["state"] == "ready"

    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards["minilm-colbert"]["state"] == "ready" and cards["minilm-colbert"]["message"] is None
    assert cards[ELSEWHERE]["state"] == "unplaceable" and cards[ELSEWHERE]["message"] == elsewhere


def test_requests_for_a_model_that_cannot_serve_fail_fast_and_the_default_model_serves(client):
    wait_until(lambda: (_health(client) or {}).get("models", {}).get(ELSEWHERE, {}).get("state") == "unplaceable")
    for path, body in [
        ("/v1/rerank", {"model": ELSEWHERE, "query": QUERY, "documents": DOCUMENTS}),
        ("/v1/score", {"model": ELSEWHERE, "queries": QUERY, "documents": DOCUMENTS}),
        ("/generative_scoring", {"model": BROKEN, "query": QUERY, "items": DOCUMENTS, "label_token_ids": [1, 2]}),
    ]:
        started = time.perf_counter()
        response = client.post(path, json=body)
        elapsed = time.perf_counter() - started
        print(f"{path} for {body['model']}: {response.status_code} in {elapsed * 1000:.0f} ms")
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["type"] == "unavailable"
        assert f"model {body['model']!r} cannot serve yet" in error["message"]
        assert ("cannot be placed" if body["model"] == ELSEWHERE else "/nonexistent/causal-lm") in error["message"]
        assert elapsed < 1.0  # the issue asks < 100 ms; generous on a shared machine, far from a handle's wait

    served = client.post("/v1/rerank", json={"model": "minilm-colbert", "query": QUERY, "documents": DOCUMENTS})
    assert served.status_code == 200, served.text
    assert served.json()["results"][0]["index"] == 0
