"""Request bodies decode with msgspec and decide as `json.loads` does wherever msgspec refuses a body."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments.ingress import _JSONBodyRequest, _JSONBodyRoute, api


def _decode(body: bytes):
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/rerank", "headers": [], "query_string": b""}
    return asyncio.run(_JSONBodyRequest(scope, receive).json())


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "q", "documents": ["a", {"text": "b"}], "top_n": 2, "return_documents": true, "x": null}',
        b'{"documents": [{"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}',
        b'{"a": 1, "a": 2}',
        b'[123456789012345678901234567890, -0, 1.0000000000000000000001, 2.5e-3]',
        b'"caf\\u00e9 \\ud83d\\ude00"',
        b'[NaN, Infinity, 1e400]',  # msgspec refuses these; json.loads accepts them
        b'"\\ud800"',  # a lone surrogate: msgspec refuses, json.loads accepts
        b'\xef\xbb\xbf{"query": "q"}',  # a UTF-8 byte order mark
    ],
)
def test_same_value_as_json_loads(body):
    got, want = _decode(body), json.loads(body)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and int 0 vs float must not pass as equal


@pytest.mark.parametrize("body", [b"{not json", b'{"query": "q",}', b"[1, 2"])
def test_invalid_json_raises_what_fastapi_turns_into_a_422(body):
    with pytest.raises(json.JSONDecodeError):
        _decode(body)


def test_every_post_route_uses_it():
    posts = [r for r in api.routes if "POST" in getattr(r, "methods", ())]
    assert posts and all(isinstance(r, _JSONBodyRoute) for r in posts)
