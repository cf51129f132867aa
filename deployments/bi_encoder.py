"""Bi-encoder deployment: a vLLM pooling engine producing one vector per text (`embed`, the checkpoint's pooling).

It has the late-interaction Encoder's interface (`encode_queries`, `encode_documents` → `PackedEmbeddings`) with
one L2-normalised row per text, so the Scorer serves it unchanged: its query and document caches hold the
vectors, and MaxSim of one row against one row is the cosine similarity (`scoring/bi_encoder/pooling.py`). Documents this
replica encoded before come from its byte-bounded cache, as in the Encoder.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
from ray import serve

from deployments.encoder import encoder_document_cache
from deployments.engine import EngineReplica, start_engine
from deployments.metrics import service_metrics
from scoring.bi_encoder.pooling import BiEncoderTokenizer, l2_normalized, read_layout
from scoring.checkpoints import sequence_limit
from scoring.chunking import WindowBudget
from scoring.config.schema import BiEncoderModelConfig
from scoring.store.embeddings import PackedEmbeddings

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10)
class BiEncoder(EngineReplica):
    async def __init__(self, model: BiEncoderModelConfig, document_cache_bytes: int = 0):
        """Start the engine (loading the weights), then encode one text: the replica is ready only once it can serve."""
        from transformers import AutoTokenizer

        started = time.perf_counter()
        self._model = model
        self._layout = read_layout(_local_dir(model.resolved_model()), model.name)
        self._engine = start_engine(
            model, runner="pooling", pooler_config={"task": "embed", "seq_pooling_type": self._layout.pooling}
        )
        model_config = self._engine.model_config
        self._dim = int(model_config.get_hidden_size())
        tokenizer = AutoTokenizer.from_pretrained(model.resolved_tokenizer())
        # sentence-transformers cuts at max_seq_length where the checkpoint has one, else at the tokenizer's limit
        tokenizer_max = None if self._layout.max_seq_length else tokenizer.model_max_length
        self._tokens = BiEncoderTokenizer(tokenizer, model, self._layout, sequence_limit(model_config, tokenizer_max))
        self._documents = encoder_document_cache(model.name, document_cache_bytes, self._dim, np.dtype(np.float32))
        warm_up = time.perf_counter()
        await self.encode_queries(["warm-up"])
        logger.info(
            "BiEncoder %s ready in %.1fs (warm-up encode %.2fs, %s)",
            model.name,
            time.perf_counter() - started,
            time.perf_counter() - warm_up,
            self._layout.describe(),
        )

    async def encode_queries(
        self, texts: list[str], max_tokens: int | None = None, instruction: str | None = None
    ) -> PackedEmbeddings:
        """One vector per query (prompt, or the request's `instruction` in its place; truncation applied), one row
        each."""
        return await self._encode(self._tokens.query_ids(texts, max_tokens, instruction))

    async def encode_documents(self, texts: list[str], max_tokens: int | None = None) -> PackedEmbeddings:
        """One vector per document, one row each; cached ones from the document cache, the rest from the model."""
        return await self._documents.encode(
            texts, max_tokens, lambda missing: self._encode(self._tokens.document_ids(missing, max_tokens))
        )

    def window_budget(self) -> WindowBudget:
        """What the ingress needs to cut long documents into windows this model encodes whole."""
        return self._tokens.window_budget(self._model.resolved_tokenizer())

    def stats(self) -> dict:
        """Document cache counters of this replica."""
        return {"encoder_document_cache": asdict(self._documents.stats())}

    async def _encode(self, token_ids: list[list[int]]) -> PackedEmbeddings:
        with service_metrics().stage("encode", self._model.name):
            vectors = await asyncio.gather(*(self._embed(ids) for ids in token_ids))
        rows = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, self._dim), np.float32)
        if self._layout.normalize:
            rows = l2_normalized(rows)
        tokens = np.fromiter(map(len, token_ids), dtype=np.int32, count=len(token_ids))  # what usage counts
        return PackedEmbeddings(data=rows, lengths=np.ones(len(vectors), dtype=np.int32), tokens=tokens)

    async def _embed(self, ids: list[int]) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        final = None
        params = PoolingParams(task="embed", use_activation=False)  # normalised here, as the checkpoint says
        async for output in self._engine.encode(
            TokensPrompt(prompt_token_ids=ids), params, request_id=uuid.uuid4().hex
        ):
            final = output
        return final.outputs.data.numpy()


def _local_dir(model: str) -> str:
    """The checkpoint's folder: `model` itself, or its snapshot in the Hugging Face cache (downloaded if needed)."""
    if Path(model).is_dir():
        return model
    from huggingface_hub import snapshot_download

    return snapshot_download(model, allow_patterns=["*.json"])
