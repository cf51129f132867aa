"""The HTTP guard on a small FastAPI app (no Ray needed): keys, body limit, admission control."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from deployments.guard import GuardSettings, RequestGuard
from scoring.api.auth import ApiKeys

KEY = "s3cret-key-value"


def make_app(keys=(), max_body_bytes=2048, max_concurrent=2, gate: asyncio.Event | None = None) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestGuard)
    app.state.guard = GuardSettings(ApiKeys(list(keys)), max_body_bytes, max_concurrent)

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.json()
        if gate is not None:
            await gate.wait()
        return {"received": body, "content_type": request.headers["content-type"]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_api_keys_required_except_health():
    async with client(make_app(keys=[KEY, "other"])) as c:
        assert (await c.get("/health")).status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}):
            r = await c.post("/echo", json={"a": 1}, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
            assert KEY not in r.text
            assert r.headers["www-authenticate"] == "Bearer"
        for key in (KEY, "other"):
            r = await c.post("/echo", json={"a": 1}, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200


async def test_no_keys_means_open():
    async with client(make_app()) as c:
        assert (await c.post("/echo", json={"a": 1})).status_code == 200


async def test_body_limit_declared_and_streamed():
    async with client(make_app(max_body_bytes=1024)) as c:
        r = await c.post("/echo", content=b'{"x": "' + b"a" * 2000 + b'"}')
        assert r.status_code == 413 and "1024 bytes" in r.json()["error"]["message"]

        async def chunks():  # no Content-Length: the guard counts what arrives
            for _ in range(10):
                yield b" " * 200

        r = await c.post("/echo", content=chunks())
        assert r.status_code == 413
        ok = await c.post("/echo", content=b'{"x": 1}')
        assert ok.status_code == 200
        assert ok.json() == {"received": {"x": 1}, "content_type": "application/json"}


async def test_admission_control_rejects_fast_with_retry_after():
    gate = asyncio.Event()
    async with client(make_app(max_concurrent=2, gate=gate)) as c:
        held = [asyncio.create_task(c.post("/echo", json={"i": i})) for i in range(2)]
        await asyncio.sleep(0.05)
        rejected = await c.post("/echo", json={"i": 3})
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["type"] == "overloaded"
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await c.post("/echo", json={"i": 4})).status_code == 200


def test_api_keys_repr_hides_keys():
    assert KEY not in repr(ApiKeys([KEY]))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "bearer " + KEY + "x"])
def test_api_keys_reject_malformed(header):
    assert not ApiKeys([KEY]).allows(header)
    assert ApiKeys([KEY]).allows("bearer " + KEY)
