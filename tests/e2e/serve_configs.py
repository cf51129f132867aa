"""Deploying variants of serve_config.yaml the way `serve run serve_config.yaml` does.

`deployments:` settings (autoscaling, actor resources) only apply when an application is deployed from a
config, not through `serve.run(build_app(...))`; these helpers take the application from serve_config.yaml,
change what a test needs, and hand it to the Serve controller as a config.
"""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def app_from_serve_config(name: str, route_prefix: str, deployments: dict[str, dict[str, Any]]) -> dict:
    """The application of serve_config.yaml under another name and route, its `deployments` entries updated
    per deployment name: `{"Scorer": {"num_replicas": 1, "autoscaling_config": None}}` (None removes a key)."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = copy.deepcopy(config["applications"][0])
    app["name"], app["route_prefix"] = name, route_prefix
    by_name = {d["name"]: d for d in app.get("deployments", [])}
    for deployment, settings in deployments.items():
        merged = {**by_name.get(deployment, {"name": deployment}), **settings}
        by_name[deployment] = {key: value for key, value in merged.items() if value is not None}
    app["deployments"] = list(by_name.values())
    return app


def deploy(*apps: dict) -> None:
    """Deploy `apps` from config on the running Serve instance (what `serve run`/`serve deploy` do);
    applications deployed with `serve.run` keep running."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": list(apps)}))


@contextlib.contextmanager
def serving(app: dict, base_url: str, **client_options):
    """`app` deployed from config and running; an httpx client on its route (`client_options`: headers, ...);
    the application deleted afterwards."""
    import httpx
    from ray import serve

    from tests.conftest import wait_until

    deploy(app)
    try:
        wait_until(lambda: app_running(app["name"]), timeout=600, interval=0.25)
        with httpx.Client(base_url=base_url + app["route_prefix"], timeout=120, **client_options) as client:
            yield client
    finally:
        serve.delete(app["name"])


def replica_states(app: str, deployment: str) -> dict[str, int]:
    """`{"RUNNING": n, "STARTING": m, ...}` for one deployment, from `serve.status()`."""
    from ray import serve

    application = serve.status().applications.get(app)
    if application is None or deployment not in application.deployments:
        return {}
    return dict(application.deployments[deployment].replica_states)


def app_running(app: str) -> bool:
    from ray import serve

    application = serve.status().applications.get(app)
    if application is not None and application.status == "DEPLOY_FAILED":
        raise RuntimeError(f"application {app!r} failed to deploy: {application.message}")
    return application is not None and application.status == "RUNNING"


def uncommented_serve_config(replacements: dict[str, str] | None = None) -> dict:
    """serve_config.yaml with its commented model and deployment entries uncommented, as its comment tells a user
    to do, after replacing text in those lines (`{"Qwen/Qwen3-Reranker-0.6B": "/tmp/tiny-qwen3"}`)."""
    lines = []
    for line in (ROOT / "serve_config.yaml").read_text().splitlines():
        match = re.match(r"^(\s{6,})# ((?:- |  ).*)$", line)
        if match:
            line = match.group(1) + match.group(2)
            for old, new in (replacements or {}).items():
                line = line.replace(old, new)
        lines.append(line)
    return yaml.safe_load("\n".join(lines))
