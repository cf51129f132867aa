"""Generative scoring benchmark: this service against vLLM's own OpenAI server, same model, client and requests.

Both servers are started here, one after the other, on a CausalLM built here (a Qwen3 with random weights and
the MiniLM tokenizer: no CausalLM weights can be downloaded on this machine), and driven over HTTP with
`POST /generative_scoring {model, query, items, label_token_ids}` by one async client at a fixed concurrency.
Workloads (every query and item unique, so no request finds another's prefix cached):
  short        short query, short items: throughput at concurrency 1, 8 and 32;
  long-query   a long query shared by the items of its request (what prefix caching is for).

    .venv/bin/python -m benchmarks.generative_bench                  # table, results/generative_bench.json
    .venv/bin/python -m benchmarks.generative_bench --requests 8 --concurrency 1 8   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.e2e_bench import Server, TextSource
from benchmarks.serving import StopsWhenStdinCloses, serve_until_stdin_closes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL_NAME = "bench-qwen3"
LABELS = [2748, 2053]  # "yes", "no" in the MiniLM vocabulary


@dataclass
class RunResult:
    server: str
    workload: str
    concurrency: int
    requests: int
    items: int
    errors: int
    seconds: float
    items_per_s: float
    p50_ms: float
    p99_ms: float


def build_requests(text: TextSource, count: int, query_words: int, items: int, item_words: int) -> list[dict]:
    return [
        {
            "model": MODEL_NAME,
            "query": text.sentence(query_words),
            "items": [" " + text.sentence(item_words) for _ in range(items)],
            "label_token_ids": LABELS,
        }
        for _ in range(count)
    ]


async def drive(url: str, requests: list[dict], concurrency: int) -> tuple[list[float], int, float]:
    """Send `requests` with `concurrency` in flight; returns (latencies in s, errors, wall seconds)."""
    pending = list(reversed(requests))
    latencies: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while pending:
            request = pending.pop()
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/generative_scoring", json=request)
                ok = response.status_code == 200 and len(response.json()["data"]) == len(request["items"])
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def measure(server: str, url: str, workload: str, requests: list[dict], concurrency: int) -> RunResult:
    latencies, errors, seconds = asyncio.run(drive(url, requests, concurrency))
    items = sum(len(r["items"]) for r in requests)
    result = RunResult(
        server=server,
        workload=workload,
        concurrency=concurrency,
        requests=len(requests),
        items=items,
        errors=errors,
        seconds=round(seconds, 2),
        items_per_s=round(items / seconds, 1),
        p50_ms=round(float(np.percentile(latencies, 50)) * 1000, 1),
        p99_ms=round(float(np.percentile(latencies, 99)) * 1000, 1),
    )
    print(json.dumps(asdict(result)), flush=True)
    return result


class GenerativeServer(Server):
    probe = ("/generative_scoring", {"model": MODEL_NAME, "query": "ready?", "items": ["yes"], "label_token_ids": LABELS})


class VLLMServer(GenerativeServer):
    name = "vllm-server"

    extra_args: list[str] = []

    def __init__(self, port: int, log: Path, model: Path, max_model_len: int):
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", MODEL_NAME,
            "--dtype", "float32", "--max-model-len", str(max_model_len),
            "--gpu-memory-utilization", "0.2", "--enable-prefix-caching",
            "--host", "127.0.0.1", "--port", str(port), *self.extra_args,
        ]  # fmt: skip
        super().__init__(command, port, log)


class VLLMBlock32Server(VLLMServer):
    """vLLM's server with the KV block size our generative replica uses (its CPU default is 128): not what the
    targets name, shown so the gain from prefix-cache granularity can be told from the rest."""

    name = "vllm-block32"
    extra_args = ["--block-size", "32"]


class OurServer(StopsWhenStdinCloses, GenerativeServer):
    """This service with one generative model, in a child process that stops when its stdin closes."""

    name = "ours"

    def __init__(self, port: int, log: Path, model: Path, max_model_len: int):
        command = [sys.executable, "-m", "benchmarks.generative_bench", "--serve", str(port), "--model", str(model),
                   "--max-model-len", str(max_model_len)]  # fmt: skip
        super().__init__(command, port, log, stdin=subprocess.PIPE)


SERVERS = {server.name: server for server in (VLLMServer, VLLMBlock32Server, OurServer)}


def app_args(model: Path, max_model_len: int) -> dict:
    generative = {"name": MODEL_NAME, "kind": "generative", "model": str(model), "max_model_len": max_model_len}
    return {"models": [generative]}


def serve_ours(port: int, model: Path, max_model_len: int) -> None:
    app = {"name": "generative", "route_prefix": "/", "import_path": "deployments.app:build_app",
           "args": app_args(model, max_model_len)}  # fmt: skip
    serve_until_stdin_closes(port, app, num_cpus=4)


def print_table(results: list[RunResult]) -> None:
    print(f"\n{'workload':<11} {'c':>3} {'server':<12} {'items/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}")
    for r in results:
        print(f"{r.workload:<11} {r.concurrency:>3} {r.server:<12} {r.items_per_s:>9} {r.p50_ms:>9} {r.p99_ms:>9} "
              f"{r.errors:>6}")  # fmt: skip
    by_key = {(r.workload, r.concurrency, r.server): r for r in results}
    for (workload, concurrency, server), r in by_key.items():
        for peer_name in ("vllm-server", "vllm-block32"):
            peer = by_key.get((workload, concurrency, peer_name))
            if server == "ours" and peer:
                print(f"{workload} c={concurrency}: ours / {peer_name} items/s = {r.items_per_s / peer.items_per_s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help="A CausalLM folder; built here (random Qwen3) when omitted.")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=512, help="Of the model built here.")
    parser.add_argument("--layers", type=int, default=4, help="Of the model built here.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=32, help="Short-workload requests per concurrency level.")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--long-query-words", type=int, default=1000)
    parser.add_argument("--long-requests", type=int, default=8)
    parser.add_argument("--long-concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=["vllm-server", "vllm-block32", "ours"])
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "generative_bench.json")
    args = parser.parse_args()
    if args.serve:
        serve_ours(args.serve, args.model, args.max_model_len)
        return

    from tests.tiny_qwen3 import build_tiny_qwen3

    workdir = Path(tempfile.mkdtemp(prefix="generative-bench-"))
    model = args.model or build_tiny_qwen3(
        workdir / "model", hidden_size=args.hidden_size, layers=args.layers,
        intermediate_size=args.hidden_size * 3, max_positions=args.max_model_len,
    )  # fmt: skip
    text = TextSource(args.seed)
    warmup = build_requests(text, 4, 8, 4, 8)
    short = {c: build_requests(text, args.requests, 12, args.items, 24) for c in args.concurrency}
    long = {
        c: build_requests(text, args.long_requests, args.long_query_words, args.items, 16)
        for c in args.long_concurrency
    }

    results: list[RunResult] = []
    for name in args.servers:
        server_class = SERVERS[name]
        started = time.perf_counter()
        server = server_class(args.port, workdir / f"{name}.log", model, args.max_model_len)
        try:
            server.wait_ready()
            print(f"{name} ready in {time.perf_counter() - started:.0f}s", flush=True)
            asyncio.run(drive(server.url, warmup, 4))
            for concurrency, requests in short.items():
                results.append(measure(name, server.url, "short", requests, concurrency))
            for concurrency, requests in long.items():
                results.append(measure(name, server.url, "long-query", requests, concurrency))
        finally:
            server.stop()

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "serve"}
    args.out.write_text(json.dumps({"args": setup, "results": [asdict(r) for r in results]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
