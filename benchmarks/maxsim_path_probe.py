"""Probe of the scorer's path on a GPU: where a warm and a cold `MaxSimScorer.score` spend their time (the CUDA
calls around a launch, the staging of a cold insert against its floor). The block shapes of compressed tiles:
`maxsim_compressed_probe.py`.

    python benchmarks/maxsim_path_probe.py --root . --out OUT            # this tree
    python benchmarks/maxsim_path_probe.py --root OLD --out OUT --tag old  # another tree (its scoring/, kernels/)

Prints one JSON line a measurement and writes OUT/maxsim_path_probe[_TAG].json. Wall µs are medians of many
calls, each synchronised.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

import numpy as np
import torch

import timing  # benchmarks/timing.py (the script's own folder)
from timing import encoder_calls, request

RESULTS: dict = {}


def record(name: str, value) -> None:
    RESULTS[name] = value
    print(json.dumps({name: value}), flush=True)


def wall_us(fn, n=200) -> float:
    return timing.wall_us(fn, n, warmup=5)


def profiled(name: str, fn, reps: int, lines: int) -> None:
    """cProfile of `reps` calls of fn, its top `lines` functions by own time recorded under `name`."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        fn()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(lines)
    RESULTS[name] = text.getvalue()
    print(text.getvalue(), flush=True)


def warm(sm, StoredDocuments, tag):
    for dtype in ("float16", "float8_e4m3", "int8"):
        scorer = sm.MaxSimScorer(128, device="cuda", dtype=dtype, store_bytes=2 << 30)
        scorer.warmup()
        store = scorer.store
        for n in (1000, 10000) if dtype == "float16" else (1000,):
            lens, docs, query = request(n, seed=n)
            keys = [f"w{n}-{i}" for i in range(n)]
            store.release(store.insert(keys, [docs], lens))
            slots = store.lookup(keys)
            g = sm.ScoreGroup(query, StoredDocuments(slots))
            got = torch.from_numpy(scorer.score([g])[0]).double()
            cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]))
            ref = torch.stack([(torch.from_numpy(query).half().double() @ torch.from_numpy(
                docs[cu[i]:cu[i + 1]]).double().T).amax(1).sum() for i in range(n)])
            record(f"{tag} {dtype} {n} max |score - float64 of fp16|", round((got - ref).abs().max().item(), 5))
            record(f"{tag} {dtype} {n} warm score()", wall_us(lambda: scorer.score([g]), n=300 if n <= 1000 else 50))
            record(f"{tag} {dtype} {n} lookup + release", wall_us(lambda: store.release(store.lookup(keys)), n=100))
            if dtype == "float16" and n == 1000:
                groups = [sm.ScoreGroup(query, StoredDocuments(s)) for s in np.array_split(slots, 8)]
                record(f"{tag} {dtype} {n} warm score(), 8 groups", wall_us(lambda: scorer.score(groups), n=200))
                for name, call in (("1 group", [g]), ("8 groups", groups)):
                    profiled(f"{tag} warm profile, {name}", lambda call=call: scorer.score(call), 300, 18)
            store.release(slots)
        del scorer, store
        torch.cuda.empty_cache()


def pieces():
    """What the CUDA calls around a launch cost on this host."""
    s = torch.cuda.Stream()
    h = torch.empty(1 << 20, dtype=torch.uint8, pin_memory=True)
    d = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")

    def ctx():
        with torch.cuda.stream(s):
            pass
    record("stream context enter+exit (host us)", round(1e6 * timeit(ctx), 2))
    record("slice of a CUDA tensor (host us)", round(1e6 * timeit(lambda: d[256:4096]), 2))
    record("H2D copy_ 24 KB, non_blocking (host us, no sync)", round(1e6 * timeit(
        lambda: d[:24576].copy_(h[:24576], non_blocking=True)), 2))
    record("H2D 24 KB + sync (wall us)", wall_us(lambda: d[:24576].copy_(h[:24576], non_blocking=True)))
    record("stream sync, nothing queued (us)", round(1e6 * timeit(lambda: s.synchronize()), 2))
    record("H2D 24 KB + D2H 4 KB + sync (wall us)", wall_us(
        lambda: (d[:24576].copy_(h[:24576], non_blocking=True), h[65536:69632].copy_(d[4096:8192], non_blocking=True))))


def timeit(fn, n=2000):
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def cold(sm, StoredDocuments, tag):
    """A cold call as the deployment makes it (insert of the encoder's buffers, score, release), its floor, and a
    profile of the inserts."""
    for n in (1000, 10000):
        lens, docs, query = request(n, seed=n)
        nbytes = docs.nbytes
        src = torch.from_numpy(docs).view(torch.uint8).view(-1)
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        reps = 20 if n <= 1000 else 5
        record(f"{tag} {n} ({nbytes / 1e6:.0f} MB) pinned H2D", wall_us(lambda: dst.copy_(pinned, non_blocking=True),
                                                                        reps))
        for threads in (8, 16):
            torch.set_num_threads(threads)
            record(f"{tag} {n} host copy pageable->pinned, {threads} threads", wall_us(lambda: pinned.copy_(src), reps))
        torch.set_num_threads(16)
        scorer = sm.MaxSimScorer(128, device="cuda", dtype="float16", store_bytes=4 << 30)
        scorer.warmup()
        store = scorer.store
        count = [0]
        calls = encoder_calls(docs, lens)
        docs32 = docs.astype(np.float32)
        for name, parts in (("one buffer", [docs]), (f"{len(calls)} encoder-call buffers", calls),
                            ("one float32 buffer", [docs32])):
            def cold_call(keys, score=True, parts=parts):
                s = store.insert(keys, parts, lens)
                if score:
                    scorer.score([sm.ScoreGroup(query, StoredDocuments(s))])
                store.release(s)

            def fresh_keys():  # built inside the timed call, as the deployment builds its keys
                count[0] += 1
                return [f"c{n}-{count[0]}-{i}" for i in range(n)]
            record(f"{tag} {n} cold, {name}: insert + score() + release",
                   wall_us(lambda: cold_call(fresh_keys()), reps))
            record(f"{tag} {n} cold, {name}: insert + release", wall_us(lambda: cold_call(fresh_keys(), False), reps))
            if n == 1000 and name != "one float32 buffer":
                keys = iter([[f"k{n}-{name}-{j}-{i}" for i in range(n)] for j in range(10)])
                profiled(f"{tag} {n} cold profile, {name}", lambda: cold_call(next(keys)), 10, 22)
        del scorer, store, pinned, dst
        torch.cuda.empty_cache()


def cold_parts(sm):
    """The staging of one insert against the floor of staging it: one pinned buffer, each chunk's host copy
    followed by its copy to the GPU, no ring."""
    scorer = sm.MaxSimScorer(128, device="cuda", dtype="float16", store_bytes=4 << 30)
    scorer.warmup()
    store = scorer.store
    for n in (1000, 10000):
        lens, docs, query = request(n, seed=n)
        nbytes = docs.nbytes
        staged = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        view = staged.view(torch.float16).view(-1, 128)
        reps = 20 if n <= 1000 else 5
        record(f"{n} store._stage alone (+ sync)", wall_us(lambda: store._stage([docs], view, 256), reps))
        src = torch.from_numpy(docs).view(torch.uint8).view(-1)
        big = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        for chunk in (2 << 20, 8 << 20, 32 << 20):
            def floor():
                for a in range(0, nbytes, chunk):
                    big[a:a + chunk].copy_(src[a:a + chunk])
                    staged[a:a + chunk].copy_(big[a:a + chunk], non_blocking=True)
            record(f"{n} staging floor, {chunk >> 20} MB chunks", wall_us(floor, reps))
        count = [0]

        def keys_and_insert():
            count[0] += 1
            store.release(store.insert([f"p{n}-{count[0]}-{i}" for i in range(n)], [docs], lens))
        record(f"{n} insert + release (keys made in the call)", wall_us(keys_and_insert, reps))
        # where an insert's time goes: each method's wall time (synchronised where it ends on the GPU)
        spent: dict = {}

        def timed(name, fn, sync=False):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    if sync:
                        torch.cuda.synchronize()
                    spent.setdefault(name, []).append((time.perf_counter() - t0) * 1e6)
            return wrapper
        originals = {m: getattr(store, m) for m in ("insert", "release", "_write", "_stage", "_evict_until",
                                                     "_append_log", "_index_new", "_take_pages", "_take_slots")}
        for m, fn in originals.items():
            setattr(store, m, timed(m, fn, sync=m == "_stage"))
        for _ in range(reps):
            keys_and_insert()
        for m in originals:
            delattr(store, m)
        record(f"{n} insert's parts (median us a call)", {m: round(statistics.median(v), 1) for m, v in spent.items()})
        del staged, big
        torch.cuda.empty_cache()


def register(sm, StoredDocuments, tag, staging_threads=None):
    """Pinning the encoder's buffer where it lies (cudaHostRegister) against staging it through pinned slots: the
    registration's cost, a DMA straight from the registered buffer, and the timeline of today's cold call."""
    cudart = torch.cuda.cudart()
    for n in (1000,) if staging_threads else (1000, 10000):
        lens, docs, query = request(n, seed=n)
        nbytes = docs.nbytes
        dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        reps = 20 if n <= 1000 else 5
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        record(f"{tag} {n} ({nbytes / 1e6:.0f} MB) pinned H2D", wall_us(lambda: dst.copy_(pinned, non_blocking=True),
                                                                        reps))
        src = torch.from_numpy(docs).view(torch.uint8).view(-1)
        record(f"{tag} {n} pageable H2D (driver-staged)", wall_us(lambda: dst.copy_(src, non_blocking=True), reps))
        for fresh in (False, True):
            times = {"register": [], "dma": [], "unregister": [], "all": []}
            for _ in range(reps):
                buf = np.empty_like(docs) if fresh else docs
                if fresh:
                    buf[...] = docs  # touched, as a deserialised object is
                t0 = time.perf_counter()
                err = cudart.cudaHostRegister(buf.ctypes.data, buf.nbytes, 0)
                t1 = time.perf_counter()
                dst.copy_(torch.from_numpy(buf).view(torch.uint8).view(-1), non_blocking=True)
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                cudart.cudaHostUnregister(buf.ctypes.data)
                t3 = time.perf_counter()
                for k, v in (("register", t1 - t0), ("dma", t2 - t1), ("unregister", t3 - t2), ("all", t3 - t0)):
                    times[k].append(round(v * 1e6, 1))
            record(f"{tag} {n} cudaHostRegister {'fresh buffer' if fresh else 'same buffer'} (err {int(err)}), "
                   "median us", {k: statistics.median(v) for k, v in times.items()})
        scorer = sm.MaxSimScorer(128, device="cuda", dtype="float16", store_bytes=4 << 30,
                                 staging_threads=staging_threads)
        scorer.warmup()
        store = scorer.store
        marks: list = []
        stage_parts = store._stage_parts

        def staged_marked(*a, **k):
            out = stage_parts(*a, **k)
            marks.append(("staged", time.perf_counter()))
            return out
        store._stage_parts = staged_marked
        rows = []
        for j in range(reps + 2):
            marks.clear()
            keys = [f"t{n}-{j}-{i}" for i in range(n)]
            t0 = time.perf_counter()
            s = store.insert(keys, [docs], lens)
            t1 = time.perf_counter()
            scorer.score([sm.ScoreGroup(query, StoredDocuments(s))])
            t2 = time.perf_counter()
            store.release(s)
            t3 = time.perf_counter()
            rows.append({"staging issued": marks[0][1] - t0, "insert": t1 - t0, "score": t2 - t1, "release": t3 - t2,
                         "all": t3 - t0})
        del store._stage_parts
        record(f"{tag} {n} cold timeline, one buffer, median us",
               {k: round(1e6 * statistics.median(r[k] for r in rows[2:]), 1) for k in rows[0]})
        # each step's own wall time, nothing synchronised (what the host spends where, overlaps as they are)
        spent: dict = {}

        def timed(name, fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] = spent.get(name, 0.0) + (time.perf_counter() - t0) * 1e6
            return wrapper
        steps = [m for m in ("_stage_parts", "_stage", "_send", "_pin", "_evict_until", "_take_pages", "_append_log",
                             "_take_slots", "_set_rows", "_index_new", "_write", "_page_rows", "_write_cuda",
                             "_metadata", "_drop") if hasattr(store, m)]
        for m in steps:
            setattr(store, m, timed(m, getattr(store, m)))
        kmod = sys.modules[type(store).__module__].kmaxsim
        write_pages = kmod.write_pages
        kmod.write_pages = timed("write_pages", write_pages)
        calls = []
        for j in range(reps + 2):
            keys = [f"u{n}-{j}-{i}" for i in range(n)]
            spent.clear()
            t0 = time.perf_counter()
            s = store.insert(keys, [docs], lens)
            spent["insert"] = (time.perf_counter() - t0) * 1e6
            scorer.score([sm.ScoreGroup(query, StoredDocuments(s))])
            store.release(s)
            torch.cuda.synchronize()
            calls.append(dict(spent))
        kmod.write_pages = write_pages
        for m in steps:
            delattr(store, m)
        record(f"{tag} {n} cold insert's steps, total us a call (median over calls)",
               {m: round(statistics.median(c.get(m, 0.0) for c in calls[2:]), 1) for m in calls[-1]})
        del scorer, store, pinned, dst
        torch.cuda.empty_cache()


def parts_copy(sm):
    """The host side of staging the encoder calls' buffers: one host copy a buffer into pinned memory (what the
    ring does) against one copy of one buffer, at several thread counts, and the store's staging of each form."""
    n = 1000
    lens, docs, query = request(n, seed=n)
    calls = encoder_calls(docs, lens)
    pinned = torch.empty(docs.nbytes, dtype=torch.uint8, pin_memory=True)
    flat = pinned.view(torch.float16).view(-1, 128)
    whole = torch.from_numpy(docs)
    srcs = [torch.from_numpy(c) for c in calls]
    cu = np.concatenate([[0], np.cumsum([c.shape[0] for c in calls])])

    def per_part():
        for i, t in enumerate(srcs):
            flat[cu[i]:cu[i + 1]].copy_(t)
    for threads in (4, 8, 16):
        torch.set_num_threads(threads)
        record(f"{n} host copy, one buffer, {threads} threads", wall_us(lambda: flat.copy_(whole), 20))
        record(f"{n} host copy, {len(calls)} buffers, {threads} threads", wall_us(per_part, 20))
    torch.set_num_threads(16)
    scorer = sm.MaxSimScorer(128, device="cuda", dtype="float16", store_bytes=4 << 30)
    scorer.warmup()
    staged = torch.empty(docs.nbytes, dtype=torch.uint8, device="cuda").view(torch.float16).view(-1, 128)
    for name, parts in (("one buffer", [docs]), (f"{len(calls)} buffers", calls)):
        record(f"{n} store._stage alone (+ sync), {name}", wall_us(lambda: scorer.store._stage(parts, staged, 256), 20))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tag", default="new")
    ap.add_argument("--sections", default="pieces,warm,cold,cold_parts")
    ap.add_argument("--staging-threads", type=int, default=None)
    ap.add_argument("--ring-slots", type=int, default=None, help="the store's pinned staging slots (an A/B)")
    ap.add_argument("--store-flag", action="append", default=[], help="NAME=VALUE: a store constant (an A/B)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    from scoring.store import maxsim as sm
    from scoring.store.pages import StoredDocuments
    if args.ring_slots:
        sys.modules["scoring.store.pages"]._RING_SLOTS = args.ring_slots
    for flag in args.store_flag:  # NAME=VALUE: a module constant of the store, set for an A/B
        name, value = flag.split("=")
        setattr(sys.modules["scoring.store.pages"], name, type(getattr(sys.modules["scoring.store.pages"], name))(eval(value)))
    record("device", torch.cuda.get_device_name())
    sections = args.sections.split(",")
    try:
        if "pieces" in sections:
            pieces()
        if "warm" in sections:
            warm(sm, StoredDocuments, args.tag)
        if "cold" in sections:
            cold(sm, StoredDocuments, args.tag)
        if "cold_parts" in sections:
            cold_parts(sm)
        if "parts" in sections:
            parts_copy(sm)
        if "register" in sections:
            register(sm, StoredDocuments, args.tag, args.staging_threads)
    finally:
        with open(os.path.join(args.out, f"maxsim_path_probe_{args.tag}.json"), "w") as fh:
            json.dump(RESULTS, fh, indent=1)


if __name__ == "__main__":
    main()
