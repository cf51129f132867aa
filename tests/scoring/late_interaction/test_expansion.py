"""Masked-expansion queries: nothing attends to the [MASK] tokens, they attend to the query, all are embedded."""

import numpy as np
import pytest

from scoring.late_interaction.expansion import MaskedExpansionQueries
from scoring.late_interaction.formats import load_checkpoint
from scoring.late_interaction.tokens import QueryTokens
from tests.tiny_colbert import build_pylate_colbert

MASK = 103


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    checkpoint = load_checkpoint(str(build_pylate_colbert(tmp_path_factory.mktemp("ckpt") / "pylate")))
    return MaskedExpansionQueries(checkpoint.engine_path, checkpoint.projection)


def test_expansion_tokens_are_embedded_but_not_attended(queries):
    body = [101, 1, 7592, 2088, 102]
    short, long, attended = queries.encode(
        [
            QueryTokens(body + [MASK] * 3, attended=len(body)),
            QueryTokens(body + [MASK] * 7, attended=len(body)),
            QueryTokens(body + [MASK] * 3, attended=len(body) + 3),
        ]
    )
    assert short.shape == (8, 48) and long.shape == (12, 48)
    np.testing.assert_allclose(np.linalg.norm(long, axis=1), 1.0, rtol=1e-5)
    # the query's tokens see no [MASK], however many: the same embeddings; each [MASK] sees only the query
    np.testing.assert_allclose(short[: len(body)], long[: len(body)], atol=1e-5)
    np.testing.assert_allclose(short[len(body)], long[len(body)], atol=1e-5)
    assert np.abs(attended[: len(body)] - short[: len(body)]).max() > 1e-3  # attending to them changes the query
