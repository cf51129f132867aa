"""MaxSim scorer deployment: the query cache, the document store, encoder batching, the MaxSim kernel.

The ingress sends text; the scorer finds embeddings in its caches or asks the encoders for them, so
embeddings cross a process boundary once (encoder → scorer) and cached ones not at all.
- Queries: a byte-bounded LRU keyed by (model, query text, query options). A miss is encoded once,
  even when several requests ask for the same query at the same time. Requests are routed to scorer
  replicas by query key (`QueryAffinityRouter`), so the hit rate holds as replicas are added.
- Documents: the MaxSim scorer's document store (`scoring/store/pages.py`: pages on the scoring device, GPU memory on
  CUDA), keyed by content hash (+ model + options), stored as `document_dtype`, byte-bounded, LRU. A request pins
  its documents from lookup until its scores are back. Misses of concurrent requests are gathered (`@serve.batch`,
  token budget), sent to the encoder replicas in parallel calls of about `chunk_tokens` tokens, and the encoders'
  packed outputs go into the store in one write (one staged copy per encoder call, none per document).
- MaxSim: concurrent score calls are batched into one kernel call over the store's pages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import service_metrics
from deployments.routing import QueryAffinityRouter
from scoring.config.schema import AppConfig
from scoring.messages import DocumentSpec, EncodeJob, QuerySpec, ScoreOutcome
from scoring.store.batching import DEFAULT_IMAGE_TOKENS, estimate_tokens, plan_encode_calls, scatter_results, split_rows
from scoring.store.cache import ByteBoundedLRU, CacheStats, item_key
from scoring.store.maxsim import MaxSimScorer, ScoreGroup
from scoring.store.pages import DocumentStore, StoredDocuments

logger = logging.getLogger("ray.serve")


def resident_bytes() -> int:
    """This process's resident memory (Linux), for the bounded-memory checks."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _job_tokens(jobs: list[EncodeJob]) -> int:
    return sum(job.estimated_tokens for job in jobs)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    request_router_config={"request_router_class": QueryAffinityRouter},
)
class Scorer:
    def __init__(self, config: AppConfig, encoders: dict[str, DeploymentHandle], device: str = "auto"):
        self._config = config
        self._encoders = encoders
        self._device = device
        # a query's rows and its input tokens (what usage counts: its rows, but for a bi-encoder's one vector)
        self._queries: ByteBoundedLRU[tuple[np.ndarray, int]] = ByteBoundedLRU(
            config.cache.query_cache_bytes, sizeof=lambda e: e[0].nbytes
        )
        self._model_dims: dict[str, int] = {}  # learned from each model's first encoder output
        self._image_tokens: dict[str, int] = {}  # an image document's tokens, asked of a model's encoder once
        self._encode_batches = {"batches": 0, "jobs": 0}  # document encode batches, and the requests' jobs in them
        self._in_flight: dict[str, asyncio.Future] = {}
        self._kernels: dict[int, MaxSimScorer] = {}
        self._encode_batch.set_max_batch_size(config.batching.max_batch_tokens)
        self._encode_batch.set_batch_wait_timeout_s(config.batching.wait_s)

    async def score(self, queries: list[QuerySpec], documents: list[DocumentSpec]) -> list[ScoreOutcome]:
        """MaxSim of each query against its documents, in input order. The first query routes the call."""
        return list(await asyncio.gather(*(self._score_one(q, d) for q, d in zip(queries, documents))))

    async def _score_one(self, query: QuerySpec, documents: DocumentSpec) -> ScoreOutcome:
        query_result, documents_result = await asyncio.gather(
            self._query_embedding(query), self._document_embeddings(query.model, documents), return_exceptions=True
        )
        store = self._store(query.model)
        if isinstance(query_result, BaseException) or isinstance(documents_result, BaseException):
            if not isinstance(documents_result, BaseException) and store is not None:
                store.release(documents_result[0].slots)  # pinned by the lookup
            raise query_result if isinstance(query_result, BaseException) else documents_result
        ((embedding, query_tokens), hit), (stored, document_hits) = query_result, documents_result
        try:
            # the documents are read where the store keeps them: no gather, no copy
            scores = await self._score_batch(ScoreGroup(query=embedding, docs=stored))
            document_tokens = int(store.tokens(stored.slots).sum()) if store is not None else 0
        finally:
            if store is not None:
                store.release(stored.slots)
        service_metrics().scored(query.model, stored.slots.size, query_tokens + document_tokens)
        return ScoreOutcome(
            scores=scores,
            query_tokens=query_tokens,
            document_tokens=document_tokens,
            query_cache_hit=hit,
            document_cache_hits=document_hits,
        )

    def stats(self) -> dict:
        """Cache counters of this replica."""
        return {
            "query_cache": asdict(self._queries.stats()),
            "document_cache": asdict(self._document_stats()),
            "device": self._device_name(),
            "rss_bytes": resident_bytes(),
            "encode_batches": dict(self._encode_batches),
        }

    def record_routing_stats(self) -> dict:
        """Serve polls this on every replica (routers see it as `replica.routing_stats`); it also lets a
        driver read each replica's counters (benchmarks/e2e_bench.py sums them over the replicas)."""
        return self.stats()

    async def _query_embedding(self, query: QuerySpec) -> tuple[tuple[np.ndarray, int], bool]:
        """((the query's rows, its input tokens), whether the query cache had them)."""
        cached = self._queries.get(query.key)
        service_metrics().cache_lookups("query", hits=int(cached is not None), misses=int(cached is None))
        if cached is not None:
            return cached, True
        pending = self._in_flight.get(query.key)
        if pending is not None:
            return await asyncio.shield(pending), False
        future = asyncio.get_running_loop().create_future()
        self._in_flight[query.key] = future
        try:
            entry = await self._encode_query_batch(query)
            self._queries.put(query.key, entry)
            future.set_result(entry)
            return entry, False
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting, and asyncio would log it
            raise
        finally:
            del self._in_flight[query.key]

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.002, max_concurrent_batches=4)
    async def _encode_query_batch(self, queries: list[QuerySpec]) -> list[tuple[np.ndarray, int]]:
        """Query misses of concurrent requests, one encoder call per (model, max_tokens, instruction): (rows, input
        tokens)."""
        service_metrics().batch("encode_queries", len(queries))
        groups: dict[tuple[str, int | None, str | None], list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault((query.model, query.max_tokens, query.instruction), []).append(i)
        results: list[tuple[np.ndarray, int]] = [(np.empty(0), 0)] * len(queries)
        encoded = await asyncio.gather(
            *(
                self._encoders[model].encode_queries.remote(
                    [queries[i].text for i in indices],
                    max_tokens,
                    # only models with a query prompt take one (the ingress refuses it for the others)
                    **({} if instruction is None else {"instruction": instruction}),
                )
                for (model, max_tokens, instruction), indices in groups.items()
            )
        )
        for indices, packed in zip(groups.values(), encoded):
            for i, rows, tokens in zip(indices, split_rows(packed), packed.token_counts.tolist()):
                results[i] = (np.ascontiguousarray(rows), int(tokens))
        return results

    async def _document_embeddings(self, model: str, documents: DocumentSpec) -> tuple[StoredDocuments, int]:
        """Each document's entry in the store, in order, pinned for the caller (who releases them), and how many
        were there already."""
        keys = [item_key(model, text, documents.max_tokens) for text in documents.texts]
        store = self._store(model)
        slots = store.lookup(keys) if store is not None else np.full(len(keys), -1, dtype=np.int64)
        missing = np.flatnonzero(slots < 0)
        service_metrics().cache_lookups("document", hits=len(keys) - missing.size, misses=missing.size)
        if missing.size:
            texts = [documents.texts[i] for i in missing]
            try:
                image_tokens = await self._image_document_tokens(model, texts)
                # A job larger than the whole budget counts as the budget: it runs in a batch of its own.
                tokens = min(
                    sum(estimate_tokens(t, documents.max_tokens, image_tokens) for t in texts),
                    self._config.batching.max_batch_tokens,
                )
                fresh = await self._encode_batch(EncodeJob(model, texts, documents.max_tokens, tokens))
            except BaseException:
                if store is not None:
                    store.release(slots)
                raise
            slots[missing] = fresh
        return StoredDocuments(slots), len(keys) - missing.size

    @serve.batch(max_batch_size=65536, batch_wait_timeout_s=0.004, max_concurrent_batches=4, batch_size_fn=_job_tokens)
    async def _encode_batch(self, jobs: list[EncodeJob]) -> list[np.ndarray]:
        """Per job, its documents' entries in the store (pinned): every encoder output of the batch goes into
        the store in one write."""
        service_metrics().batch("encode_documents", len(jobs))
        self._encode_batches["batches"] += 1
        self._encode_batches["jobs"] += len(jobs)
        calls = plan_encode_calls(jobs, self._config.batching.chunk_tokens, self._image_tokens)
        results = await asyncio.gather(
            *(self._encoders[c.model].encode_documents.remote(c.texts, c.max_tokens) for c in calls)
        )
        per_call: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(calls)
        by_model: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            by_model.setdefault(call.model, []).append(i)
        written: list[tuple[DocumentStore, np.ndarray]] = []
        try:
            for model, indices in by_model.items():
                store = self._kernel(results[indices[0]].dim, model).store
                keys = [item_key(model, text, calls[i].max_tokens) for i in indices for text in calls[i].texts]
                lengths = np.concatenate([results[i].lengths for i in indices])
                tokens = np.concatenate([results[i].token_counts for i in indices])
                slots = await asyncio.to_thread(
                    store.insert, keys, [results[i].data for i in indices], lengths, tokens
                )
                written.append((store, slots))
                for i, call_slots in zip(indices, np.split(slots, np.cumsum([len(calls[i].texts) for i in indices]))):
                    per_call[i] = call_slots
        except BaseException:
            for store, slots in written:  # nobody will score these
                store.release(slots)
            raise
        return [np.array(slots, dtype=np.int64) for slots in scatter_results(jobs, calls, per_call)]

    async def _image_document_tokens(self, model: str, texts: list) -> int:
        """The tokens an image document of `model` takes (its image tokens and visual prompt), for the batching
        budget: asked of the model's encoder the first time its documents hold an image."""
        if model not in self._image_tokens:
            if all(isinstance(text, str) for text in texts):
                return DEFAULT_IMAGE_TOKENS
            encoding = await self._encoders[model].encoding.remote()
            self._image_tokens[model] = int(encoding.get("image_document_tokens") or DEFAULT_IMAGE_TOKENS)
        return self._image_tokens[model]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(self, groups: list[ScoreGroup]) -> list[np.ndarray]:
        service_metrics().batch("maxsim", len(groups))
        # One MaxSim call per embedding dim: a single call unless several models share this scorer.
        by_dim: dict[int, list[int]] = {}
        for i, group in enumerate(groups):
            by_dim.setdefault(group.query.shape[1], []).append(i)
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(groups)
        for dim, indices in by_dim.items():
            kernel = self._kernel(dim)
            with service_metrics().stage("maxsim", f"dim-{dim}"):
                scores = await asyncio.to_thread(kernel.score, [groups[i] for i in indices])
            for i, group_scores in zip(indices, scores):
                results[i] = group_scores
        return results

    def _kernel(self, dim: int, model: str | None = None) -> MaxSimScorer:
        """The MaxSim scorer (and document store) of this dim, made on first use; `model` records the model's dim."""
        if model is not None:
            self._model_dims[model] = dim
        kernel = self._kernels.get(dim)
        if kernel is None:
            cache = self._config.cache
            kernel = self._kernels[dim] = MaxSimScorer(
                dim=dim, device=self._device, dtype=cache.document_dtype, store_bytes=cache.document_cache_bytes
            )
            seconds = kernel.warmup()
            logger.info("MaxSim kernel for dim %d on %s warmed in %.2fs", dim, kernel.device, seconds)
        return kernel

    def _store(self, model: str) -> DocumentStore | None:
        """The store holding `model`'s documents; None until the model's first documents were encoded."""
        dim = self._model_dims.get(model)
        return None if dim is None else self._kernels[dim].store

    def _document_stats(self) -> CacheStats:
        stats = [kernel.store.stats() for kernel in self._kernels.values()]
        if not stats:
            return CacheStats(0, 0, 0, 0, 0, self._config.cache.document_cache_bytes)
        return CacheStats(*(sum(getattr(s, f) for s in stats) for f in CacheStats.__dataclass_fields__))

    def _device_name(self) -> str:
        return next(iter(self._kernels.values())).device if self._kernels else self._device
