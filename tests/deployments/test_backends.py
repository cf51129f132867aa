"""The ingress's per-kind backends without Ray: cascades of two stages, and the bound on one request's calls."""

import asyncio
from dataclasses import dataclass, field

import numpy as np

from deployments.backends import MAX_CALLS_PER_REQUEST, CascadeBackend, bounded, build_backends
from scoring.api.requests import QueryGroup
from scoring.config.schema import parse_app_config
from scoring.messages import ScoreOutcome


@dataclass
class Stage:
    """A stage scoring each document by a fixed table, recording what it was asked."""

    table: dict[str, float]
    tokens_per_document: int
    calls: list[list[str]] = field(default_factory=list)

    async def score(self, groups, max_tokens_per_query, max_tokens_per_doc):
        self.calls += [g.documents for g in groups]
        return [
            ScoreOutcome(
                scores=np.array([self.table[d] for d in g.documents]),
                query_tokens=1,
                document_tokens=self.tokens_per_document * len(g.documents),
                query_cache_hit=False,
            )
            for g in groups
        ]


def test_cascade_rescores_the_first_stages_best():
    documents = ["a", "b", "c", "d", "e"]
    first = Stage(dict(zip(documents, [0.1, 0.9, 0.5, 0.7, 0.3])), tokens_per_document=10)
    then = Stage({"b": 0.2, "d": 0.8, "c": 0.6}, tokens_per_document=100)
    cascade = CascadeBackend(first, then, candidates=3)
    (outcome,) = asyncio.run(
        cascade.score([QueryGroup("q", documents, list(range(5)))], None, None)
    )
    assert then.calls == [["b", "d", "c"]]  # the first stage's best three, best first
    assert outcome.order == [3, 2, 1, 4, 0]
    assert list(outcome.scores) == [0.1, 0.2, 0.6, 0.8, 0.3]
    assert (outcome.query_tokens, outcome.document_tokens) == (2, 50 + 300)


def test_bounded_runs_at_most_sixteen_calls_at_once():
    running, peak = 0, 0

    async def call():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return 1

    assert asyncio.run(bounded([call] * 50)) == [1] * 50
    assert peak == MAX_CALLS_PER_REQUEST


def test_every_model_gets_the_backend_of_its_kind():
    config = parse_app_config(
        {
            "models": [
                {"name": "li"},
                {"name": "bi", "kind": "bi_encoder"},
                {"name": "ce", "kind": "cross_encoder", "model": "/ce"},
                {"name": "gen", "kind": "generative", "model": "/gen"},
                {"name": "c1", "kind": "cascade", "first": "bi", "then": "ce"},
                {"name": "c2", "kind": "cascade", "first": "ce", "then": "gen"},
            ]
        }
    )
    backends = build_backends(config, scorer="scorer", rankers={"ce": "ce-handle", "gen": "gen-handle"}, guard=None)
    kinds = {name: type(b).__name__ for name, b in backends.items()}
    assert kinds == {
        "li": "EmbeddingBackend",
        "bi": "EmbeddingBackend",
        "ce": "CrossEncoderBackend",
        "gen": "GenerativeBackend",
        "c1": "CascadeBackend",
        "c2": "CascadeBackend",
    }
    assert backends["c1"].first is backends["bi"] and backends["c1"].then is backends["ce"]
    assert backends["c2"].first is backends["ce"] and backends["c2"].then is backends["gen"]
    assert backends["bi"].model == "bi" and backends["ce"].handle == "ce-handle"


def test_chunked_cascade_rescores_the_winning_windows():
    """Long documents chunked in the first stage: each document scores as its best window, and the second stage
    sees that window, not the whole document."""
    from transformers import AutoTokenizer

    from deployments.backends import ChunkedBackend
    from scoring.chunking import Chunker, WindowBudget
    from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

    chunker = Chunker(
        AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL)), WindowBudget("minilm", document_tokens=2)
    )

    async def split(group):
        return chunker.split(group, size=2, overlap=0, max_chunks=4)

    documents = ["a b c d", "e f", "g"]
    first = Stage({"a b": 0.1, "c d": 0.9, "e f": 0.5, "g": 0.7}, tokens_per_document=2)
    then = Stage({"c d": 0.3, "g": 0.8}, tokens_per_document=10)
    cascade = CascadeBackend(ChunkedBackend(first, split), then, candidates=2)
    (outcome,) = asyncio.run(cascade.score([QueryGroup("q", documents, [0, 1, 2])], None, None))
    assert first.calls == [["a b", "c d", "e f", "g"]]  # every window, once
    assert then.calls == [["c d", "g"]]  # the two best documents' winning windows
    assert outcome.order == [2, 0, 1]
    assert list(outcome.scores) == [0.3, 0.5, 0.8]
    assert outcome.chunks == [(4, 7), (0, 3), (0, 1)]
    assert outcome.document_tokens == 4 * 2 + 2 * 10  # the windows' tokens
