"""How a vLLM engine is set up on a CPU machine (the engine itself starts in the e2e tests)."""

import os

from deployments.engine import _cpu_engine_args


def test_cpu_engine_runs_the_model_in_the_engine_process_with_the_configured_threads(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray gives an actor of num_cpus 1
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert _cpu_engine_args(3) == {"distributed_executor_backend": "uni"}
    # vLLM keeps the single-process executor on CPU only with this set to 0; the engine process inherits both.
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # threads sleep between parallel regions: the cores are shared


def test_cpu_engine_kv_cache_is_the_configured_size():
    from scoring.config.schema import LateInteractionModelConfig

    default = LateInteractionModelConfig(name="m").cpu_kv_cache_bytes
    assert default == 2**30  # not vLLM's share of the machine's RAM for every engine
    assert _cpu_engine_args(2, default) == {"distributed_executor_backend": "uni", "kv_cache_memory_bytes": 2**30}


def test_cpu_engine_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _cpu_engine_args(None)
    assert os.environ["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))


def test_serve_log_file_is_reconnected_after_logging_is_reconfigured(tmp_path):
    import logging
    import logging.config
    import logging.handlers

    from deployments.engine import _serve_log_file_kept

    logger = logging.getLogger("ray.serve")
    file_handler = logging.FileHandler(tmp_path / "replica.log")
    buffer = logging.handlers.MemoryHandler(capacity=1, target=file_handler)
    logger.addHandler(buffer)
    try:
        with _serve_log_file_kept():
            # what vLLM does on import and at engine start: closes every handler in the process
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        assert buffer.target is file_handler
        logger.warning("after the engine started")
        buffer.flush()
        assert "after the engine started" in (tmp_path / "replica.log").read_text()
    finally:
        logger.removeHandler(buffer)
        file_handler.close()
