"""Request counting in the HTTP guard (no Ray): every response is reported with its route and status."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from deployments.guard import GuardSettings, RequestGuard
from deployments.metrics import UNKNOWN_ROUTE, route_label
from scoring.api.auth import ApiKeys


async def test_guard_reports_route_and_status_of_every_response():
    seen: list[tuple[str, int]] = []
    app = FastAPI()
    app.add_middleware(RequestGuard)
    app.state.guard = GuardSettings(ApiKeys(["key"]), 64, 4, on_response=lambda *event: seen.append(event))

    @app.post("/echo")
    async def echo(body: dict):
        return body

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        auth = {"authorization": "Bearer key"}
        assert (await client.post("/echo", json={"a": 1}, headers=auth)).status_code == 200
        assert (await client.post("/echo", json={"a": 1})).status_code == 401
        assert (await client.post("/echo", content=b"x" * 100, headers=auth)).status_code == 413
        assert (await client.get("/nowhere", headers=auth)).status_code == 404
    assert seen == [("/echo", 200), ("/echo", 401), ("/echo", 413), ("/nowhere", 404)]


def test_route_label_bounds_cardinality():
    routes = frozenset({"/v1/rerank", "/health"})
    assert route_label("/v1/rerank", routes) == "/v1/rerank"
    assert route_label("/wp-admin/login.php", routes) == UNKNOWN_ROUTE
