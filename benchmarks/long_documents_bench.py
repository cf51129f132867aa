"""Long documents: this service scoring them whole (`long_documents: chunk`) against vLLM's server, which truncates.

Every request has one query and `--documents` documents of about `--document-tokens` tokens (whole-word pseudo-text
from the model's vocabulary, about one token a word). One document of each request holds the answer: the query's
words as a sentence, at a random point past the first window. Both servers get the same requests over
`POST /v1/rerank` on the packaged MiniLM (late interaction, 256 tokens): this service (serve_config.yaml's app) with
`long_documents: chunk` (windows of 254 text tokens overlapping by 32, each scored and cached as a document), vLLM's
server with `max_tokens_per_doc: 254`, what it can do with a document longer than the model (its first 254 tokens).
Measured: requests/s and latency, cold (every document new) and warm (the same requests again: this service finds
every window in its caches; vLLM has none), and how often the document holding the answer ranks first.

    .venv/bin/python -m benchmarks.long_documents_bench                  # table + results/long_documents_bench.json
    .venv/bin/python -m benchmarks.long_documents_bench --requests 1 --documents 10   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.e2e_bench import ENCODER, MODEL_NAME, RESULTS, SCORER, OurServer, Server, TextSource, VLLMServer
from benchmarks.serving import serve_until_stdin_closes

WINDOW = 254  # the model's 256 tokens less [CLS] and [SEP]


REQUEST_TIMEOUT_S = 1800  # a cold request of 100 documents of 2,000 tokens takes minutes on two cores


class OurLongDocumentsServer(OurServer):
    """serve_config.yaml's application with a request timeout long enough for a cold request (`serve_long`)."""

    def __init__(self, port: int, log: Path):
        command = [sys.executable, "-m", "benchmarks.long_documents_bench", "--serve", str(port)]
        Server.__init__(self, command, port, log, stdin=subprocess.PIPE)


def serve_long(port: int) -> None:
    """Child process: serve_config.yaml's app (one replica each), with the long request timeout, until stdin closes."""
    from tests.e2e.serve_configs import app_from_serve_config

    fixed = {"autoscaling_config": None, "num_replicas": 1}
    app = app_from_serve_config("reranker", "/", {ENCODER: fixed, SCORER: fixed})
    app["args"].setdefault("limits", {})["request_timeout_s"] = REQUEST_TIMEOUT_S
    serve_until_stdin_closes(port, app)


def build_requests(args: argparse.Namespace) -> tuple[list[dict], list[int]]:
    """The requests and, for each, the index of the document holding the answer."""
    text = TextSource(args.seed)
    rng = random.Random(args.seed + 1)
    requests, answers = [], []
    for _ in range(args.requests):
        query = text.sentence(args.query_words)
        documents = [text.sentence(args.document_tokens) for _ in range(args.documents)]
        answer = rng.randrange(args.documents)
        words = documents[answer].split()
        at = rng.randrange(WINDOW + 16, len(words) - args.query_words)  # past the first window: truncation loses it
        documents[answer] = " ".join(words[:at] + query.split()[1:] + words[at:])
        requests.append({"model": MODEL_NAME, "query": query, "documents": documents})
        answers.append(answer)
    return requests, answers


async def drive(url: str, requests: list[dict], answers: list[int], concurrency: int) -> dict:
    """POST every request with `concurrency` in flight: latencies, errors and how often the answer ranked first."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    latencies, errors, first = [], 0, 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, first
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/rerank", json=requests[i])
                results = response.json().get("results", []) if response.status_code == 200 else []
            except httpx.HTTPError:
                results = []
            latencies.append(time.perf_counter() - started)
            errors += len(results) != len(requests[i]["documents"])
            first += bool(results) and results[0]["index"] == answers[i]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "requests": len(requests),
        "errors": errors,
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(requests) / seconds, 3),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "answer_ranked_first": round(first / len(requests), 3),
        "load_1m": round(os.getloadavg()[0], 1),
    }


def run(server: Server, requests: list[dict], answers: list[int], options: dict, args, workloads) -> list[dict]:
    server.wait_ready(timeout=1800)
    # untimed: a request of other documents, so that first-call costs (the tokenizer, kernels) are not measured
    warm_up, warm_answers = build_requests(argparse.Namespace(**{**vars(args), "seed": args.seed + 1000,
                                                                 "requests": 1, "documents": 4}))
    asyncio.run(drive(server.url, [{**r, **options} for r in warm_up], warm_answers, 1))
    rows = []
    for workload in workloads:
        result = asyncio.run(drive(server.url, [{**r, **options} for r in requests], answers, args.concurrency))
        rows.append({"server": server.name, "workload": workload, **options, **result})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--documents", type=int, default=100, help="documents per request")
    parser.add_argument("--document-tokens", type=int, default=2000, help="words (about tokens) per document")
    parser.add_argument("--query-words", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "long_documents_bench.json")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_long(args.serve)

    from tests.conftest import _free_port

    RESULTS.mkdir(parents=True, exist_ok=True)
    requests, answers = build_requests(args)
    ours = OurLongDocumentsServer(_free_port(), RESULTS / "long-documents-ours.log")
    try:
        rows = run(ours, requests, answers, {"long_documents": "chunk"}, args, ["cold", "warm"])
    finally:
        ours.stop()
    if not args.skip_vllm:
        vllm = VLLMServer(_free_port(), RESULTS / "long-documents-vllm.log")
        try:
            rows += run(vllm, requests, answers, {"max_tokens_per_doc": WINDOW}, args, ["cold", "again"])
        finally:
            vllm.stop()
    print(f"{'server':<14}{'workload':<10}{'options':<28}{'req/s':>8}{'p50 ms':>10}{'answer 1st':>12}{'errors':>8}")
    for r in rows:
        options = "long_documents=chunk" if "long_documents" in r else f"max_tokens_per_doc={WINDOW}"
        print(f"{r['server']:<14}{r['workload']:<10}{options:<28}{r['requests_per_s']:>8}{r['p50_ms']:>10}"
              f"{r['answer_ranked_first']:>12}{r['errors']:>8}")
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    args.output.write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
