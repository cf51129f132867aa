"""The ingress's view of whether its application can serve: refreshed from the Serve controller in the background.

Every `period_s` the tracker asks the controller for the application's details (replica states, status messages,
start errors) and, while a replica waits for a node, for the cluster's resources; `scoring.readiness` turns them
into each deployment's and each model's state. `/health`, `/v1/models` and the per-model check before a request
read the last look without waiting; a look that says "not ready" and is older than `fresh_s` is taken again first
(at most one look in flight, shared), so a deployment that just became ready, or whose crashed replica Serve just
replaced, is not refused on an old look.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Mapping, Sequence

from scoring.api.protocol import DeploymentHealth, Health, ModelHealth
from scoring.errors import Unavailable
from scoring.readiness import (
    RETRY_AFTER_S,
    ClusterResources,
    Readiness,
    application_readiness,
    pending_placement,
)

logger = logging.getLogger("ray.serve")


class ReadinessTracker:
    def __init__(self, model_deployments: Mapping[str, Sequence[str]], period_s: float = 1.0, fresh_s: float = 0.2):
        self._model_deployments = {model: tuple(names) for model, names in model_deployments.items()}
        self._period_s = period_s
        self._fresh_s = fresh_s
        self._last: Readiness | None = None
        self._taken_at = 0.0
        self._error: str | None = None
        self._in_flight: asyncio.Task | None = None
        self._loop_task: asyncio.Task | None = None
        self._controller = None
        self._app_name: str | None = None

    def deployments_of(self, model: str) -> tuple[str, ...]:
        return self._model_deployments.get(model, ())

    async def current(self, recheck: Callable[[Readiness], bool] = lambda look: not look.ready) -> Readiness:
        """The last look, taken again first when `recheck` says so of it and it is not fresh."""
        self._ensure_refreshing()
        if self._last is None or (recheck(self._last) and time.monotonic() - self._taken_at > self._fresh_s):
            await self._refresh()
        if self._last is None:
            raise Unavailable(f"readiness unknown: the Serve controller did not answer ({self._error})")
        return self._last

    async def require(self, model: str) -> None:
        """Raise a 503 naming the deployments and the reason when `model` cannot serve now; returns at once when it
        can. When the controller cannot be asked the request goes on (its replicas may well serve)."""
        try:
            look = await self.current(recheck=lambda look: _state_of(look, model) not in ("ready", None))
        except Unavailable:
            return
        state = look.models.get(model)
        if state is not None and state.state != "ready":
            raise Unavailable(f"model {model!r} cannot serve yet: {state.reason}", RETRY_AFTER_S[state.state])

    def last_reason(self, model: str) -> str | None:
        """Why `model` could not serve at the last look (None when it could, or nobody looked)."""
        state = self._last.models.get(model) if self._last is not None else None
        return state.reason if state is not None and state.state != "ready" else None

    def _ensure_refreshing(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await self._refresh()
            await asyncio.sleep(self._period_s)  # a polling period: there is no event to await

    async def _refresh(self) -> None:
        """One look at a time: concurrent callers share the look in flight."""
        if self._in_flight is None or self._in_flight.done():
            self._in_flight = asyncio.get_running_loop().create_task(self._look())
        await asyncio.shield(self._in_flight)

    async def _look(self) -> None:
        try:
            controller, app_name = await self._controller_and_app()
            details = (await controller.get_serve_instance_details.remote())["applications"].get(app_name)
            resources = await asyncio.to_thread(_cluster_resources) if pending_placement(details) else None
            self._last = application_readiness(details, self._model_deployments, time.time(), resources)
            self._taken_at = time.monotonic()
            self._error = None
        except Exception as exc:  # keep the last look; the next period tries again
            if self._error is None:
                logger.warning("readiness: cannot read the application's status: %r", exc)
            self._error = repr(exc)

    async def _controller_and_app(self):
        if self._controller is None:
            import ray
            from ray import serve
            from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

            self._app_name = serve.get_replica_context().app_name
            self._controller = await asyncio.to_thread(
                ray.get_actor, SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE
            )
        return self._controller, self._app_name


def _state_of(look: Readiness, model: str) -> str | None:
    state = look.models.get(model)
    return state.state if state is not None else None


def _cluster_resources() -> ClusterResources:
    import ray

    return ClusterResources(total=ray.cluster_resources(), free=ray.available_resources(), pending=_pending_demands())


def _pending_demands() -> list[dict[str, float]] | None:
    """The shapes of the resource requests Ray cannot grant now (what `ray status` lists as pending demands)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        demands = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=5).resource_demands
    except Exception as exc:
        logger.debug("readiness: cannot read Ray's pending demands: %r", exc)
        return None
    return [dict(b.bundle) for d in demands.ray_task_actor_demand for b in d.bundles_by_count]


def health_of(readiness: Readiness) -> Health:
    """The `/health` body of one look."""
    return Health(
        status=readiness.status,
        models={
            name: ModelHealth(state=m.state, message=m.reason, deployments=list(m.deployments))
            for name, m in readiness.models.items()
        },
        deployments={
            name: DeploymentHealth(
                state=d.state, message=d.reason, running_replicas=d.running, target_replicas=d.target
            )
            for name, d in readiness.deployments.items()
        },
    )
