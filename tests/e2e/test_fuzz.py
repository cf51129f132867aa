"""Over 1,000 generated bad or odd requests to every route: zero 5xx, then the app is healthy and right."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

SCORING_ROUTES = ["/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score"]
ROUTES = SCORING_ROUTES + ["/generative_scoring"]
SEEN: dict[str, int] = {"requests": 0}

text = st.text(st.characters(codec="utf-8"), max_size=40)  # unicode, control characters, surrogates excluded
odd_numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), odd_numbers, text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)),
    max_leaves=12,
)
documents = st.one_of(
    st.lists(st.one_of(text, st.fixed_dictionaries({"text": text}), json_values), max_size=4),
    json_values,
)
request_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("minilm-colbert"), text, json_values),
        "query": st.one_of(text, json_values),
        "queries": st.one_of(text, st.lists(text, max_size=4), json_values),
        "documents": documents,
        "top_n": st.one_of(st.integers(-3, 8), odd_numbers, text),
        "return_documents": st.one_of(st.booleans(), json_values),
        "max_tokens_per_doc": st.one_of(st.integers(-3, 600), odd_numbers),
        "max_tokens_per_query": st.one_of(st.integers(-3, 600), odd_numbers),
        "items": st.one_of(st.lists(text, max_size=4), st.lists(st.lists(st.integers(-5, 40000))), json_values),
        "label_token_ids": st.one_of(st.lists(st.integers(-5, 40000), max_size=130), json_values),
        "apply_softmax": st.one_of(st.booleans(), json_values),
        "item_first": st.one_of(st.booleans(), json_values),
    },
)


@pytest.fixture(scope="module")
def client(default_app):
    with httpx.Client(base_url=default_app[0], timeout=120) as c:
        yield c


def check(response: httpx.Response) -> None:
    SEEN["requests"] += 1
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] == response.status_code and error["message"] and error["type"]
        assert "Traceback" not in response.text


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@fuzz(400)
@given(route=st.sampled_from(ROUTES), body=request_bodies)
def test_generated_requests(client, route, body):
    check(client.post(route, content=json.dumps(body, allow_nan=True)))


@fuzz(300)
@given(route=st.sampled_from(ROUTES), body=json_values)
def test_arbitrary_json(client, route, body):
    check(client.post(route, content=json.dumps(body, allow_nan=True)))


@fuzz(300)
@given(route=st.sampled_from(ROUTES + ["/health", "/v1/models", "/nope"]), raw=st.binary(max_size=200))
def test_raw_bytes_including_invalid_utf8(client, route, raw):
    check(client.post(route, content=raw))


@fuzz(150)
@given(
    route=st.sampled_from(SCORING_ROUTES),
    query=st.text(max_size=30).filter(lambda s: s.strip()),
    docs=st.lists(st.text(st.characters(codec="utf-8"), max_size=60), min_size=1, max_size=3),
    top_n=st.integers(0, 4),
)
def test_well_formed_odd_content(client, route, query, docs, top_n):
    body = {"queries" if "score" in route else "query": query, "documents": docs}
    if "rerank" in route:
        body["top_n"] = top_n
    r = client.post(route, json=body)
    check(r)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "route,content",
    [
        ("/v1/rerank", b"[" * 100_000 + b"]" * 100_000),  # deeply nested JSON
        ("/v1/rerank", b'{"query": {"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"),
        ("/v1/score", b'{"queries": "q", "documents": ["' + b"x" * 40_000_000 + b'"]}'),  # over the body limit
        ("/v1/rerank", json.dumps({"query": "q" * 100_000, "documents": ["d"]}).encode()),
        ("/v2/rerank", json.dumps({"query": "q", "documents": ["d" * 40_000]}).encode()),
        ("/v1/rerank", b'{"query": "\\ud800", "documents": ["x"]}'),  # lone surrogate escape
        ("/v1/rerank", b'{"query": "q", "documents": ["ok", "\\udfff"]}'),
        ("/v1/rerank", b"\xff\xfe\x00garbage"),
        ("/v1/rerank", b""),
        ("/v1/models", b"{}"),  # wrong method
    ],
)
def test_hostile_bodies(client, route, content):
    check(client.post(route, content=content))


def test_still_healthy_and_correct_afterwards(client):
    assert SEEN["requests"] >= 1000
    assert client.get("/health").status_code == 200
    body = {"query": "what is the capital of France?", "documents": ["Bananas are yellow.", "Paris is in France."]}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 1
