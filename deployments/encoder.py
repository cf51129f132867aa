"""Encoder deployment: a vLLM pooling engine producing per-token embeddings (`token_embed`).

Every call goes through vLLM's async engine, so concurrent calls to one replica are batched by vLLM.
Texts are tokenized here (prefixes, truncation, query padding) and sent to vLLM as token ids.
Documents this replica encoded before come from its byte-bounded cache: the scorer replicas each cache the
documents of the queries routed to them, and this cache, shared by all of them, catches a document that another
scorer replica saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import asdict

import numpy as np
from ray import serve

from deployments.engine import EngineReplica, start_engine
from deployments.metrics import service_metrics
from scoring.config import LateInteractionModelConfig
from scoring.document_cache import EncodedDocuments
from scoring.embeddings import PackedEmbeddings
from scoring.tokens import LateInteractionTokenizer

logger = logging.getLogger("ray.serve")


def encoder_document_cache(model: str, capacity_bytes: int, dim: int, dtype: np.dtype) -> EncodedDocuments:
    """A replica's document cache, its lookups counted as `encoder_document` (the bi-encoder's too)."""
    return EncodedDocuments(
        model,
        capacity_bytes,
        dim,
        dtype,
        on_lookup=lambda hits, misses: service_metrics().cache_lookups("encoder_document", hits=hits, misses=misses),
    )


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
class Encoder(EngineReplica):
    async def __init__(self, model: LateInteractionModelConfig, document_cache_bytes: int = 0):
        """Start the engine (loading the weights), then encode one text: the replica is ready only once it can serve."""
        started = time.perf_counter()
        self._model = model
        self._engine = start_engine(model, runner="pooling", pooler_config={"task": "token_embed"})
        from transformers import AutoTokenizer

        model_config = self._engine.model_config
        self._dim = int(model_config.get_hidden_size())
        self._tokens = LateInteractionTokenizer(
            AutoTokenizer.from_pretrained(model.resolved_tokenizer()), model, int(model_config.max_model_len)
        )
        self._dtype = np.dtype(model.embedding_dtype)
        self._documents = encoder_document_cache(model.name, document_cache_bytes, self._dim, self._dtype)
        warm_up = time.perf_counter()
        await self.encode_queries(["warm-up"])
        logger.info(
            "Encoder %s ready in %.1fs (warm-up encode %.2fs, max_model_len=%d)",
            model.name,
            time.perf_counter() - started,
            time.perf_counter() - warm_up,
            model_config.max_model_len,
        )

    async def encode_queries(self, texts: list[str], max_tokens: int | None = None) -> PackedEmbeddings:
        """Token embeddings of each query (prefix, truncation to `max_tokens`, padding applied), packed."""
        return await self._encode(self._tokens.query_ids(texts, max_tokens))

    async def encode_documents(self, texts: list[str], max_tokens: int | None = None) -> PackedEmbeddings:
        """Token embeddings of each document (prefix, truncation to `max_tokens`), packed; cached ones from the
        document cache, the rest from the model."""
        return await self._documents.encode(
            texts, max_tokens, lambda missing: self._encode(self._tokens.document_ids(missing, max_tokens))
        )

    def stats(self) -> dict:
        """Document cache counters of this replica."""
        return {"encoder_document_cache": asdict(self._documents.stats())}

    async def _encode(self, token_ids: list[list[int]]) -> PackedEmbeddings:
        with service_metrics().stage("encode", self._model.name):
            outputs = await asyncio.gather(*(self._encode_one(ids) for ids in token_ids))
        return PackedEmbeddings.pack(outputs, self._dim, self._dtype)

    async def _encode_one(self, ids: list[int]) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self._engine.encode(
            TokensPrompt(prompt_token_ids=ids), PoolingParams(task="token_embed"), request_id=uuid.uuid4().hex
        ):
            final = output
        return final.outputs.data.numpy()
