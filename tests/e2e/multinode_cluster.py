"""Serve the default application on a local two-node Ray cluster, encoder and scorer on different nodes.

Run by tests/e2e/test_multinode.py in its own process (a test session already holds a single-node Ray):
    python -m tests.e2e.multinode_cluster result.json < request.json
Reads `{"query": str, "documents": [str]}`; writes
`{"results": <the /v1/rerank results>, "nodes": {deployment: [node ids]}, "node_resources": {node id: [resource names]}}`
to the file named (stdout carries Ray's own output).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from tests.conftest import _free_port, wait_until
from tests.e2e.serve_configs import ROOT, app_from_serve_config, app_running, deploy

APP = "multinode"
ENCODER, SCORER = "Encoder-minilm-colbert", "Scorer"
# Custom resources name each node's role; a replica asking for a sliver of one lands on that node.
PLACEMENT = {
    ENCODER: {"num_replicas": 1, "autoscaling_config": None, "ray_actor_options": {"num_cpus": 1, "resources": {"encoder_node": 0.01}}},
    SCORER: {"num_replicas": 1, "autoscaling_config": None, "ray_actor_options": {"num_cpus": 0.5, "resources": {"scorer_node": 0.01}}},
}


def replica_nodes(app: str) -> dict[str, list[str]]:
    """Node id of every replica actor of `app`, by deployment: asked of the actors themselves."""
    nodes: dict[str, list[str]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if not name.startswith(f"SERVE_REPLICA::{app}#"):
            continue
        deployment = name.split("#")[1]
        handle = ray.get_actor(name, namespace=actor["namespace"])
        node = ray.get(handle.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))
        nodes.setdefault(deployment, []).append(node)
    return nodes


def main(out: Path) -> None:
    request = json.load(sys.stdin)
    # Workers of every node import `deployments` and `scoring` from the repository.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 3, "resources": {"scorer_node": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={"encoder_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(app_from_serve_config(APP, f"/{APP}", PLACEMENT))
        wait_until(lambda: app_running(APP), timeout=600, interval=0.25)
        response = httpx.post(f"http://127.0.0.1:{port}/{APP}/v1/rerank", json=request, timeout=300)
        response.raise_for_status()
        result = {
            "results": response.json()["results"],
            "nodes": replica_nodes(APP),
            "node_resources": {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]},
        }
        out.write_text(json.dumps(result))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
