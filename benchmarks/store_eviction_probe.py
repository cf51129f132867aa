"""What a document store's eviction costs as the store grows (CPU, no GPU needed): a store kept full at 10,000,
50,000 and 200,000 entries of 85-512 tokens takes 1,000-document writes, each released after it, as the scorer
deployment's cold calls do; the eviction inside `insert` and `release`, timed per call.

    python benchmarks/store_eviction_probe.py --out OUT                      # this tree
    python benchmarks/store_eviction_probe.py --root OLD --tag old --out OUT  # another tree (its scoring/)

d is 16 (the arena stays small; eviction's work does not depend on d). Prints a table and writes
OUT/store_eviction_probe[_TAG].json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

EVICTION = "eviction ms a write (insert's and release's)"

def probe(DocumentStore, entries: int, writes: int = 30) -> dict:
    dim, rng = 16, np.random.default_rng(0)
    lens = rng.integers(85, 512, 1000)
    docs = rng.standard_normal((int(lens.sum()), dim)).astype(np.float16)
    pages = int(np.ceil(lens / 16).sum())
    page_bytes = 16 * dim * 2
    store = DocumentStore(dim, entries // 1000 * pages * page_bytes, "cpu", headroom_bytes=4 * pages * page_bytes)
    spent: dict = {"_evict_until": [], "release": []}
    for name in spent:
        fn = getattr(store, name)

        def timed(*a, fn=fn, name=name, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name].append(time.perf_counter() - t0)
        setattr(store, name, timed)
    for j in range(entries // 1000):  # fill it
        store.release(store.insert([f"{j}-{i}" for i in range(1000)], [docs], lens))
    for v in spent.values():
        v.clear()
    for j in range(writes):
        keys = [f"w{j}-{i}" for i in range(1000)]
        store.release(store.insert(keys, [docs], lens))
    return {"entries": len(store._index), "evictions": store.stats().evictions,
            EVICTION: round(1e3 * sum(spent["_evict_until"]) / writes, 3),
            "release ms (median)": round(1e3 * statistics.median(spent["release"]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tag", default="")
    ap.add_argument("--entries", default="10000,50000,200000")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    from scoring.store.pages import DocumentStore
    rows = {int(n): probe(DocumentStore, int(n)) for n in args.entries.split(",")}
    print(f"| entries kept | eviction ms a 1,000-document write{' (' + args.tag + ')' if args.tag else ''} | "
          "release ms |")
    print("|---|---|---|")
    for n, r in rows.items():
        print(f"| {n:,} | {r[EVICTION]} | {r['release ms (median)']} |")
    name = f"store_eviction_probe{'_' + args.tag if args.tag else ''}.json"
    with open(os.path.join(args.out, name), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
