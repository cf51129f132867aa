"""Listwise deployment: a vLLM pooling engine running jina-reranker-v3 (`JinaForRanking`, `token_embed`).

A call scores one query's list: the prompts (one a block of the list, `scoring/listwise/prompt.py`) go to vLLM as token
ids, all blocks of a call (and of concurrent calls) in flight together; vLLM's `JinaForRanking` pooler returns the
projected hidden states at the documents' and the query's marker tokens, and the scores are computed here from them.
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
from scoring.config.schema import ListwiseModelConfig
from scoring.listwise.prompt import (
    DEFAULT_MAX_DOC_TOKENS,
    DEFAULT_MAX_QUERY_TOKENS,
    EMBED_TOKEN,
    EMBED_TOKEN_ID,
    RERANK_TOKEN,
    RERANK_TOKEN_ID,
    Block,
    ListwisePrompts,
    fitted_limits,
    merge_blocks,
    split_engine_rows,
)
from scoring.chunking import WindowBudget
from scoring.messages import ScoreOutcome

logger = logging.getLogger("ray.serve")

ARCHITECTURE = "JinaForRanking"


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10)
class Listwise(EngineReplica):
    async def __init__(self, model: ListwiseModelConfig):
        """Start the engine (loading the weights), then score one list: the replica is ready only once it can serve."""
        from transformers import AutoTokenizer

        started = time.perf_counter()
        self._model = model
        tokenizer = AutoTokenizer.from_pretrained(model.resolved_tokenizer())
        check_marker_tokens(tokenizer, model.name)
        self._engine = start_engine(model, runner="pooling", pooler_config={"task": "token_embed"})
        model_config = self._engine.model_config
        if model_config.architecture != ARCHITECTURE:
            raise ValueError(
                f"model {model.name!r}: kind listwise serves {ARCHITECTURE} checkpoints (jina-reranker-v3); "
                f"this one is {model_config.architecture}"
            )
        max_length = int(model_config.max_model_len)
        if 0 < tokenizer.model_max_length < max_length:
            max_length = tokenizer.model_max_length  # the model's own rule splits by the tokenizer's length
        wanted = (
            model.max_tokens_per_query or DEFAULT_MAX_QUERY_TOKENS,
            model.max_tokens_per_doc or DEFAULT_MAX_DOC_TOKENS,
        )
        max_query, max_doc = fitted_limits(tokenizer, max_length, *wanted, model.instruction)
        if (max_query, max_doc) != wanted:
            logger.warning(
                "Listwise %s: query/document limits %s lowered to %s to fit max_model_len %d",
                model.name, wanted, (max_query, max_doc), max_length,
            )
        self._max_doc = max_doc
        self._prompts = ListwisePrompts(tokenizer, max_length, max_query, max_doc, model.block_size, model.instruction)
        warm_up = time.perf_counter()
        await self.score("warm-up", ["warm-up"])
        logger.info(
            "Listwise %s ready in %.1fs (warm-up %.2fs, context %d, query/document limits %d/%d, blocks of %d)",
            model.name,
            time.perf_counter() - started,
            time.perf_counter() - warm_up,
            max_length,
            max_query,
            max_doc,
            model.block_size,
        )

    def window_budget(self) -> WindowBudget:
        """What the ingress needs to cut long documents: a passage's own limit. The query has a place of its own in
        the prompt, and the model's block rule fits the passages (windows among them) into prompts."""
        return WindowBudget(self._model.resolved_tokenizer(), document_tokens=self._max_doc)

    async def score(
        self,
        query: str,
        documents: list[str],
        max_tokens_per_query: int | None = None,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
    ) -> ScoreOutcome:
        """The relevance of each document to `query` within this list, in input order; tokens: every block's."""
        blocks = self._prompts.blocks(query, documents, max_tokens_per_query, max_tokens_per_doc, instruction)
        with service_metrics().stage("listwise", self._model.name):
            rows = await asyncio.gather(*(self._rows(block) for block in blocks))
        queries, document_rows = zip(*(split_engine_rows(r, len(b.positions)) for r, b in zip(rows, blocks)))
        order = [p for b in blocks for p in b.positions]
        scores = np.empty(len(documents), dtype=np.float64)
        scores[order] = merge_blocks(queries, document_rows)
        tokens = sum(len(b.token_ids) for b in blocks)
        service_metrics().scored(self._model.name, len(documents), tokens)
        return ScoreOutcome(scores=scores, query_tokens=0, document_tokens=tokens, query_cache_hit=False)

    async def _rows(self, block: Block) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self._engine.encode(
            TokensPrompt(prompt_token_ids=block.token_ids),
            PoolingParams(task="token_embed"),
            request_id=uuid.uuid4().hex,
        ):
            final = output
        return final.outputs.data.float().numpy()


def check_marker_tokens(tokenizer, model: str) -> None:
    """vLLM's pooler reads the rows at fixed ids: the tokenizer must map the marker tokens to exactly those."""
    for token, wanted in ((EMBED_TOKEN, EMBED_TOKEN_ID), (RERANK_TOKEN, RERANK_TOKEN_ID)):
        found = tokenizer.convert_tokens_to_ids(token)
        if found != wanted:
            raise ValueError(
                f"model {model!r}: the tokenizer maps {token} to {found}; jina-reranker-v3 (and vLLM's pooler) "
                f"read it at id {wanted}"
            )
