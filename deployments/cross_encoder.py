"""Cross-encoder deployment: a vLLM sequence-classification engine (`classify`) scoring (query, document) pairs.

Each pair is one engine request: its token ids built here with the model's tokenizer (`scoring/cross_encoder/pairs.py`),
the second segment's token types handed to vLLM, the raw logit back (`use_activation=False`) and the checkpoint's
activation applied here. All pairs of a call, and of concurrent calls, are in flight together and batched by vLLM.
jina-reranker-m0 (`JinaVLForRanking`) takes images too: its pairs are the model card's prompts
(`scoring/cross_encoder/jina_m0.py`), each with its images as the engine's `multi_modal_data`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np
from ray import serve

from deployments.engine import EngineReplica, start_engine
from deployments.metrics import service_metrics
from deployments.plugins import add_plugin_path
from scoring.checkpoints import sequence_limit
from scoring.chunking import WindowBudget
from scoring.config.schema import CrossEncoderModelConfig
from scoring.cross_encoder.pairs import (
    CrossEncoderHead,
    CrossEncoderTokenizer,
    PairInput,
    Qwen3RerankerPairs,
    activation_name,
    check_one_label,
)
from scoring.cross_encoder.jina_m0 import M0_ENGINE_ARGS, M0Pair, M0Prompts, checkpoint_is_jina_m0, processor_kwargs
from scoring.messages import Item, ScoreOutcome

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10)
class CrossEncoder(EngineReplica):
    async def __init__(self, model: CrossEncoderModelConfig):
        """Start the engine (loading the weights), then score one pair: the replica is ready only once it can serve."""
        from transformers import AutoTokenizer

        started = time.perf_counter()
        self._model = model
        self._m0: M0Prompts | None = None
        jina_m0 = checkpoint_is_jina_m0(model)
        if jina_m0:
            add_plugin_path()
        self._engine = start_engine(model, runner="pooling", pooler_config={"task": "classify"},
                                    **(M0_ENGINE_ARGS if jina_m0 else {}))
        model_config = self._engine.model_config
        check_one_label(model_config.hf_config, model.name)
        self._head = CrossEncoderHead(activation_name(model_config.hf_config, model.activation_fn))
        tokenizer = AutoTokenizer.from_pretrained(model.resolved_tokenizer())
        self._max_len = sequence_limit(model_config, tokenizer.model_max_length)
        if jina_m0:
            self._m0 = M0Prompts(tokenizer, self._max_len, processor_kwargs(model),
                                 model.max_tokens_per_query, model.max_tokens_per_doc)
        elif model.template == "qwen3-reranker":
            self._tokens = Qwen3RerankerPairs(tokenizer, self._max_len, model.instruction,
                                              model.max_tokens_per_query, model.max_tokens_per_doc)
        else:
            self._tokens = CrossEncoderTokenizer(tokenizer, self._max_len, model.max_tokens_per_query,
                                                 model.max_tokens_per_doc)
        warm_up = time.perf_counter()
        await self.score("warm-up", ["warm-up"])
        logger.info(
            "CrossEncoder %s ready in %.1fs (warm-up %.2fs, pairs of up to %d tokens, activation %s)",
            model.name,
            time.perf_counter() - started,
            time.perf_counter() - warm_up,
            self._max_len,
            self._head.name,
        )

    async def score(
        self,
        query: Item,
        documents: list[Item],
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
    ) -> ScoreOutcome:
        """The relevance of each document to `query`, in input order; tokens: every pair's (image tokens too).
        `instruction`: this request's for a model with a template (None: the configured one); a model without one
        has none."""
        if self._m0 is not None:
            pairs = self._m0.pairs(query, documents, max_tokens_per_query, max_tokens_per_doc)
            with service_metrics().stage("cross_encoder", self._model.name):
                logits = await asyncio.gather(*(self._m0_logit(pair) for pair in pairs))
            tokens = sum(pair.length for pair in pairs)
        else:
            instructed = {} if instruction is None else {"instruction": instruction}
            pairs = self._tokens.pairs(query, documents, max_tokens_per_query, max_tokens_per_doc, **instructed)
            with service_metrics().stage("cross_encoder", self._model.name):
                logits = await asyncio.gather(*(self._logit(pair) for pair in pairs))
            tokens = sum(len(pair.token_ids) for pair in pairs)
        service_metrics().scored(self._model.name, len(pairs), tokens)
        return ScoreOutcome(
            scores=self._head.scores(np.asarray(logits, dtype=np.float32)),
            query_tokens=0,
            document_tokens=tokens,
            query_cache_hit=False,
        )

    def window_budget(self) -> WindowBudget:
        """What the ingress needs to cut long documents into windows that fit a pair beside the query."""
        return (self._m0 or self._tokens).window_budget(self._model.resolved_tokenizer())

    async def _logit(self, pair: PairInput) -> float:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        extra = None if pair.second_segment_start is None else {"compressed_token_type_ids": pair.second_segment_start}
        params = PoolingParams(task="classify", use_activation=False, extra_kwargs=extra)
        final = None
        async for output in self._engine.encode(
            TokensPrompt(prompt_token_ids=pair.token_ids), params, request_id=uuid.uuid4().hex
        ):
            final = output
        return float(final.outputs.data[0])

    async def _m0_logit(self, pair: M0Pair) -> float:
        """jina-reranker-m0's logit less the card's bias (vLLM's JinaVL pooler subtracts it)."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=pair.token_ids)
        if pair.images:
            prompt["multi_modal_data"] = {"image": pair.images if len(pair.images) > 1 else pair.images[0]}
        final = None
        async for output in self._engine.encode(
            prompt, PoolingParams(task="classify", use_activation=False), request_id=uuid.uuid4().hex
        ):
            final = output
        return float(final.outputs.data[0])
