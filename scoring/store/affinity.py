"""Which scorer replica a query key belongs to: rendezvous (highest-random-weight) hashing.

Every key ranks every replica by a hash of (key, replica); the first is its home. Adding or removing
a replica moves only the keys whose home it is or becomes (about 1/n of them), and every router that
sees the same replicas agrees without talking to the others.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def _weight(key: str, member: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, members: Sequence[T], ident: Callable[[T], str] = str) -> list[T]:
    """`members` from the key's home to its least preferred."""
    return sorted(members, key=lambda m: _weight(key, ident(m)), reverse=True)

