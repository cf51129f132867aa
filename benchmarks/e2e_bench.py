"""End-to-end rerank benchmark: this service against vLLM's own OpenAI server, same model, client and workload.

Both servers are started here, one after the other, on the embedded MiniLM served as a late-interaction
model, and driven over HTTP (`POST /v1/rerank {model, query, documents}`) by one async client at a fixed
concurrency. Workloads:
  cold  every query and document unique;
  warm  80% of queries and 50% of documents seen before (sent in an untimed history phase first);
  repeat (this service only) the cold requests again: everything cached, what the service costs without encoding.
Then the warm workload again against this service with 4 scorer replicas, for the cache hit rates with 1 and 4.

    .venv/bin/python -m benchmarks.e2e_bench                 # prints a table, writes e2e.json and e2e.png
    .venv/bin/python -m benchmarks.e2e_bench --requests 16 --skip-replicas   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.serving import StopsWhenStdinCloses, serve_until_stdin_closes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL_NAME = "minilm-colbert"
SCORER = "Scorer"
ENCODER = "Encoder-minilm-colbert"


# Workload

@dataclass
class Workload:
    name: str
    requests: list[dict]
    history: list[dict] = field(default_factory=list)  # sent first, untimed: what "seen before" refers to
    seen_queries: float = 0.0  # share of measured queries / documents that the history contains
    seen_documents: float = 0.0


class TextSource:
    """Unique pseudo-sentences from whole-word tokens of the model's vocabulary (about one token a word)."""

    def __init__(self, seed: int):
        from scoring.config.schema import EMBEDDED_MODEL, resolve_model_path

        vocab = (Path(resolve_model_path(EMBEDDED_MODEL)) / "vocab.txt").read_text().split()
        self._words = [w for w in vocab if w.isalpha() and w.isascii() and len(w) >= 3]
        self._rng = random.Random(seed)
        self._count = 0

    def sentence(self, words: int) -> str:
        self._count += 1  # a serial number keeps every text distinct
        return f"{self._count} " + " ".join(self._rng.choices(self._words, k=words))


def build_workloads(args: argparse.Namespace) -> tuple[Workload, Workload]:
    text = TextSource(args.seed)
    rng = random.Random(args.seed + 1)

    def fresh_request() -> dict:
        return {
            "model": MODEL_NAME,
            "query": text.sentence(args.query_words),
            "documents": [text.sentence(args.document_words) for _ in range(args.documents)],
        }

    cold = Workload("cold", [fresh_request() for _ in range(args.requests)])

    history = [fresh_request() for _ in range(args.history)]
    seen_queries = [r["query"] for r in history]
    seen_documents = [d for r in history for d in r["documents"]]
    warm_requests, query_hits, document_hits = [], 0, 0
    for _ in range(args.requests):
        request = fresh_request()
        if rng.random() < args.warm_query_share:
            request["query"] = rng.choice(seen_queries)
            query_hits += 1
        for i in range(len(request["documents"])):
            if rng.random() < args.warm_document_share:
                request["documents"][i] = rng.choice(seen_documents)
                document_hits += 1
        warm_requests.append(request)
    warm = Workload(
        "warm",
        warm_requests,
        history,
        seen_queries=query_hits / args.requests,
        seen_documents=document_hits / (args.requests * args.documents),
    )
    return cold, warm


# Client

@dataclass
class RunResult:
    server: str
    workload: str
    requests: int
    documents: int
    errors: int
    seconds: float
    requests_per_s: float
    documents_per_s: float
    p50_ms: float
    p99_ms: float
    load_1m: float  # the machine's 1-minute load average at the end: other work on the same cores skews a run
    cache: dict | None = None


JSON = {"content-type": "application/json"}


async def drive(
    url: str,
    requests: list[dict],
    concurrency: int,
    route: str = "/v1/rerank",
    answers: tuple[str, str] = ("documents", "results"),
) -> tuple[list[float], int, float]:
    """POST `requests` to `route` with `concurrency` in flight; returns (latencies in s, errors, wall seconds).
    A request counts as an error unless it gets a 200 with one answer per input (`answers`: the request's list
    and the response's list that must have the same length)."""
    inputs, outputs = answers
    # bodies are encoded before the clock starts: the client's JSON encoding is no server's cost, and on these
    # 2 cores it would take CPU from the server measured (15 ms for a 3.3 MB request of 16 page images)
    queue: asyncio.Queue[tuple[dict, bytes]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait((request, json.dumps(request).encode()))
    latencies: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            request, body = queue.get_nowait()
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}{route}", content=body, headers=JSON)
                ok = response.status_code == 200 and len(response.json()[outputs]) == len(request[inputs])
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def measure(server: str, url: str, workload: Workload, concurrency: int) -> RunResult:
    if workload.history:
        asyncio.run(drive(url, workload.history, concurrency))
    latencies, errors, seconds = asyncio.run(drive(url, workload.requests, concurrency))
    documents = sum(len(r["documents"]) for r in workload.requests)
    return RunResult(
        server=server,
        workload=workload.name,
        requests=len(workload.requests),
        documents=documents,
        errors=errors,
        seconds=round(seconds, 2),
        requests_per_s=round(len(workload.requests) / seconds, 2),
        documents_per_s=round(documents / seconds, 1),
        p50_ms=round(float(np.percentile(latencies, 50)) * 1000, 1),
        p99_ms=round(float(np.percentile(latencies, 99)) * 1000, 1),
        load_1m=round(os.getloadavg()[0], 1),
    )


def warm_up(url: str, text_seed: int, concurrency: int) -> list[list[float]]:
    """Untimed requests of texts no workload uses (first calls load kernels); returns the relevance scores of
    a few of them in document order, to check that both servers compute the same scores."""
    text = TextSource(text_seed)
    requests = [
        {"model": MODEL_NAME, "query": text.sentence(8), "documents": [text.sentence(16) for _ in range(10)]}
        for _ in range(concurrency)
    ]
    asyncio.run(drive(url, requests, concurrency))
    scores = []
    for request in requests[:4]:
        results = httpx.post(f"{url}/v1/rerank", json=request, timeout=300).json()["results"]
        scores.append([s for _, s in sorted((r["index"], r["relevance_score"]) for r in results)])
    return scores


# Servers

class Server:
    """A server in a subprocess (its own process group), stopped with SIGINT then SIGKILL."""

    name = ""

    def __init__(self, command: list[str], port: int, log: Path, stdin=None, env: dict[str, str] | None = None):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self._log = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE if stdin else self._log,
            stderr=self._log, text=True, start_new_session=True, env={**os.environ, **(env or {})},
        )

    # the request that must succeed before measuring: every deployment and the engine answer
    probe: tuple[str, dict] = ("/v1/rerank", {"model": MODEL_NAME, "query": "ready?", "documents": ["yes"]})

    def wait_ready(self, timeout: float = 900) -> None:
        """Ready when the `probe` request succeeds."""
        route, body = self.probe
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self._log.name}")
            try:
                if httpx.post(f"{self.url}{route}", json=body, timeout=30).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"{self.name} not ready in {timeout}s; see {self._log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


# vLLM's CPU settings that come closest to what our encoder does: its worker's OpenMP threads on both cores
# (by default one core is left to the engine-core process, which polls the worker), sleeping when idle.
VLLM_TUNED_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_WAIT_POLICY": "PASSIVE"}


class VLLMServer(Server):
    name = "vllm-server"

    def __init__(self, port: int, log: Path, env: dict[str, str] | None = None, name: str = "vllm-server"):
        """The engine settings of serve_config.yaml's model (on CPU, `--gpu-memory-utilization` is the share
        of host memory vLLM reserves); `env`: vLLM's CPU settings (none: its defaults, what the targets use)."""
        self.name = name
        from scoring.config.schema import parse_app_config
        from tests.conftest import default_app_args

        model = parse_app_config(default_app_args()).models[0]
        super().__init__(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", model.resolved_model(),
                "--served-model-name", MODEL_NAME,
                "--runner", "pooling",
                "--pooler-config", json.dumps({"task": "token_embed"}),
                "--max-model-len", str(model.max_model_len),
                "--dtype", model.dtype,
                "--gpu-memory-utilization", str(model.gpu_memory_utilization),
                "--max-num-seqs", str(model.max_num_seqs),
                "--host", "127.0.0.1", "--port", str(port),
            ],
            port,
            log,
            env=env,
        )


class OurServer(StopsWhenStdinCloses, Server):
    """serve_config.yaml's application (deployed from config, as `serve run` does) in a child process; the
    scorer replica count is fixed so runs compare. Asked for cache counters over stdin/stdout."""

    name = "ours"

    def __init__(self, port: int, log: Path, scorer_replicas: int):
        self.scorer_replicas = scorer_replicas
        super().__init__(
            [sys.executable, "-m", "benchmarks.e2e_bench", "--serve", str(port), "--scorer-replicas", str(scorer_replicas)],
            port,
            log,
            stdin=subprocess.PIPE,
        )

    def cache_stats(self) -> dict:
        """Cache counters summed over every scorer replica, and the encoder's."""
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


def serve_ours(port: int, scorer_replicas: int) -> None:
    """Child process: the app, one encoder and `scorer_replicas` scorers; answers `stats` lines until stdin closes."""
    from tests.e2e.serve_configs import app_from_serve_config

    fixed = {"autoscaling_config": None}
    app = app_from_serve_config(
        "reranker", "/", {ENCODER: {**fixed, "num_replicas": 1}, SCORER: {**fixed, "num_replicas": scorer_replicas}}
    )

    def answer(line: str) -> None:
        if line.strip() == "stats":
            print(json.dumps(cache_stats("reranker")), flush=True)

    serve_until_stdin_closes(port, app, timeout_s=900, on_line=answer)


def cache_stats(app: str) -> dict:
    """`{cache name: {hits, misses, ...}}` summed over the scorer replicas of `app`, plus its (one) encoder's
    document cache."""
    import ray
    from ray import serve

    totals: dict[str, dict[str, float]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if not actor["name"].startswith(f"SERVE_REPLICA::{app}#{SCORER}#"):
            continue
        replica = ray.get_actor(actor["name"], namespace=actor["namespace"])
        # The Scorer's `record_routing_stats` (which Serve polls for request routers) is its `stats()`.
        stats = ray.get(replica.record_routing_stats.remote())
        for cache, counters in stats.items():
            if isinstance(counters, dict):
                bucket = totals.setdefault(cache, {})
                for counter, value in counters.items():
                    bucket[counter] = bucket.get(counter, 0) + value
    totals.update(serve.get_deployment_handle(ENCODER, app).stats.remote().result())
    return totals


def hit_rates(before: dict, after: dict) -> dict:
    """Hit rate of each cache between two `cache_stats` snapshots."""
    rates = {}
    for cache, counters in after.items():
        hits = counters.get("hits", 0) - before.get(cache, {}).get("hits", 0)
        misses = counters.get("misses", 0) - before.get(cache, {}).get("misses", 0)
        rates[cache] = {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None}
    if "document_cache" in rates and "encoder_document_cache" in rates:  # documents that skipped the model
        looked_up = rates["document_cache"]["hits"] + rates["document_cache"]["misses"]
        kept = rates["document_cache"]["hits"] + rates["encoder_document_cache"]["hits"]
        rates["document (scorer or encoder)"] = {"hits": kept, "misses": looked_up - kept,
                                                 "hit_rate": round(kept / looked_up, 3) if looked_up else None}
    return rates


# Report

def print_table(runs: list[RunResult], replicas: list[dict]) -> None:
    print(f"\n{'server':<12} {'workload':<8} {'req/s':>7} {'docs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'load':>5}")
    for r in runs:
        print(
            f"{r.server:<12} {r.workload:<8} {r.requests_per_s:>7} {r.documents_per_s:>8} {r.p50_ms:>8} {r.p99_ms:>8}"
            f" {r.errors:>6} {r.load_1m:>5}"
        )
    by = {(r.server, r.workload): r for r in runs}
    for peer in ("vllm-server", "vllm-tuned"):
        for workload in ("cold", "warm"):
            ours, theirs = by.get(("ours", workload)), by.get((peer, workload))
            if ours and theirs:
                print(f"{workload}: ours / {peer} = {ours.requests_per_s / theirs.requests_per_s:.2f}x requests/s")
    for row in replicas:
        rates = ", ".join(f"{cache} {v['hit_rate']}" for cache, v in row["cache"].items())
        print(f"warm, {row['scorer_replicas']} scorer replica(s): {row['requests_per_s']} req/s; hit rate: {rates}")


def plot(runs: list[RunResult], replicas: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    workloads = ["cold", "warm"]
    servers = sorted({r.server for r in runs}, key=lambda s: s != "ours")
    by = {(r.server, r.workload): r for r in runs}
    width = 0.8 / max(len(servers), 1)
    for ax, metric, label in [(axes[0], "requests_per_s", "requests/s"), (axes[1], "p50_ms", "p50 / p99 latency (ms)")]:
        for i, server in enumerate(servers):
            xs = [w + i * width for w in range(len(workloads))]
            values = [getattr(by[(server, w)], metric) if (server, w) in by else 0 for w in workloads]
            ax.bar(xs, values, width, label=server)
            if metric == "p50_ms":
                p99 = [by[(server, w)].p99_ms if (server, w) in by else 0 for w in workloads]
                ax.scatter(xs, p99, color="black", marker="_", s=600, label="p99" if i == 0 else None)
        ax.set_xticks([w + width * (len(servers) - 1) / 2 for w in range(len(workloads))], workloads)
        ax.set_ylabel(label)
        ax.legend()
    caches = sorted({c for row in replicas for c in row["cache"]})
    width = 0.8 / max(len(caches), 1)
    for i, cache in enumerate(caches):
        xs = [j + i * width for j in range(len(replicas))]
        axes[2].bar(xs, [row["cache"].get(cache, {}).get("hit_rate") or 0 for row in replicas], width, label=cache)
    axes[2].set_xticks(
        [j + width * (len(caches) - 1) / 2 for j in range(len(replicas))],
        [f"{row['scorer_replicas']} scorer replica(s)" for row in replicas],
    )
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("hit rate, warm workload")
    axes[2].legend()
    fig.suptitle("Rerank end to end on 2 CPU cores: this service vs vLLM's OpenAI server (MiniLM-L6, token_embed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=320, help="Measured requests per workload.")
    parser.add_argument("--history", type=int, default=64, help="Untimed requests before the warm workload.")
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight.")
    parser.add_argument("--documents", type=int, default=10, help="Documents per request.")
    parser.add_argument("--query-words", type=int, default=8)
    parser.add_argument("--document-words", type=int, default=16)
    parser.add_argument("--warm-query-share", type=float, default=0.8, help="Warm: share of queries seen before.")
    parser.add_argument("--warm-document-share", type=float, default=0.5, help="Warm: share of documents seen before.")
    parser.add_argument("--scorer-replicas", type=int, default=1, help="Scorer replicas of the main run.")
    parser.add_argument("--compare-scorer-replicas", type=int, default=4, help="Warm run again with this many.")
    parser.add_argument("--skip-vllm", action="store_true", help="Only this service.")
    parser.add_argument("--skip-replicas", action="store_true", help="No second scorer-replica run.")
    parser.add_argument(
        "--vllm-tuned", action="store_true", help=f"Also vLLM's server with {VLLM_TUNED_ENV} (not what targets use)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "e2e.json")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_ours(args.serve, args.scorer_replicas)
        return

    from tests.conftest import _free_port

    args.out.parent.mkdir(parents=True, exist_ok=True)
    logs = args.out.with_suffix("")
    cold, warm = build_workloads(args)
    runs: list[RunResult] = []
    replicas: list[dict] = []
    probes: dict[str, list[list[float]]] = {}

    def run_ours(scorer_replicas: int, workloads: list[Workload]) -> None:
        server = OurServer(_free_port(), Path(f"{logs}-ours-{scorer_replicas}.log"), scorer_replicas)
        try:
            started = time.perf_counter()
            server.wait_ready()
            print(f"ours ({scorer_replicas} scorer replicas) ready in {time.perf_counter() - started:.0f}s", flush=True)
            probes.setdefault("ours", warm_up(server.url, args.seed + 100, args.concurrency))
            for workload in workloads:
                if workload.history:  # the history primes the caches: count only the measured requests
                    asyncio.run(drive(server.url, workload.history, args.concurrency))
                before = server.cache_stats()
                result = measure("ours", server.url, Workload(workload.name, workload.requests), args.concurrency)
                result.cache = hit_rates(before, server.cache_stats())
                print(result, flush=True)
                if scorer_replicas == args.scorer_replicas:
                    runs.append(result)
                if workload.name == "warm":
                    replicas.append({"scorer_replicas": scorer_replicas, "requests_per_s": result.requests_per_s, "cache": result.cache})
        finally:
            server.stop()

    def run_vllm(name: str, env: dict[str, str] | None) -> None:
        server = VLLMServer(_free_port(), Path(f"{logs}-{name}.log"), env, name)
        try:
            started = time.perf_counter()
            server.wait_ready()
            print(f"{name} ready in {time.perf_counter() - started:.0f}s", flush=True)
            probes[name] = warm_up(server.url, args.seed + 100, args.concurrency)
            for workload in (cold, warm):
                result = measure(name, server.url, workload, args.concurrency)
                print(result, flush=True)
                runs.append(result)
        finally:
            server.stop()

    # `repeat`: the cold requests again, every query and document cached: the service's own cost without the encoder.
    run_ours(args.scorer_replicas, [cold, warm, Workload("repeat", cold.requests)])
    if not args.skip_vllm:
        run_vllm("vllm-server", None)
    if args.vllm_tuned:
        run_vllm("vllm-tuned", VLLM_TUNED_ENV)
    if not args.skip_replicas:
        run_ours(args.compare_scorer_replicas, [warm])

    print_table(runs, replicas)
    agreement = None
    peers = [name for name in probes if name != "ours"]
    if "ours" in probes and peers:
        ours = np.array(probes["ours"])
        agreement = max(float(np.max(np.abs(ours - probes[p]) / np.abs(probes[p]))) for p in peers)
        print(f"same scores: largest relative difference ours vs {', '.join(peers)} {agreement:.1e}")
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "serve"},
        "workloads": {w.name: {"seen_queries": w.seen_queries, "seen_documents": w.seen_documents} for w in (cold, warm)},
        "score_agreement_max_rel_diff": agreement,
        "runs": [asdict(r) for r in runs],
        "scorer_replicas": replicas,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, replicas, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
