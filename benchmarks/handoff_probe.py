"""What the encoder-to-scorer handoff dtype costs the serving call (`embedding_dtype`), on this machine's CPU.

An encoder-like Ray actor packs a request's document token embeddings as the encoder does (`PackedEmbeddings.pack`
of float32 rows, as vLLM returns them, into `dtype`) in calls of ~8,192 tokens; a scorer-like actor receives them
through Ray's object store and writes them into its `DocumentStore` (float16 storage, the default) as the scorer
deployment does, then releases them. The driver times one request end to end (`ray.get` of the scorer's write of
the encoder's outputs), float32 against float16, interleaved.

    .venv/bin/python -m benchmarks.handoff_probe [--docs 1000] [--dim 128] [--rounds 3]

Prints a table and writes benchmarks/results/handoff_probe.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import ray

RESULTS = Path(__file__).resolve().parent / "results"


@ray.remote(num_cpus=0)
class EncoderLike:
    def __init__(self, docs: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(85, 513, docs)
        self.rows = [rng.standard_normal((int(n), dim), dtype=np.float32) for n in lengths]
        self.dim = dim

    def calls(self, chunk_tokens: int = 8192) -> list[tuple[int, int]]:
        """(first, end) documents of each encoder call of ~chunk_tokens."""
        out, first, tokens = [], 0, 0
        for i, r in enumerate(self.rows):
            tokens += r.shape[0]
            if tokens >= chunk_tokens:
                out.append((first, i + 1))
                first, tokens = i + 1, 0
        if first < len(self.rows):
            out.append((first, len(self.rows)))
        return out

    def encode(self, first: int, end: int, dtype: str):
        from scoring.store.embeddings import PackedEmbeddings
        return PackedEmbeddings.pack(self.rows[first:end], self.dim, dtype)


@ray.remote(num_cpus=0)
class ScorerLike:
    def __init__(self, dim: int):
        from scoring.store.pages import DocumentStore
        self.store = DocumentStore(dim, 2 << 30, "cpu", "float16")
        self.count = 0

    def write(self, *packed) -> int:
        self.count += 1
        keys = [f"r{self.count}-{i}" for i in range(sum(p.count for p in packed))]
        lengths = np.concatenate([p.lengths for p in packed])
        slots = self.store.insert(keys, [p.data for p in packed], lengths)
        self.store.release(slots)
        return int(sum(p.data.nbytes for p in packed))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=8, help="untimed requests of each dtype first")
    ap.add_argument("--out", default=str(RESULTS / "handoff_probe.json"))
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    encoder, scorer = EncoderLike.remote(args.docs, args.dim), ScorerLike.remote(args.dim)
    calls = ray.get(encoder.calls.remote())

    def request(dtype: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        nbytes = ray.get(scorer.write.remote(*[encoder.encode.remote(a, b, dtype) for a, b in calls]))
        return (time.perf_counter() - t0) * 1e3, nbytes

    for _ in range(args.warmup):  # warm-up: the actors' imports, the object store's and the arena's first pages
        for dtype in ("float32", "float16"):
            request(dtype)
    rows: dict[str, list[float]] = {"float32": [], "float16": []}
    nbytes = {}
    for _ in range(args.rounds):
        for dtype in rows:
            times = []
            for _ in range(args.reps):
                ms, nbytes[dtype] = request(dtype)
                times.append(ms)
            rows[dtype].append(round(statistics.median(times), 2))
    ray.shutdown()
    result = {"docs": args.docs, "dim": args.dim, "encoder calls": len(calls), "rounds": args.rounds,
              "reps": args.reps, "MB handed over": {k: round(v / 1e6, 1) for k, v in nbytes.items()},
              "request ms (median of reps, each round)": rows}
    print(f"{args.docs} documents of 85-512 tokens at d {args.dim}, {len(calls)} encoder calls; ms a request, "
          f"median of {args.reps}, each round")
    print("| handoff dtype | MB | rounds |")
    print("|---|---|---|")
    for dtype, ms in rows.items():
        print(f"| {dtype} | {result['MB handed over'][dtype]} | {' / '.join(map(str, ms))} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
