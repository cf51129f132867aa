"""The service's Prometheus metrics, exported through Ray's metrics agent (`ray.serve.metrics`).

Ray adds the `deployment`, `replica` and `application` tags and the `ray_` prefix (counters get `_total`):
scrape `ray_rerank_requests_total`, `ray_rerank_documents_scored_total`, ... from each node's metrics port.
Metrics are created on first use in the replica, where Serve's context supplies those tags.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ray.serve.metrics import Counter, Histogram

LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536]
UNKNOWN_ROUTE = "other"


@dataclass(frozen=True)
class ServiceMetrics:
    requests: Counter
    documents: Counter
    tokens: Counter
    cache: Counter
    batch_size: Histogram
    stage_seconds: Histogram

    def request(self, route: str, status: int) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})

    def scored(self, model: str, documents: int, tokens: int) -> None:
        self.documents.inc(documents, tags={"model": model})
        self.tokens.inc(tokens, tags={"model": model})

    def cache_lookups(self, cache: str, hits: int, misses: int) -> None:
        for result, count in (("hit", hits), ("miss", misses)):
            if count:
                self.cache.inc(count, tags={"cache": cache, "result": result})

    def batch(self, batch: str, size: int) -> None:
        self.batch_size.observe(size, tags={"batch": batch})

    @contextmanager
    def stage(self, stage: str, model: str) -> Iterator[None]:
        """Time the block as one observation of `stage` (encode, maxsim, generative)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.observe(time.perf_counter() - started, tags={"stage": stage, "model": model})


@functools.cache
def service_metrics() -> ServiceMetrics:
    """This process's metrics, created once (inside a replica, so Serve's tags are attached)."""
    return ServiceMetrics(
        requests=Counter(
            "rerank_requests", description="HTTP requests by route and status code.", tag_keys=("route", "status")
        ),
        documents=Counter(
            "rerank_documents_scored", description="Documents (or generative items) scored.", tag_keys=("model",)
        ),
        tokens=Counter(
            "rerank_tokens_scored", description="Query and document tokens scored.", tag_keys=("model",)
        ),
        cache=Counter(
            "rerank_cache_lookups",
            description="Embedding cache lookups, by cache (query, document, encoder_document) and result (hit, miss).",
            tag_keys=("cache", "result"),
        ),
        batch_size=Histogram(
            "rerank_batch_size",
            description="Size of gathered batches: encode_queries (queries), encode_documents (requests), "
            "maxsim (requests).",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("batch",),
        ),
        stage_seconds=Histogram(
            "rerank_stage_seconds",
            description="Latency of one stage call: encode (encoder), maxsim (scorer), generative.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("stage", "model"),
        ),
    )


def route_label(path: str, routes: frozenset[str]) -> str:
    """The route tag: the path when it is one of the app's routes, else one shared value (bounded cardinality)."""
    return path if path in routes else UNKNOWN_ROUTE


def request_recorder(routes: frozenset[str]):
    """`on_response` for the HTTP guard: count each response by route and status."""

    def record(path: str, status: int) -> None:
        service_metrics().request(route_label(path, routes), status)

    return record
