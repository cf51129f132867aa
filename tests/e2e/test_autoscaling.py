"""The encoder autoscales: up to 2 replicas under load, back to 1 once the load stops.

serve_config.yaml's application, deployed from config as `serve run` does, with short autoscaling delays.
Every encoder replica is a real vLLM engine (about a minute to start here), hence the long timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

import httpx
import pytest
from ray import serve

from tests.conftest import wait_until
from tests.e2e.serve_configs import app_from_serve_config, app_running, deploy, replica_states

pytestmark = pytest.mark.e2e

APP, ROUTE = "autoscale", "/autoscale"
ENCODER = "Encoder-minilm-colbert"
QUICK_AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 3,
    "look_back_period_s": 2,
}


class Load:
    """`clients` concurrent HTTP clients sending reranks of fresh documents (so no cache answers them)
    from a background thread until stopped."""

    def __init__(self, url: str, clients: int = 3, documents: int = 16):
        self._url, self._clients, self._documents = url, clients, documents
        self._stop = threading.Event()
        self._counter = itertools.count()
        self.statuses: list[int] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=300)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self._url, timeout=300) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self._clients)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            n = next(self._counter)
            documents = [f"document {n}-{i} about topic {i * n} and a few more words" for i in range(self._documents)]
            r = await client.post("/v1/rerank", json={"query": f"topic {n}", "documents": documents})
            self.statuses.append(r.status_code)


def test_encoder_scales_up_under_load_and_back_down(serve_instance):
    deploy(
        app_from_serve_config(
            APP,
            ROUTE,
            {ENCODER: {"autoscaling_config": QUICK_AUTOSCALING, "num_replicas": None}},
        )
    )
    try:
        wait_until(lambda: app_running(APP), timeout=600, interval=0.25)
        assert replica_states(APP, ENCODER) == {"RUNNING": 1}

        with Load(f"{serve_instance}{ROUTE}") as load:
            wait_until(lambda: replica_states(APP, ENCODER).get("RUNNING") == 2, timeout=600, interval=0.25)
        assert load.statuses and set(load.statuses) == {200}

        wait_until(lambda: replica_states(APP, ENCODER) == {"RUNNING": 1}, timeout=300, interval=0.25)
    finally:
        serve.delete(APP)
