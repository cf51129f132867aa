"""The HTTP guard in front of every route: API keys, body size, admission control, JSON bodies.

A plain ASGI middleware, so it can answer before FastAPI parses anything: a missing key is a 401, a
body over the limit a 413 (read no further than the limit), and a request arriving while the replica
already works on `max_concurrent_requests` a fast 503 with Retry-After instead of an unbounded queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from scoring.api.auth import ApiKeys
from scoring.errors import Overloaded, PayloadTooLarge, ServiceError, Unauthorized

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


@dataclass(frozen=True)
class GuardSettings:
    api_keys: ApiKeys
    max_body_bytes: int
    max_concurrent_requests: int
    # Called with (route below the prefix, status code) as each response starts: request metrics.
    on_response: Callable[[str, int], None] | None = None


async def send_error(send, error: ServiceError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Reads its settings from `app.state.guard` (set when the replica starts)."""

    def __init__(self, app):
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings: GuardSettings = scope["app"].state.guard
        if settings.on_response is not None:
            send = _observe_status(send, _route(scope), settings.on_response)
        headers = dict(scope["headers"])
        if _route(scope) not in OPEN_PATHS and not settings.api_keys.allows(
            headers.get(b"authorization", b"").decode("latin-1")
        ):
            return await send_error(
                send, Unauthorized("missing or invalid API key", **{"WWW-Authenticate": "Bearer"})
            )
        if self.in_flight >= settings.max_concurrent_requests:
            return await send_error(
                send,
                Overloaded(f"at capacity: {settings.max_concurrent_requests} requests in progress; retry shortly"),
            )
        self.in_flight += 1
        try:
            if scope["method"] == "POST":
                body = await self._read_body(receive, headers, settings.max_body_bytes)
                if body is None:
                    return await send_error(
                        send, PayloadTooLarge(f"request body exceeds {settings.max_body_bytes} bytes")
                    )
                # Every POST body is JSON, so `curl -d '{...}'` without a Content-Type header works too.
                scope = dict(scope)
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope["headers"].append((b"content-type", b"application/json"))
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    @staticmethod
    async def _read_body(receive, headers: dict, limit: int) -> bytes | None:
        """The whole body, or None once it is known to exceed `limit` (stops reading there)."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _route(scope) -> str:
    """The path below the application's route prefix."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _observe_status(send, route: str, on_response: Callable[[str, int], None]):
    """A `send` that reports the response status before passing every message on."""

    async def observed(message):
        if message["type"] == "http.response.start":
            on_response(route, message["status"])
        await send(message)

    return observed


def _replay(body: bytes, upstream):
    """A `receive` that gives the body read already, then waits on the client as before."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive
