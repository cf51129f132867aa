"""Shared fixtures: one Ray cluster and one Serve instance for the whole session, and the default app."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# vLLM's own CPU CI setting (vllm/platforms/cpu.py): models run through Dynamo with the eager backend, not inductor,
# whose compile is most of a tiny engine's start, at every start (vLLM 0.32 cannot load its AOT compile cache on CPU:
# "'function' object has no attribute 'finalize_loading'"). Ray's workers and `serve run` inherit it.
# VLLM_CPU_CI_ENV=0 runs the suite on inductor, as a deployment runs.
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

ROOT = Path(__file__).resolve().parents[1]
METRICS_PORT_ENV = "RERANK_TEST_METRICS_PORT"


def default_app_args() -> dict:
    """The `args` of the application in serve_config.yaml: tests run exactly what users run."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return config["applications"][0]["args"]


_handed_out: set[int] = set()


def _free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range and not handed out before in this process. A
    port the kernel assigns (`bind(0)`) is one it may assign again to any process binding port 0, such as the Ray
    processes starting beside the tests, between this check and the bind it is meant for (seen: Ray's metrics agent
    failing with "Address already in use", which takes the session's cluster down)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(min(20000, low // 2), low), 500):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture(scope="session")
def serve_instance():
    """Ray (local, real) with Serve's HTTP proxy on a free port; yields the base URL."""
    import ray
    from ray import serve

    # Logical CPUs above the 2 physical ones, so tests can add replicas; vLLM shares the real cores.
    # The metrics agent runs without the dashboard; tests scrape it on this port (metrics_url).
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=int(os.environ.setdefault(METRICS_PORT_ENV, str(_free_port()))),
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_url(serve_instance) -> str:
    """Ray's Prometheus endpoint of this node (where Serve replicas' metrics are exported)."""
    return f"http://127.0.0.1:{os.environ[METRICS_PORT_ENV]}/metrics"


@pytest.fixture(scope="session")
def default_app(serve_instance):
    """The default application from serve_config.yaml; yields (base URL, ingress handle)."""
    from ray import serve

    from deployments.app import build_app

    handle = serve.run(build_app(default_app_args()), name="reranker", route_prefix="/")
    yield serve_instance, handle
    serve.delete("reranker")


@pytest.fixture(scope="session")
def hf_token_embeddings():
    """The default model's token embeddings through HF transformers (float32, float64 out, L2-normalised per token,
    as the encoder returns them): `embed(text, kind)`, kind "query" or "document" (its token limit)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from scoring.config.schema import resolve_model_path

    model_cfg = default_app_args()["models"][0]
    path = resolve_model_path(model_cfg["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, torch_dtype=torch.float32).eval()

    def embed(text: str, kind: str) -> np.ndarray:
        limit = model_cfg["max_tokens_per_query" if kind == "query" else "max_tokens_per_doc"]
        ids = tokenizer(text, truncation=True, max_length=limit, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0].double()
        return torch.nn.functional.normalize(hidden, dim=-1).numpy()

    return embed


def wait_until(condition, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
