"""Generative deployment: a vLLM CausalLM that scores items by the probability of label tokens.

Each item is one engine request reading one next-token distribution (`max_tokens=1`, the labels as
`logprob_token_ids`); all items of a call, and of concurrent calls, are in flight together and batched by
vLLM. `/generative_scoring` calls get vLLM's raw prompts; rerank and score calls the model's template.
Prefix caching is on: when the prompts of a call share a prefix of at least one cache block (a long
query before short items), one prompt runs first so the others find the prefix computed instead of every
prompt of the first batch computing it again.
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
from scoring.chunking import WindowBudget
from scoring.config.schema import LOGIT_TEMPLATES, GenerativeModelConfig
from scoring.generative.labels import (
    GenerativeJob,
    GenerativeModelInfo,
    GenerativeOutcome,
    first_label_probability,
    shared_prefix_length,
    template_scores,
)
from scoring.api.protocol import MAX_LABEL_TOKEN_IDS
from scoring.generative.templates import TEMPLATES_WITH_INSTRUCTION, TokenIds, build_template, label_token_ids

logger = logging.getLogger("ray.serve")


# A scheduling token, as for the encoder (deployments/encoder.py): the engine runs on every core it may.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10)
class Generative(EngineReplica):
    async def __init__(self, model: GenerativeModelConfig):
        """Start the engine (loading the weights), then score one item: the replica is ready only once it can serve."""
        from transformers import AutoTokenizer

        started = time.perf_counter()
        self._model = model
        tokenizer = AutoTokenizer.from_pretrained(model.resolved_tokenizer())
        # Fail at start, with the key named, when a label word is not one token of this tokenizer.
        self._labels = label_token_ids(tokenizer, model.label_tokens, model.name)
        self._engine = start_engine(
            model,
            runner="generate",
            enable_prefix_caching=model.enable_prefix_caching,
            max_logprobs=MAX_LABEL_TOKEN_IDS,
            # a logit template's score is a label's logit, which log-probabilities no longer carry
            **({"logprobs_mode": "raw_logits"} if model.template in LOGIT_TEMPLATES else {}),
            **({"block_size": model.kv_block_size} if model.kv_block_size else {}),
        )
        model_config = self._engine.model_config
        self._block_size = int(self._engine.vllm_config.cache_config.block_size or 16)
        self._info = GenerativeModelInfo(
            vocab_size=int(model_config.get_vocab_size()),
            max_model_len=int(model_config.max_model_len),
            label_token_ids=self._labels,
            kv_block_size=self._block_size,
            raw_logits=model.template in LOGIT_TEMPLATES,
        )
        self._template = build_template(
            model.template, tokenizer, self._info.max_model_len, model.instruction, model.max_tokens_per_doc
        )
        self._tokenizer = tokenizer
        self._raw = build_template("raw", tokenizer, self._info.max_model_len)
        self._prefixes_in_flight: dict[tuple[int, ...], asyncio.Future] = {}
        warm_up = time.perf_counter()
        await self.score(GenerativeJob(query="warm-up", items=["warm-up"]))
        logger.info(
            "Generative %s ready in %.1fs (warm-up %.2fs, max_model_len=%d, labels=%s, prefix cache block=%d)",
            model.name,
            time.perf_counter() - started,
            time.perf_counter() - warm_up,
            self._info.max_model_len,
            self._labels,
            self._block_size,
        )

    def info(self) -> GenerativeModelInfo:
        return self._info

    def window_budget(self) -> WindowBudget:
        """What the ingress needs to cut long documents into windows that fit a prompt beside the query: the
        template's own tokens are measured on a prompt with an empty document (whatever the template)."""
        probe = "query"
        fixed = len(self._template.prompts(probe, [""])[0]) - self._count(probe)
        slot = self._model.template in TEMPLATES_WITH_INSTRUCTION
        return WindowBudget(
            self._model.resolved_tokenizer(),
            document_tokens=self._info.max_model_len - 1 - fixed,
            query_shares_input=True,
            instruction_tokens=self._count(self._model.instruction or "") if slot else 0,
        )

    def _count(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    async def score(self, job: GenerativeJob) -> GenerativeOutcome:
        """The first label's probability for every item, in input order."""
        from vllm import SamplingParams

        template = self._raw if job.raw_prompt else self._template
        prompts = template.prompts(
            job.query,
            job.items,
            item_first=job.item_first,
            add_special_tokens=job.add_special_tokens,
            max_query_tokens=job.max_query_tokens,
            max_item_tokens=job.max_item_tokens,
            instruction=job.instruction,
        )
        labels = job.label_token_ids or self._labels
        params = SamplingParams(max_tokens=1, logprobs=len(labels), logprob_token_ids=labels)
        logprobs = np.empty((len(prompts), len(labels)), dtype=np.float64)
        with service_metrics().stage("generative", self._model.name):
            rest = await self._prime_shared_prefix(prompts, params, labels, logprobs)
            reads = await asyncio.gather(*(self._read(prompts[i], params, labels) for i in rest))
        for i, row in zip(rest, reads):
            logprobs[i] = row
        service_metrics().scored(self._model.name, len(prompts), sum(len(p) for p in prompts))
        if job.raw_prompt:
            scores = first_label_probability(logprobs, job.apply_softmax)
        else:
            scores = template_scores(self._model.template, logprobs, self._model.normalize)
        return GenerativeOutcome(
            scores=scores,
            prompt_tokens=sum(len(p) for p in prompts),
            completion_tokens=len(prompts),
        )

    async def _prime_shared_prefix(self, prompts, params, labels, logprobs: np.ndarray) -> list[int]:
        """Run one prompt alone when the prompts share at least a cache block; returns the prompts left."""
        shared = shared_prefix_length(prompts) // self._block_size * self._block_size
        if not self._model.enable_prefix_caching or shared == 0:
            return list(range(len(prompts)))
        key = tuple(prompts[0][:shared])
        pending = self._prefixes_in_flight.get(key)
        if pending is not None:
            # Another call is computing this prefix right now: wait for it, then every prompt hits the cache.
            await asyncio.shield(pending)
            return list(range(len(prompts)))
        future = asyncio.get_running_loop().create_future()
        self._prefixes_in_flight[key] = future
        try:
            logprobs[0] = await self._read(prompts[0], params, labels)
        finally:
            del self._prefixes_in_flight[key]
            future.set_result(None)
        return list(range(1, len(prompts)))

    async def _read(self, prompt: TokenIds, params, labels: list[int]) -> list[float]:
        """Full-vocabulary log-probabilities of `labels` as the token after `prompt` (their logits for a logit
        template's engine)."""
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self._engine.generate(
            TokensPrompt(prompt_token_ids=prompt), params, request_id=uuid.uuid4().hex
        ):
            final = output
        logprobs = final.outputs[0].logprobs[0]
        return [logprobs[t].logprob for t in labels]
