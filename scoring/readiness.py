"""Whether each deployment of the application can serve, and if not why, from what Serve's controller reports.

A deployment can serve once one of its replicas is RUNNING (encoder and generative replicas warm up in their
constructor, so RUNNING means warmed). Otherwise it is, from the controller's details of its replicas and its
status message:
- `starting`: a replica is being scheduled or is running its constructor (an engine loading its weights);
- `unplaceable`: no node has the resources a replica asks for (`ray_actor_options`), so it never starts;
- `failing`: replicas fail in their constructor and Serve retries (the error is the last one raised);
- `failed`: Serve gave up (DEPLOY_FAILED), with the error.
A model can serve when every deployment it needs can. No Ray import: the ingress feeds this the controller's
`get_serve_instance_details()` (deployments/readiness.py), and tests feed it dicts of the same shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

State = Literal["ready", "starting", "unplaceable", "failing", "failed"]
SEVERITY: dict[str, int] = {"ready": 0, "starting": 1, "failing": 2, "unplaceable": 3, "failed": 4}
# What a client that got a 503 for a model in this state should wait before trying again.
RETRY_AFTER_S: dict[str, int] = {"ready": 1, "starting": 5, "failing": 10, "unplaceable": 30, "failed": 60}
# A replica with no node yet whose resource shape Ray lists among the demands it cannot grant now is reported as
# unplaceable after this long (a demand can be pending for a moment while resources are freed); when the demands
# cannot be read, only after Serve's own slow-scheduling threshold, and only if the cluster lacks the resources. A
# replica whose worker process just starts (slow on a busy machine: tens of seconds) has no demand pending.
PLACEMENT_GRACE_S = 2.0
PLACEMENT_GRACE_WITHOUT_DEMANDS_S = 30.0
_MAX_ERROR_CHARS = 400


@dataclass(frozen=True)
class ClusterResources:
    """Ray's resources: all of the cluster's, what is free now (`ray.cluster_resources()`,
    `ray.available_resources()`), and the shapes of the requests waiting for resources (what `ray status` lists
    as pending demands; None when they could not be read)."""

    total: Mapping[str, float]
    free: Mapping[str, float]
    pending: Sequence[Mapping[str, float]] | None = None


@dataclass(frozen=True)
class DeploymentState:
    name: str
    state: State
    running: int
    target: int
    reason: str | None = None  # a sentence naming the deployment, None when ready


@dataclass(frozen=True)
class ModelState:
    state: State
    deployments: tuple[str, ...]
    reason: str | None = None


@dataclass(frozen=True)
class Readiness:
    """One look at the application: every deployment's state and every model's."""

    deployments: Mapping[str, DeploymentState]
    models: Mapping[str, ModelState]

    @property
    def ready(self) -> bool:
        return all(d.state == "ready" for d in self.deployments.values()) and all(
            m.state == "ready" for m in self.models.values()
        )

    @property
    def status(self) -> Literal["ok", "starting", "unavailable"]:
        """`ok` when everything can serve, `starting` while something only starts, else `unavailable`."""
        worst = max((SEVERITY[d.state] for d in self.deployments.values()), default=0)
        worst = max([worst, *(SEVERITY[m.state] for m in self.models.values())])
        return "ok" if worst == 0 else "starting" if worst == SEVERITY["starting"] else "unavailable"


def pending_placement(details: Mapping | None) -> bool:
    """Whether any replica of the application waits for a node (then its resources are worth reading)."""
    return any(
        not replica.get("node_id") and replica.get("state") == "STARTING"
        for deployment in (details or {}).get("deployments", {}).values()
        for replica in deployment.get("replicas", [])
    )


def application_readiness(
    details: Mapping | None,
    model_deployments: Mapping[str, Sequence[str]],
    now: float,
    resources: ClusterResources | None = None,
) -> Readiness:
    """The readiness of one application from its entry in `get_serve_instance_details()["applications"]`.

    `model_deployments` names the deployments each model needs; every deployment of the application counts for
    the whole, whether a model names it or not. `now` is wall-clock time (replica start times are)."""
    known = dict((details or {}).get("deployments", {}))
    names = list(known) + [n for ds in model_deployments.values() for n in ds if n not in known]
    deployments = {name: deployment_state(name, known.get(name), now, resources) for name in dict.fromkeys(names)}
    models = {model: model_state(tuple(names), deployments) for model, names in model_deployments.items()}
    return Readiness(deployments=deployments, models=models)


def model_state(deployments: tuple[str, ...], states: Mapping[str, DeploymentState]) -> ModelState:
    """The worst state among the model's deployments, with the reasons of those that cannot serve."""
    not_ready = [states[name] for name in deployments if states[name].state != "ready"]
    if not not_ready:
        return ModelState(state="ready", deployments=deployments)
    worst = max(not_ready, key=lambda s: SEVERITY[s.state])
    return ModelState(
        state=worst.state, deployments=deployments, reason="; ".join(s.reason for s in not_ready if s.reason)
    )


def deployment_state(
    name: str, details: Mapping | None, now: float, resources: ClusterResources | None = None
) -> DeploymentState:
    if details is None:
        return DeploymentState(name, "starting", 0, 0, f"{name} is not deployed yet")
    replicas = details.get("replicas", [])
    running = sum(1 for r in replicas if r.get("state") == "RUNNING")
    target = int(details.get("target_num_replicas", 0))
    if running:
        return DeploymentState(name, "ready", running, target)
    status, message = details.get("status", ""), details.get("message", "") or ""
    if status == "DEPLOY_FAILED":
        return DeploymentState(name, "failed", 0, target, f"{name} failed to start: {startup_error(message)}")
    if message.startswith("A replica's health check failed"):  # it died or hung while serving; Serve replaces it
        return DeploymentState(
            name, "failing", 0, target, f"{name} has no running replica: one failed its health check (it died or "
            "hung) and Serve is starting a new one"
        )
    if message.startswith("A replica failed to start") or status == "UNHEALTHY":
        return DeploymentState(
            name, "failing", 0, target, f"{name} keeps failing to start (Serve retries): {startup_error(message)}"
        )
    unplaced = [r for r in replicas if r.get("state") == "STARTING" and not r.get("node_id")]
    if unplaced:
        waited = now - min(float(r.get("start_time_s") or now) for r in unplaced)
        shortage = _placement_shortage(details.get("required_resources") or {}, resources, waited)
        if shortage is not None:
            return DeploymentState(name, "unplaceable", 0, target, f"{name} cannot be placed: {shortage}")
        return DeploymentState(
            name, "starting", 0, target, f"{name} is starting: its replica is being scheduled ({waited:.0f}s)"
        )
    starts = [float(r["start_time_s"]) for r in replicas if r.get("start_time_s")]
    since = f" for {now - min(starts):.0f}s" if starts else ""
    return DeploymentState(name, "starting", 0, target, f"{name} is starting: its replica is initializing{since}")


def timeout_message(timeout_s: float, waited_on: str, reason: str | None, documents: int) -> str:
    """What a 504 waited for and why it may not have come: the deployments, the reason one could not serve when it
    could not; "send fewer documents" only when they all could, so the request's documents were the work."""
    waited = f"no answer within {timeout_s:g}s from {waited_on}"
    if reason:
        return f"{waited}: {reason}; retry once GET /health is ok"
    if documents > 1:
        return f"{waited} for {documents} documents; retry, or send fewer documents"
    return f"{waited}; retry"


def startup_error(message: str) -> str:
    """The exception a replica raised, from Serve's deployment message ('...Error:\\n<traceback>'): its last line,
    where Python puts the exception and its message."""
    _, _, error = message.partition("Error:\n")
    lines = [line.strip() for line in (error or message).splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error (see `serve status`)"
    return last if len(last) <= _MAX_ERROR_CHARS else last[: _MAX_ERROR_CHARS - 3] + "..."


def _placement_shortage(required: Mapping[str, float], resources: ClusterResources | None, waited: float) -> str | None:
    """Why a replica needing `required` cannot be placed, or None while it may still be: more than the whole
    cluster has (at once), or, past the grace period, a request of its shape waits for resources."""
    needed = {k: float(v) for k, v in required.items() if v}
    if resources is None or not needed:
        return None
    over_total = {k: float(resources.total.get(k, 0.0)) for k, v in needed.items() if v > resources.total.get(k, 0.0)}
    if over_total:
        return f"each replica needs {_fmt(needed)}; the cluster has {_fmt(over_total)} in all"
    free = {k: float(resources.free.get(k, 0.0)) for k in needed}
    if resources.pending is None:
        short = any(v > free[k] for k, v in needed.items())
        waiting = short and waited >= PLACEMENT_GRACE_WITHOUT_DEMANDS_S
    else:
        waiting = waited >= PLACEMENT_GRACE_S and any(_same_shape(needed, shape) for shape in resources.pending)
    if waiting:
        return f"each replica needs {_fmt(needed)}; Ray has it waiting for them (free in the cluster: {_fmt(free)})"
    return None


def _same_shape(needed: Mapping[str, float], shape: Mapping[str, float]) -> bool:
    shape = {k: float(v) for k, v in shape.items() if v}
    return shape.keys() == needed.keys() and all(abs(shape[k] - v) < 1e-6 for k, v in needed.items())


def _fmt(resources: Mapping[str, float]) -> str:
    return json.dumps({k: round(v, 3) for k, v in resources.items()})
