"""Ordering scores into results: descending score, ties by input order, then `top_n`."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def rank(scores: Sequence[float] | np.ndarray, top_n: int | None = None) -> list[int]:
    """Indices of `scores` from best to worst; `top_n` of 0 or None keeps all."""
    values = np.asarray(scores, dtype=np.float64)
    # A stable sort of the negated scores keeps equal scores in input order.
    order = np.argsort(-values, kind="stable")
    if top_n:
        order = order[:top_n]
    return order.tolist()
