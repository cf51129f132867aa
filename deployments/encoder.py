"""Encoder deployment: a vLLM pooling engine producing per-token embeddings (`token_embed`).

Every call goes through vLLM's async engine, so concurrent calls to one replica are batched by vLLM.
Texts are tokenized here (prefixes, truncation, query padding) and sent to vLLM as token ids.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import numpy as np
from ray import serve

from scoring.config import LateInteractionModelConfig
from scoring.embeddings import PackedEmbeddings
from scoring.tokens import LateInteractionTokenizer

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
class Encoder:
    def __init__(self, model: LateInteractionModelConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        self._model = model
        engine_args = AsyncEngineArgs(
            model=model.resolved_model(),
            tokenizer=model.resolved_tokenizer(),
            runner="pooling",
            pooler_config={"task": "token_embed"},
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            gpu_memory_utilization=model.gpu_memory_utilization,
            max_num_seqs=model.max_num_seqs,
            **model.engine_kwargs,
        )
        self._engine = AsyncLLM.from_engine_args(engine_args)
        model_config = self._engine.model_config
        self._dim = int(model_config.get_hidden_size())
        self._tokens = LateInteractionTokenizer(
            AutoTokenizer.from_pretrained(model.resolved_tokenizer()), model, int(model_config.max_model_len)
        )
        self._dtype = np.dtype(model.embedding_dtype)
        logger.info(
            "Encoder %s ready in %.1fs (max_model_len=%d)",
            model.name,
            time.perf_counter() - started,
            model_config.max_model_len,
        )

    async def encode_queries(self, texts: list[str], max_tokens: int | None = None) -> PackedEmbeddings:
        return await self._encode(self._tokens.query_ids(texts, max_tokens))

    async def encode_documents(self, texts: list[str], max_tokens: int | None = None) -> PackedEmbeddings:
        return await self._encode(self._tokens.document_ids(texts, max_tokens))

    async def _encode(self, token_ids: list[list[int]]) -> PackedEmbeddings:
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

    def embedding_dim(self) -> int:
        return self._dim

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self):
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
