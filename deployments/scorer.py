"""MaxSim scorer deployment: the cross-request query-embedding cache and the MaxSim kernel.

Document embeddings arrive packed, straight from an encoder replica. A query embedding is looked up
in a byte-bounded LRU keyed by (model, query text, query options); on a miss it is encoded once, even
when several requests ask for it at the same time. Concurrent score calls are batched into one
MaxSim call (`@serve.batch`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from scoring.cache import ByteBoundedLRU
from scoring.config import AppConfig
from scoring.embeddings import PackedEmbeddings
from scoring.maxsim import MaxSimScorer, ScoreGroup
from scoring.messages import QuerySpec, ScoreOutcome

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
class Scorer:
    def __init__(self, config: AppConfig, encoders: dict[str, DeploymentHandle], device: str = "auto"):
        self._encoders = encoders
        self._device = device
        self._queries: ByteBoundedLRU[np.ndarray] = ByteBoundedLRU(
            config.cache.query_cache_bytes, sizeof=lambda a: a.nbytes
        )
        self._in_flight: dict[str, asyncio.Future] = {}
        self._kernels: dict[int, MaxSimScorer] = {}

    async def score(self, query: QuerySpec, documents: PackedEmbeddings) -> ScoreOutcome:
        """MaxSim of `query` against every document, in input order."""
        embedding, hit = await self._query_embedding(query)
        scores = await self._score_batch(ScoreGroup(query=embedding, docs=documents.data, lengths=documents.lengths))
        return ScoreOutcome(
            scores=scores,
            query_tokens=int(embedding.shape[0]),
            document_tokens=documents.total_tokens,
            query_cache_hit=hit,
        )

    async def prefetch_query(self, query: QuerySpec) -> bool:
        """Make sure `query` is cached (encoding it if needed); True when it already was."""
        _, hit = await self._query_embedding(query)
        return hit

    def stats(self) -> dict:
        return {"query_cache": asdict(self._queries.stats()), "device": self._device_name()}

    async def _query_embedding(self, query: QuerySpec) -> tuple[np.ndarray, bool]:
        cached = self._queries.get(query.key)
        if cached is not None:
            return cached, True
        pending = self._in_flight.get(query.key)
        if pending is not None:
            return await asyncio.shield(pending), False
        future = asyncio.get_running_loop().create_future()
        self._in_flight[query.key] = future
        try:
            packed: PackedEmbeddings = await self._encoders[query.model].encode_queries.remote(
                [query.text], query.max_tokens
            )
            embedding = np.ascontiguousarray(packed.data)
            self._queries.put(query.key, embedding)
            future.set_result(embedding)
            return embedding, False
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting; mark the exception retrieved so asyncio does not log it.
            future.exception()
            raise
        finally:
            del self._in_flight[query.key]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(self, groups: list[ScoreGroup]) -> list[np.ndarray]:
        # One MaxSim call per embedding dim: a single call unless several models share this scorer.
        by_dim: dict[int, list[int]] = {}
        for i, group in enumerate(groups):
            by_dim.setdefault(group.query.shape[1], []).append(i)
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(groups)
        for dim, indices in by_dim.items():
            kernel = self._kernel(dim)
            scores = await asyncio.to_thread(kernel.score, [groups[i] for i in indices])
            for i, group_scores in zip(indices, scores):
                results[i] = group_scores
        return results

    def _kernel(self, dim: int) -> MaxSimScorer:
        kernel = self._kernels.get(dim)
        if kernel is None:
            kernel = self._kernels[dim] = MaxSimScorer(dim=dim, device=self._device)
            seconds = kernel.warmup()
            logger.info("MaxSim kernel for dim %d on %s warmed in %.2fs", dim, kernel.device, seconds)
        return kernel

    def _device_name(self) -> str:
        return next(iter(self._kernels.values())).device if self._kernels else self._device
