"""Starting a vLLM async engine from a model's config: what the encoder and generative replicas share."""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from contextlib import contextmanager
from typing import Any

from scoring.config.schema import EngineModelConfig

logger = logging.getLogger("ray.serve")


def start_engine(
    model: EngineModelConfig,
    weights: str | None = None,
    tokenizer: str | None = None,
    **task_args: Any,
):
    """An `AsyncLLM` for `model`: its weights (or the folder `weights`, e.g. a checkpoint converted for vLLM),
    tokenizer, lengths and engine settings, `task_args` for the runner, then the model's own `engine_kwargs` (which
    win)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _serve_log_file_kept():
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

    if current_platform.is_cpu():
        task_args = {**_cpu_engine_args(model.cpu_threads, model.cpu_kv_cache_bytes), **task_args}

    args = {
        "model": weights or model.resolved_model(),
        "tokenizer": tokenizer or model.resolved_tokenizer(),
        "dtype": model.dtype,
        "max_model_len": model.max_model_len,
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "max_num_seqs": model.max_num_seqs,
        **task_args,
        **model.engine_kwargs,
    }
    started = time.perf_counter()
    logger.info("Model %s: starting the vLLM engine (loads %s)", model.name, args["model"])
    with _serve_log_file_kept():
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
    logger.info("Model %s: weights loaded and vLLM engine started in %.1fs", model.name, time.perf_counter() - started)
    return engine


@contextmanager
def _serve_log_file_kept():
    """vLLM configures logging with `dictConfig`, which closes every handler in the process, among them the
    buffering handler through which Serve writes this replica's log file (closing it drops its target): the
    replica's later lines would reach stderr but never its file. Reconnect what was closed."""
    buffers = [
        (handler, handler.target)
        for handler in logging.getLogger("ray.serve").handlers
        if isinstance(handler, logging.handlers.MemoryHandler) and handler.target is not None
    ]
    try:
        yield
    finally:
        for handler, target in buffers:
            if handler.target is None:
                handler.setTarget(target)  # a closed file handler reopens its file on the next record


def _cpu_engine_args(threads: int | None, kv_cache_bytes: int | None = None) -> dict[str, Any]:
    """On CPU, vLLM's default is an engine-core process that schedules plus a worker process that runs the model on
    one core, while the engine core polls for its results on the other: on a small machine half the cores never run
    the model. Instead the model runs inside the engine-core process (the single-process executor, which vLLM allows
    on CPU only with `VLLM_ENABLE_V1_MULTIPROCESSING=0`; the async engine still starts its engine core as a process
    of its own) with `threads` OpenMP threads, inherited by that process from this one's environment. The threads
    sleep between parallel regions instead of spinning (`OMP_WAIT_POLICY=PASSIVE`, unless set already): the cores
    are shared with the engine's own Python and with Serve's replicas, and spinning threads take their time.
    The KV cache is `kv_cache_bytes` when set, instead of vLLM's share of the machine's RAM per engine."""
    threads = threads or len(os.sched_getaffinity(0))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logger.info("CPU engine: model runs in the engine process with %d threads", threads)
    kv_cache = {"kv_cache_memory_bytes": kv_cache_bytes} if kv_cache_bytes is not None else {}
    return {"distributed_executor_backend": "uni", **kv_cache}


class EngineReplica:
    """Health check and shutdown for a replica whose vLLM engine is `self._engine`."""

    async def check_health(self) -> None:
        """Serve calls this periodically; it raises (and Serve replaces the replica) once the engine is dead."""
        await self._engine.check_health()

    def __del__(self):
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
