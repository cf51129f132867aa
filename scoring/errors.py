"""Typed service errors and the one table that maps them to HTTP responses.

Every failure a client can cause is one of these types; the ingress turns them into
`{"error": {"message", "type", "code"}}` with the status below. Anything else is a bug (500).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: a failure with a known HTTP status and a message safe to show a client."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, **headers: str):
        super().__init__(message)
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.status_code)


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but asks for something that cannot be done."""

    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"


class ModelNotFound(ServiceError):
    status_code = 404
    error_type = "model_not_found"


class PayloadTooLarge(ServiceError):
    """More documents, characters or bytes than the configured limits allow."""

    status_code = 413
    error_type = "payload_too_large"


class ValidationFailed(ServiceError):
    """Fields missing, of the wrong type, or out of range."""

    status_code = 422
    error_type = "validation_error"


class Overloaded(ServiceError):
    """The service is at capacity; the client should retry after a pause."""

    status_code = 503
    error_type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, **{"Retry-After": str(retry_after_s)})


class Unavailable(Overloaded):
    """A replica behind the ingress failed or is restarting; retrying is safe."""

    error_type = "unavailable"


class UpstreamTimeout(ServiceError):
    status_code = 504
    error_type = "timeout"


def error_body(message: str, error_type: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "code": code}}


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One readable line from pydantic's error list: `query: Input should be a valid string; ...`."""
    parts = []
    for err in errors[:10]:
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = err.get("msg", "invalid value")
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > 10:
        parts.append(f"... and {len(errors) - 10} more errors")
    return "; ".join(parts)
