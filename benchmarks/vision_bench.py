"""Image reranking: this service against vLLM's own server on the same ColModernVBert checkpoint, same client.

Each request is one text query and `--pages` page images (PNG data URLs) on `POST /v1/rerank`. Workloads:
  cold    every page new
  warm    half of each request's pages sent before (in untimed requests with other queries)
  cached  every page sent before
For both servers, the largest |score difference| against transformers' reference (`ColModernVBertProcessor` +
`ColModernVBertForRetrieval` + `score_retrieval` of each page, float32) over the first requests.

No ColModernVBert weights can be downloaded here: the checkpoint is tests/tiny_colmodernvbert.py's (random, 32-pixel
tiles, 4 image tokens a tile; its image processor splits a page into up to 2 x 2 tiles and the global image, as the
released one splits a page into up to 4 x 4), so the numbers say what the serving path costs around a small model,
not what the 250M model's forward pass costs. This service encodes each page as the library does (5 tiles, 20 image
tokens); vLLM's server, which never splits, encodes one 32-pixel image (4 image tokens). This service loads it by
path alone; vLLM's server gets the layout it reads (the converted copy scoring/late_interaction/vision.py writes), with
its defaults otherwise.

    .venv/bin/python -m benchmarks.vision_bench                          # table + results/vision_bench.json
    .venv/bin/python -m benchmarks.vision_bench --requests 4 --pages 4   # smoke run
    .venv/bin/python -m benchmarks.vision_bench --servers ours ours-haproxy vllm-server   # + Serve's HAProxy ingress
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from benchmarks.e2e_bench import RESULTS, OurServer, Server, TextSource, Workload, measure
from benchmarks.serving import serve_until_stdin_closes

MODEL = "colmodernvbert-tiny"
MAX_MODEL_LEN = 128


def page_png(seed: int, size: int) -> bytes:
    """A random page image: noise under a few dark bars, as text lines would be."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size, 3)) * 64 + 191).astype("uint8")
    for row in rng.integers(0, size - 4, 6):
        pixels[row:row + 3, 8:size - 8] = 20
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def document(png: bytes) -> dict:
    return {"content": [{"type": "image_url", "image_url": {"url": data_url(png)}}]}


def build_workloads(args: argparse.Namespace) -> tuple[list[Workload], dict[int, bytes]]:
    """cold, warm and cached, each of its own queries; pages by id (a page id is its seed)."""
    text = TextSource(args.seed)
    pages: dict[int, bytes] = {}

    def page(i: int) -> dict:
        if i not in pages:
            pages[i] = page_png(i, args.page_size)
        return document(pages[i])

    next_page = iter(range(10**9))

    def request(ids: list[int]) -> dict:
        return {"model": MODEL, "query": text.sentence(8), "documents": [page(i) for i in ids],
                "return_documents": False}

    n, p = args.requests, args.pages
    cold = [request([next(next_page) for _ in range(p)]) for _ in range(n)]
    warm_ids = [[next(next_page) for _ in range(p)] for _ in range(n)]
    warm_history = [request(ids[: p // 2]) for ids in warm_ids]
    warm = [request(ids[: p // 2] + [next(next_page) for _ in range(p - p // 2)]) for ids in warm_ids]
    cached_ids = [[next(next_page) for _ in range(p)] for _ in range(n)]
    cached_history = [request(ids) for ids in cached_ids]
    cached = [request(ids) for ids in cached_ids]
    return [
        Workload("cold", cold),
        Workload("warm", warm, history=warm_history, seen_documents=0.5),
        Workload("cached", cached, history=cached_history, seen_documents=1.0),
    ], pages


class OurVisionServer(OurServer):
    """This service in a child process (`serve_vision`), stopped when its stdin closes."""

    name = "ours"

    def __init__(self, port: int, log: Path, checkpoint: Path, haproxy: bool = False):
        command = [sys.executable, "-m", "benchmarks.vision_bench", "--serve", str(port), "--checkpoint",
                   str(checkpoint)]
        if haproxy:  # Serve's HAProxy ingress (docs/deployment.md): requests straight to the ingress replica
            self.name = "ours-haproxy"
        env = {"RAY_SERVE_ENABLE_HA_PROXY": "1"} if haproxy else None
        Server.__init__(self, command, port, log, stdin=subprocess.PIPE, env=env)
        self.probe = ("/v1/rerank", {"model": MODEL, "query": "ready?", "documents": ["yes"]})


def serve_vision(port: int, checkpoint: Path) -> None:
    """Child process: serve_config.yaml's application as `serve run` deploys it (its runtime env: requests on the
    replicas' main event loop; access log off), with the checkpoint by path alone as its one model and one replica of
    each deployment, until stdin closes."""
    from tests.e2e.serve_configs import app_from_serve_config

    one = {"autoscaling_config": None, "num_replicas": 1}
    shipped = "Encoder-minilm-colbert"  # serve_config.yaml's encoder: its settings, for this model's encoder
    app = app_from_serve_config("vision", "/", {"Scorer": one, shipped: one})
    for deployment in app["deployments"]:
        if deployment["name"] == shipped:
            deployment["name"] = f"Encoder-{MODEL}"
    app["args"] = {"models": [{"name": MODEL, "kind": "late_interaction", "model": str(checkpoint),
                               "max_model_len": MAX_MODEL_LEN, "cpu_kv_cache_bytes": 67108864}],
                   "cache": {"document_dtype": "float32"}}
    serve_until_stdin_closes(port, app)


class VLLMVisionServer(Server):
    """vLLM's OpenAI server on the checkpoint in the layout it reads, with its defaults (`--runner pooling`)."""

    def __init__(self, port: int, log: Path, checkpoint: Path):
        from scoring.late_interaction.vision import vision_engine_layout

        self.name = "vllm-server"
        super().__init__(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(vision_engine_layout(checkpoint)), "--tokenizer", str(checkpoint),
                "--served-model-name", MODEL, "--runner", "pooling",
                "--pooler-config", json.dumps({"task": "token_embed"}),
                "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32", "--gpu-memory-utilization", "0.2",
                "--host", "127.0.0.1", "--port", str(port),
            ],
            port,
            log,
        )
        self.probe = ("/v1/rerank", {"model": MODEL, "query": "ready?", "documents": ["yes"]})


def scores_of(url: str, request: dict) -> list[float]:
    response = httpx.post(f"{url}/v1/rerank", json=request, timeout=300)
    response.raise_for_status()
    return [s for _, s in sorted((r["index"], r["relevance_score"]) for r in response.json()["results"])]


def reference_scores(checkpoint: Path, requests: list[dict], pages: dict[int, bytes]) -> list[list[float]]:
    """transformers' scores of each request: `score_retrieval` of the query against each page on its own."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, ColModernVBertForRetrieval

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    model = ColModernVBertForRetrieval.from_pretrained(str(checkpoint)).to(torch.float32).eval()
    by_url = {data_url(png): png for png in pages.values()}

    def embed(batch):
        with torch.no_grad():
            return model(**batch).embeddings  # one item a batch: no padding

    out = []
    for request in requests:
        query = embed(processor.process_queries([request["query"]]))
        row = []
        for doc in request["documents"]:
            image = Image.open(io.BytesIO(by_url[doc["content"][0]["image_url"]["url"]]))
            row.append(processor.score_retrieval(query, embed(processor.process_images([image])))[0, 0].item())
        out.append(row)
    return out


def print_table(rows: list[dict], differences: dict[str, float]) -> None:
    print(f"{'workload':<10}{'server':<14}{'req/s':>8}{'pages/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
          f"{'load':>6}")
    for r in rows:
        print(f"{r['workload']:<10}{r['server']:<14}{r['requests_per_s']:>8}{r['documents_per_s']:>10}"
              f"{r['p50_ms']:>10}{r['p99_ms']:>10}{r['errors']:>8}{r['load_1m']:>6}")
    for server, diff in differences.items():
        print(f"{server}: largest |score - transformers' score| {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="timed requests per workload")
    parser.add_argument("--pages", type=int, default=16, help="page images per request")
    parser.add_argument("--page-size", type=int, default=256, help="pixels on a page's side")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--compared", type=int, default=2, help="requests whose scores are compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--servers", nargs="+", choices=("ours", "ours-haproxy", "vllm-server"),
                        default=["ours", "vllm-server"],
                        help="ours-haproxy: this service behind Serve's HAProxy ingress (docs/deployment.md)")
    parser.add_argument("--workloads", nargs="+", choices=("cold", "warm", "cached"),
                        default=["cold", "warm", "cached"])
    parser.add_argument("--port", type=int, default=8127)
    parser.add_argument("--output", type=Path, default=RESULTS / "vision_bench.json")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_vision(args.serve, args.checkpoint)
        return

    from tests.tiny_colmodernvbert import build_tiny_colmodernvbert

    workdir = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    checkpoint = build_tiny_colmodernvbert(workdir / "colmodernvbert-tiny")
    workloads, pages = build_workloads(args)
    compared = workloads[0].requests[: args.compared]
    reference = np.array(reference_scores(checkpoint, compared, pages))
    rows, differences = [], {}
    workloads = [w for w in workloads if w.name in args.workloads]
    servers = {"ours": lambda: OurVisionServer(args.port, workdir / "ours.log", checkpoint),
               "ours-haproxy": lambda: OurVisionServer(args.port, workdir / "ours-haproxy.log", checkpoint, True),
               "vllm-server": lambda: VLLMVisionServer(args.port, workdir / "vllm.log", checkpoint)}
    for name in args.servers:
        server = servers[name]()
        try:
            server.wait_ready()
            got = np.array([scores_of(server.url, request) for request in compared])
            differences[server.name] = float(np.abs(got - reference).max())
            for workload in workloads:
                rows.append(asdict(measure(server.name, server.url, workload, args.concurrency)))
        finally:
            server.stop()
    from scoring.late_interaction.vision import vision_engine_layout

    shutil.rmtree(vision_engine_layout(checkpoint), ignore_errors=True)  # the converted copy in the checkpoint cache
    shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows, differences)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k not in ("serve", "checkpoint", "output")},
        "checkpoint": "tests/tiny_colmodernvbert.py (random; 32-pixel tiles of 4 image tokens; a 256-pixel page is "
                      "2 x 2 tiles and the global image, 43 tokens, as its processor splits it)",
        "runs": rows,
        "max_abs_difference_vs_transformers": differences,
    }, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
