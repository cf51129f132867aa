"""API-key checks: constant-time, and nothing about a key ever reaches a log or an error message."""

from __future__ import annotations

import hmac
from typing import Sequence


class ApiKeys:
    def __init__(self, keys: Sequence[str]):
        self._keys = [k.encode("utf-8") for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """True for `Bearer <key>` with a configured key. Compares against every key, without early exit."""
        if not self._keys:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode("utf-8")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched and scheme.lower() == "bearer"

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._keys)} keys>)"
