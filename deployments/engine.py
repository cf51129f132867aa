"""Starting a vLLM async engine from a model's config: what the encoder and generative replicas share."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from scoring.config import GenerativeModelConfig, LateInteractionModelConfig

logger = logging.getLogger("ray.serve")


def start_engine(model: LateInteractionModelConfig | GenerativeModelConfig, **task_args: Any):
    """An `AsyncLLM` for `model`: its weights, lengths and engine settings, `task_args` for the runner, then the
    model's own `engine_kwargs` (which win)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = {
        "model": model.resolved_model(),
        "tokenizer": model.resolved_tokenizer(),
        "dtype": model.dtype,
        "max_model_len": model.max_model_len,
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "max_num_seqs": model.max_num_seqs,
        **task_args,
        **model.engine_kwargs,
    }
    started = time.perf_counter()
    logger.info("Model %s: starting the vLLM engine (loads %s)", model.name, args["model"])
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
    logger.info("Model %s: weights loaded and vLLM engine started in %.1fs", model.name, time.perf_counter() - started)
    return engine


class EngineReplica:
    """Health check and shutdown for a replica whose vLLM engine is `self._engine`."""

    async def check_health(self) -> None:
        """Serve calls this periodically; it raises (and Serve replaces the replica) once the engine is dead."""
        await self._engine.check_health()

    def __del__(self):
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
