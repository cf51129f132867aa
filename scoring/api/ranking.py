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


def cascade_order(
    first_scores: Sequence[float] | np.ndarray, candidates: Sequence[int], second_scores: Sequence[float] | np.ndarray
) -> tuple[list[int], np.ndarray]:
    """Merge two stages: the `candidates` (indices into `first_scores`) ordered by their second-stage score,
    then every other document by its first-stage score.

    Returns the final order and each document's score from the stage that placed it.
    """
    scores = np.asarray(first_scores, dtype=np.float64).copy()
    candidates = list(candidates)
    scores[candidates] = np.asarray(second_scores, dtype=np.float64)
    chosen = set(candidates)
    rest = [i for i in rank(first_scores) if i not in chosen]
    return [candidates[i] for i in rank(second_scores)] + rest, scores
