"""Encoder and scorer on different nodes of a two-node Ray cluster give the scores of the single-node app.

The cluster needs its own Ray, so it runs in a separate process (tests/e2e/multinode_cluster.py). With the
encoder on one node and the scorer on the other, document embeddings (here well over Ray's 100 KiB inline
limit) travel between the nodes through the object store.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.e2e.multinode_cluster import ENCODER, SCORER
from tests.e2e.serve_configs import ROOT

pytestmark = pytest.mark.e2e

QUERY = "how do vaccines train the immune system?"
DOCUMENTS = [
    f"Passage {i}: vaccines expose the immune system to a harmless piece of pathogen number {i}, "
    f"so that memory cells recognise it later; unrelated filler about rivers, mountains and cities {i}."
    for i in range(32)
] + ["Paris is the capital of France.", "Bananas are yellow."]


@pytest.fixture(scope="module")
def multinode_result(tmp_path_factory) -> dict:
    request = json.dumps({"query": QUERY, "documents": DOCUMENTS})
    out = tmp_path_factory.mktemp("multinode") / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.multinode_cluster", str(out)],
        input=request,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(out.read_text())


def test_encoder_and_scorer_replicas_run_on_different_nodes(multinode_result):
    nodes, resources = multinode_result["nodes"], multinode_result["node_resources"]
    assert len(resources) == 2
    (encoder_node,), (scorer_node,) = nodes[ENCODER], nodes[SCORER]
    assert encoder_node != scorer_node
    assert "encoder_node" in resources[encoder_node]
    assert "scorer_node" in resources[scorer_node]


def test_scores_across_nodes_equal_single_node_scores(default_app, multinode_result):
    url, _ = default_app
    reference = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=300)
    assert reference.status_code == 200, reference.text
    expected = {r["index"]: r["relevance_score"] for r in reference.json()["results"]}
    got = {r["index"]: r["relevance_score"] for r in multinode_result["results"]}
    assert got.keys() == expected.keys() == set(range(len(DOCUMENTS)))
    for index, score in expected.items():
        assert got[index] == pytest.approx(score, rel=1e-5), index
