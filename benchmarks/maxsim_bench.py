"""MaxSim on one GPU: the kernel beside its peers, the scorer's path around it, compressed storage and its fidelity.

Usage (on the GPU machine, peers installed as wheels):
    python benchmarks/maxsim_bench.py [--out DIR] [--shapes rr-1k,rr-10k] [--skip-kernels] [--skip-scorer]
        [--minilm benchmarks/results/minilm_embeddings.npz]
    taskset -c 0,1 python benchmarks/maxsim_bench.py --cpu-scorer [--out DIR]     # the CPU scorer rows

Kernel rows: median µs (triton.testing.do_bench, L2 flushed) (fraction of the floor max(bytes/BW, flops/PEAK)) /
the GPU alone in the same cache state (`bench_queued`) / host µs to launch one call, and ‖out − ref‖/‖ref‖ against a
float64 reference over every document (compressed rows: on their dequantised values). Ours is timed packed
(fp16/bf16), paged (the store's layout: every document in 16-row pages scattered over an arena) and compressed
(float8_e4m3, int8 with one scale a token, paged). The floor uses the ceilings measured on our H100 (ANCHORS.md:
3.0 TB/s copy, 696 TFLOP/s bf16) so rows compare with the peer table there; this run's ceilings are printed too.

Scorer rows (`scorer_rows`): `MaxSimScorer.score` wall µs as the scorer deployment feeds it, one 32-token query,
100/1,000/4,000/10,000 documents of 85-512 tokens at d 128: warm (every document in the store), cold (fresh
documents arriving as the encoder's packed buffers: written to the store, scored, released), a 50/50 mix; beside
vLLM's in-process path (per-document GPU tensors, `torch.cat` + flash-maxsim) and one pinned host-to-device copy of
the documents' bytes. Fidelity (`fidelity`): float8_e4m3 / int8 scores against float16 ones (max |error|, top-10
overlap, Kendall tau) on the benchmark's random documents and on MiniLM's embeddings of real texts
(benchmarks/minilm_embeddings.py writes them on a CPU). Capacity: documents of 300 tokens a 16 GB store holds.
Writes maxsim_bench.json and maxsim_bench.png to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernels import maxsim as km  # noqa: E402
from scoring.store import maxsim as sm  # noqa: E402
from scoring.store.pages import DocumentStore, StoredDocuments, quantize  # noqa: E402
from timing import encoder_calls, request, wall_us  # noqa: E402  (benchmarks/, the script's own folder)

BW = 3.0e12  # B/s, device-to-device copy on our H100 (ANCHORS.md)
PEAK = 696e12  # FLOP/s, bf16 matrix product on our H100 (ANCHORS.md)
DEV = "cuda"

SHAPES = [  # name, Nq, B, Lq, Ld (max when varlen), d, varlen
    ("serve-64", 1, 64, 32, 300, 128, False),
    ("rr-1k", 1, 1000, 32, 300, 128, False),
    ("rr-1k-var", 1, 1000, 32, 512, 128, True),
    ("rr-1k-Ld1024-Lq128", 1, 1000, 128, 1024, 128, False),
    ("colpali-1k", 1, 1000, 1024, 1024, 128, False),
    ("rr-10k", 1, 10000, 32, 300, 128, False),
    ("rr-10k-var", 1, 10000, 32, 512, 128, True),
    ("multi-128x128", 128, 128, 32, 300, 128, False),
    ("rr-1k-d64", 1, 1000, 32, 300, 64, False),
    ("rr-1k-d96", 1, 1000, 32, 300, 96, False),
]
COMPRESSED = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
PAGE = 16

def floor_us(nq, lq, tokens, d, esize=2):
    return max(tokens * d * esize / BW, 2.0 * nq * lq * tokens * d / PEAK) * 1e6


def make(nq, B, lq, ld, d, varlen, dtype, gen):
    Q = torch.nn.functional.normalize(torch.randn(nq, lq, d, device=DEV, generator=gen), dim=-1).to(dtype)
    lens = torch.randint(max(8, ld // 6), ld + 1, (B,), generator=torch.Generator().manual_seed(B)) if varlen \
        else torch.full((B,), ld)
    total = int(lens.sum())
    D = torch.nn.functional.normalize(torch.randn(total, d, device=DEV, generator=gen), dim=-1).to(dtype)
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.to(DEV)
    maxld = int(lens.max())
    idx = torch.arange(maxld, device=DEV)
    lens_d = lens.to(DEV)
    mask = idx[None, :] < lens_d[:, None]
    Dpad = torch.zeros(B, maxld, d, device=DEV, dtype=dtype)
    Dpad[mask] = D
    return Q, D, cu, maxld, Dpad, mask, lens_d.to(torch.int32), total


def rel_err(out, ref):
    out = out.double().reshape(ref.shape)
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1000


_FLUSH = {}


def _sleep_cycles_per_ms() -> float:
    if "cycles_per_ms" not in _FLUSH:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.cuda._sleep(10_000_000)
        e.record()
        torch.cuda.synchronize()
        _FLUSH["cycles_per_ms"] = 10_000_000 / s.elapsed_time(e)
    return _FLUSH["cycles_per_ms"]


def bench_queued(fn, n=60):
    """GPU time alone, in do_bench's cache state: the same 256 MB zeroing before each call, but every call is
    queued behind a GPU sleep longer than the host needs to launch them all, so the GPU never waits for the host
    (do_bench's median includes those waits whenever one flush + call launches slower than the GPU runs them)."""
    if "z" not in _FLUSH:
        _FLUSH["z"] = torch.empty(int(256e6 // 4), dtype=torch.int32, device=DEV)
    z = _FLUSH["z"]
    fn()
    torch.cuda.synchronize()
    sleep_ms = 20.0
    while True:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda._sleep(int(sleep_ms * _sleep_cycles_per_ms()))
        t0 = time.perf_counter()
        for i in range(n):
            z.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        host_ms = (time.perf_counter() - t0) * 1000
        torch.cuda.synchronize()
        if host_ms < 0.8 * sleep_ms:
            return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1000
        sleep_ms *= 2  # the host fell behind the sleep: longer sleep, again


def host_us(fn, n=100):
    """Host time to launch one call (µs), measured while the GPU is busy, so launches never wait for it."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(40 * _sleep_cycles_per_ms()))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return t


def peers():
    found = {}
    try:
        import flash_maxsim as fm
        from flash_maxsim.flash_maxsim_rerank import flash_maxsim_rerank
        found["fm"] = (fm, flash_maxsim_rerank)
    except ImportError as e:
        print(f"flash-maxsim missing: {e}")
    try:
        import late_interaction_kernels as lik
        found["lik"] = lik
    except ImportError as e:
        print(f"late-interaction-kernels missing: {e}")
    return found


def ceilings():
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    t = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=100, return_mode="median") * 1e-3
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    tm = triton.testing.do_bench(lambda: a @ a, warmup=10, rep=100, return_mode="median") * 1e-3
    del x, y, a
    torch.cuda.empty_cache()
    return {"copy TB/s": round(2 * (1 << 30) / t / 1e12, 2), "bf16 TFLOP/s": round(2 * 8192 ** 3 / tm / 1e12, 0)}


def paged(D, cu, gen, scales=None):
    """D's documents in 16-row pages scattered over an arena twice their size (the store's layout): (arena,
    scales, page list, doc start, doc end)."""
    lengths = (cu[1:] - cu[:-1]).long()
    n_pages = (lengths + PAGE - 1) // PAGE
    total = int(n_pages.sum())
    pages = torch.randperm(2 * total, device=DEV, generator=gen)[:total].to(torch.int32)
    first = torch.zeros_like(n_pages)
    first[1:] = torch.cumsum(n_pages, 0)[:-1]
    start = (first * PAGE).to(torch.int32)
    logical = torch.repeat_interleave(first * PAGE - cu[:-1].long(), lengths) + torch.arange(D.shape[0], device=DEV)
    rows = pages.long()[logical // PAGE] * PAGE + logical % PAGE
    arena = torch.zeros(2 * total * PAGE, D.shape[1], dtype=D.dtype, device=DEV)
    view = (lambda t: t.view(torch.uint8)) if D.dtype == torch.float8_e4m3fn else (lambda t: t)
    view(arena)[rows] = view(D)
    arena_scales = None
    if scales is not None:
        arena_scales = torch.ones(arena.shape[0], device=DEV)
        arena_scales[rows] = scales
    return arena, arena_scales, pages, start, start + lengths.to(torch.int32)


def candidates(nq, lq, varlen, Q, D, cu, maxld, Dpad, mask, lens, found, gen):
    c = {}
    if "fm" in found:
        fm, rerank = found["fm"]
        if nq == 1:
            c["flash-maxsim"] = (lambda: rerank(Q[0], D, cu, maxld)) if varlen else \
                (lambda: fm.flash_maxsim(Q[0], Dpad, lens))
        else:
            c["flash-maxsim"] = lambda: fm.flash_maxsim_batched(Q, Dpad, lens)
    if "lik" in found:
        lik = found["lik"]
        if nq == 1 and varlen:
            cq = torch.tensor([0, lq], dtype=torch.int32, device=DEV)
            c["late-interaction-kernels"] = lambda: lik.maxsim_varlen(Q[0], D, cq, cu, lq, maxld)
        else:
            c["late-interaction-kernels"] = lambda: lik.maxsim(Q, Dpad, None, mask)
    c["ours"] = (lambda: km.maxsim_packed(Q[0], D, cu)) if nq == 1 else (lambda: km.maxsim_packed(Q, D, cu))
    if nq > 1:
        return c
    cq = torch.tensor([0, lq], dtype=torch.int32, device=DEV)
    group = torch.zeros(cu.numel() - 1, dtype=torch.int32, device=DEV)
    mean_ld = D.shape[0] / (cu.numel() - 1)

    def paged_call(arena, scales, pages, start, end, Qh, q_scales=None):
        return lambda: km.maxsim_paged(Qh, cq, arena, pages, PAGE, start, end, group, lq, mean_ld, scales=scales,
                                       q_scales=q_scales)

    c["ours paged"] = paged_call(*paged(D, cu, gen), Q[0])
    for tag, dtype in COMPRESSED.items():
        values, scales = quantize(D, dtype)
        # the scorer's forms: int8 queries quantised like the documents, float8 pairs for float8 documents
        q_quant, q_scales = quantize(Q[0], torch.int8) if dtype == torch.int8 else km.float8_query(Q[0])
        stored = paged(values, cu, gen, scales)
        c[f"ours {tag} paged"] = paged_call(*stored, q_quant, q_scales)
        c[f"ours {tag} paged"].exact_q = km.dequantize_query(q_quant, q_scales, torch.float64)
        c[f"ours {tag} paged"].exact = km.dequantize(values, scales, torch.float64)
        if dtype == torch.float8_e4m3fn:  # v14's float8 form: the documents widened against a float16 query
            c[f"ours {tag} widened paged"] = paged_call(*stored, Q[0].half())
            c[f"ours {tag} widened paged"].exact = c[f"ours {tag} paged"].exact
    return c


def kernel_table(args, found):
    rows = []
    gen = torch.Generator(device=DEV).manual_seed(0)
    for name, nq, B, lq, ld, d, varlen in SHAPES:
        if args.shapes and name not in args.shapes.split(","):
            continue
        Q, D, cu, maxld, Dpad, mask, lens, total = make(nq, B, lq, ld, d, varlen, torch.float16, gen)
        ref = km.maxsim_reference(Q, D, cu, dtype=torch.float64)  # [Nq, B], every document
        fl = floor_us(nq, lq, total, d)
        row = {"shape": name, "Nq": nq, "B": B, "Lq": lq, "Ld": ld, "d": d, "varlen": varlen, "tokens": total,
               "floor_us": round(fl, 1)}
        for k, f in candidates(nq, lq, varlen, Q, D, cu, maxld, Dpad, mask, lens, found, gen).items():
            try:
                km._POISON_OUTPUTS = k.startswith("ours")
                out = f()
                km._POISON_OUTPUTS = False
                torch.cuda.synchronize()
                exact = getattr(f, "exact", None)
                exact_q = getattr(f, "exact_q", Q[0].half())
                want = ref if exact is None else km.maxsim_reference(exact_q, exact, cu, torch.float64)[None]
                t = bench(f)
                row[k] = {"us": round(t, 1), "err": float(f"{rel_err(out, want):.1e}"), "floor_frac": round(fl / t, 3),
                          "gpu_us": round(bench_queued(f), 1), "host_us": round(host_us(f), 1)}
            except Exception as e:  # a peer that fails a shape is a finding
                row[k] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            km._POISON_OUTPUTS = False
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        del Q, D, Dpad, mask, ref
        torch.cuda.empty_cache()
    return rows


# -- the scorer's path --------------------------------------------------------------------------------------------

def scorer_rows(found, sizes=(100, 1000, 4000, 10000), dtypes=("float16", "float8_e4m3", "int8")):
    """Each row: wall µs, median of 30 calls (10 above 1,000 documents)."""
    res = {}
    for dtype in dtypes:
        scorer = sm.MaxSimScorer(128, device="cuda", dtype=dtype, store_bytes=4 << 30)
        scorer.warmup()
        store = scorer.store
        for n in sizes if dtype == "float16" else (1000, 10000):
            lens, docs, query = request(n, seed=n)
            reps = 30 if n <= 1000 else 10
            row = {"docs": n, "tokens": int(lens.sum()), "MB": round(docs.nbytes / 1e6, 1)}
            keys = [f"warm-{n}-{i}" for i in range(n)]
            store.release(store.insert(keys, [docs], lens))
            slots = store.lookup(keys)
            ref = km.maxsim_reference(torch.from_numpy(query).half().double(), torch.from_numpy(docs).double(),
                                      torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])), torch.float64)
            warm = sm.ScoreGroup(query, StoredDocuments(slots))
            err = rel_err(torch.from_numpy(scorer.score([warm])[0]), ref)
            row["err warm vs float64 of fp16 input"] = float(f"{err:.1e}")
            row["warm score()"] = wall_us(lambda: scorer.score([warm]), n=reps)
            row["warm lookup + release of n keys"] = wall_us(lambda: store.release(store.lookup(keys)), n=reps)
            store.release(slots)
            # 50/50: the first half stored, the second half fresh each time
            half = n // 2
            fresh_docs = docs[int(lens[:half].sum()):]
            count = [0]

            def mixed():
                count[0] += 1
                s = store.lookup(keys[:half] + [f"mixed-{n}-{count[0]}-{i}" for i in range(n - half)])
                s[half:] = store.insert([f"mixed-{n}-{count[0]}-{i}" for i in range(n - half)], [fresh_docs],
                                        lens[half:])
                scorer.score([sm.ScoreGroup(query, StoredDocuments(s))])
                store.release(s)
            row["mixed 50/50: lookup + insert + score() + release"] = wall_us(mixed, n=reps)

            def cold(parts, tag):
                count[0] += 1
                s = store.insert([f"{tag}-{n}-{count[0]}-{i}" for i in range(n)], parts, lens)
                scorer.score([sm.ScoreGroup(query, StoredDocuments(s))])
                store.release(s)
            row["cold, one packed buffer: insert + score() + release"] = wall_us(lambda: cold([docs], "c1"), n=reps)
            calls = encoder_calls(docs, lens)
            row["encoder calls of ~8192 tokens"] = len(calls)
            row["cold, the encoder calls' buffers: insert + score() + release"] = wall_us(
                lambda: cold(calls, "cc"), n=reps)
            if dtype == "float16":
                docs32 = docs.astype(np.float32)
                row["cold, one float32 buffer (the encoder's default dtype)"] = wall_us(
                    lambda: cold([docs32], "c32"), n=reps)
                pinned = torch.empty(docs.nbytes, dtype=torch.uint8, pin_memory=True)
                dst = torch.empty(docs.nbytes, dtype=torch.uint8, device=DEV)
                row["one pinned H2D copy of the fp16 bytes"] = wall_us(lambda: dst.copy_(pinned, non_blocking=True),
                                                                       n=reps)
                row["pageable .cuda() of the packed buffer"] = wall_us(lambda: torch.from_numpy(docs).cuda(), n=reps)
                gpu_docs = [t.clone() for t in torch.split(torch.from_numpy(docs).cuda(), lens.tolist())]
                Qg = torch.from_numpy(query).half().cuda()
                cu_host = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
                if "fm" in found:
                    _, rerank = found["fm"]
                    maxld = int(lens.max())

                    def vllm_path():  # vLLM's in-process path: per-document tensors on the GPU, cat + flash-maxsim
                        D = torch.cat(gpu_docs)
                        return rerank(Qg, D, cu_host.to(DEV, non_blocking=True), maxld).cpu()
                    row["vLLM in-process: torch.cat + flash-maxsim (wall)"] = wall_us(vllm_path, n=reps)
                D = torch.cat(gpu_docs)
                cu = cu_host.cuda()
                row["our kernel, documents packed on the GPU (wall)"] = wall_us(
                    lambda: km.maxsim_packed(Qg, D, cu).cpu(), n=reps)
                row["our kernel, documents packed on the GPU (do_bench)"] = round(
                    bench(lambda: km.maxsim_packed(Qg, D, cu)), 1)
                del gpu_docs, D, dst, pinned
            res[f"{dtype} {n}"] = row
            print(json.dumps(row), flush=True)
        del scorer, store
        torch.cuda.empty_cache()
    return res


def warm_profile(out_dir: str, n: int = 1000) -> dict:
    """Where the host time of a warm `score()` goes: direct launch on and off (interleaved), and a cProfile of 300
    calls (written to maxsim_warm_profile.txt)."""
    import cProfile
    import io
    import pstats
    scorer = sm.MaxSimScorer(128, device="cuda", store_bytes=1 << 30)
    scorer.warmup()
    lens, docs, query = request(n, seed=n)
    keys = [f"p{i}" for i in range(n)]
    slots = scorer.store.insert(keys, [docs], lens)
    g = sm.ScoreGroup(query, StoredDocuments(slots))
    res = {}
    for rep in range(3):
        for direct in (True, False):
            km.DIRECT_LAUNCH = direct
            res.setdefault(f"warm score(), direct launch {'on' if direct else 'off'}", []).append(
                wall_us(lambda: scorer.score([g]), n=50))
    km.DIRECT_LAUNCH = True
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        scorer.score([g])
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
    with open(os.path.join(out_dir, "maxsim_warm_profile.txt"), "w") as fh:
        fh.write(text.getvalue())
    print(json.dumps(res), flush=True)
    return res


def capacity(total_bytes=16 * 10**9, n_docs=200_000, tokens=300, d=128):
    """How many documents of `tokens` tokens a store of `total_bytes` holds: written in calls of 10,000."""
    res = {}
    lens = np.full(10_000, tokens)
    docs = torch.nn.functional.normalize(torch.randn(10_000 * tokens, d), dim=-1).half().numpy()
    for dtype in ("float8_e4m3", "int8", "float16"):
        store = DocumentStore(d, total_bytes, DEV, dtype, headroom_bytes=0)
        t0 = time.perf_counter()
        for b in range(n_docs // 10_000):
            store.release(store.insert([f"{b}-{i}" for i in range(10_000)], [docs], lens))
        torch.cuda.synchronize()
        stats = store.stats()
        res[dtype] = {"store bytes": total_bytes, "entries kept": stats.entries, "evictions": stats.evictions,
                      "bytes used": stats.bytes, "GPU bytes allocated": torch.cuda.memory_allocated(),
                      "write s": round(time.perf_counter() - t0, 2),
                      "write GB/s (fp16 bytes in)": round(n_docs * tokens * d * 2 / (time.perf_counter() - t0) / 1e9,
                                                          1)}
        print(dtype, json.dumps(res[dtype]), flush=True)
        del store
        torch.cuda.empty_cache()
    return res


# -- fidelity of compressed storage -----------------------------------------------------------------------------

def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    n = a.numel()
    return float((da * db).sum() / (n * (n - 1)))


def agreement(fp16: torch.Tensor, other: torch.Tensor, k: int = 10) -> dict:
    """Per query (rows): max |score error|, top-k overlap, Kendall tau; aggregated over the queries."""
    errs, overlaps, taus = [], [], []
    for a, b in zip(fp16.double(), other.double()):
        errs.append(float((a - b).abs().max()))
        top_a = set(torch.topk(a, min(k, a.numel())).indices.tolist())
        top_b = set(torch.topk(b, min(k, b.numel())).indices.tolist())
        overlaps.append(len(top_a & top_b) / len(top_a))
        taus.append(kendall_tau(a, b))
    return {"max |score error|": round(max(errs), 4), "mean top-10 overlap": round(statistics.mean(overlaps), 3),
            "min top-10 overlap": round(min(overlaps), 2), "mean Kendall tau": round(statistics.mean(taus), 4),
            "min Kendall tau": round(min(taus), 4),
            "score scale (mean |fp16 score|)": round(float(fp16.abs().mean()), 2)}


def fidelity_of(queries: list[torch.Tensor], D: torch.Tensor, cu: torch.Tensor) -> dict:
    D16 = D.half()
    exact = torch.stack([km.maxsim_reference(q.double(), D.double(), cu, torch.float64) for q in queries])
    fp16 = torch.stack([km.maxsim_packed(q.half(), D16, cu) for q in queries])
    res = {"fp16 kernel vs float64 on the same embeddings": agreement(exact, fp16)}
    gen = torch.Generator(device=DEV).manual_seed(5)
    for tag, dtype in COMPRESSED.items():
        values, scales = quantize(D16, dtype)
        # as the scorer scores compressed documents: paged, the query quantised for their tensor cores (int8 rows
        # for int8, a float8 pair for float8)
        arena, arena_scales, pages, start, end = paged(values, cu, gen, scales)
        group = torch.zeros(cu.numel() - 1, dtype=torch.int32, device=DEV)

        def score(q, dtype=dtype):
            q_quant, q_scales = quantize(q, torch.int8) if dtype == torch.int8 else km.float8_query(q)
            cq = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=DEV)
            return km.maxsim_paged(q_quant, cq, arena, pages, PAGE, start, end, group, q.shape[0], 300.0,
                                   scales=arena_scales, q_scales=q_scales)
        res[f"{tag} vs fp16"] = agreement(fp16, torch.stack([score(q) for q in queries]))
        if dtype == torch.float8_e4m3fn:  # v14's form: the documents widened against the float16 query
            widened = torch.stack([km.maxsim_packed(q.half(), values, cu, scales=scales) for q in queries])
            res[f"{tag} widened vs fp16"] = agreement(fp16, widened)
    return res


def fidelity(minilm_path: str | None) -> dict:
    res = {}
    g = torch.Generator(device=DEV).manual_seed(3)
    D = torch.nn.functional.normalize(torch.randn(1000 * 300, 128, device=DEV, generator=g), dim=-1)
    cu = torch.arange(0, 1001 * 300, 300, dtype=torch.int32, device=DEV)
    queries = [torch.nn.functional.normalize(torch.randn(32, 128, device=DEV, generator=g), dim=-1) for _ in range(20)]
    res["random (rr-1k: 1,000 documents x 300 tokens, d 128, 20 queries)"] = fidelity_of(queries, D, cu)
    if minilm_path and os.path.exists(minilm_path):
        z = np.load(minilm_path)
        D = torch.from_numpy(z["doc_data"]).to(DEV)
        cu = torch.from_numpy(np.concatenate([[0], np.cumsum(z["doc_lengths"])]).astype(np.int32)).to(DEV)
        qcu = np.concatenate([[0], np.cumsum(z["query_lengths"])])
        qd = torch.from_numpy(z["query_data"]).to(DEV)
        queries = [qd[qcu[i]:qcu[i + 1]] for i in range(len(qcu) - 1)]
        res[f"MiniLM ({len(cu) - 1} real texts, {D.shape[0]} tokens, d {D.shape[1]}, {len(queries)} queries)"] = \
            fidelity_of(queries, D, cu)
    print(json.dumps(res, indent=1), flush=True)
    return res


# -- the CPU scorer -----------------------------------------------------------------------------------------------

def cpu_scorer(n_docs: int = 1000):
    """MaxSimScorer on the CPU (run under `taskset -c 0,1`: the service's 2 cores): 1,000 documents of 300 (and
    85-512) tokens, d 384, fp16, one 32-token fp32 query; medians of 5, interleaved. Rows: a packed host buffer read
    in place (a transient call), documents in the store (warm), written to the store first (cold: the deployment's
    miss), and compressed storage warm."""
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    d = 384
    res = {"torch threads": torch.get_num_threads()}
    for name, lens in (("equal 300", np.full(n_docs, 300, dtype=np.int64)),
                       ("85-512", rng.integers(85, 513, n_docs).astype(np.int64))):
        query = rng.standard_normal((32, d)).astype(np.float32)
        docs = rng.standard_normal((int(lens.sum()), d)).astype(np.float16)
        scorers = {dtype: sm.MaxSimScorer(d, device="cpu", dtype=dtype, store_bytes=2 << 30)
                   for dtype in ("float16", "float8_e4m3", "int8")}
        warm = {}
        for dtype, scorer in scorers.items():
            warm[dtype] = sm.ScoreGroup(query, StoredDocuments(scorer.store.insert(
                [f"{i}" for i in range(lens.size)], [docs], lens)))
        fp16 = scorers["float16"]
        packed = sm.ScoreGroup(query, docs, lens)
        assert np.array_equal(fp16.score([warm["float16"]])[0], fp16.score([packed])[0])
        count = [0]

        def cold():
            count[0] += 1
            s = fp16.store.insert([f"cold-{count[0]}-{i}" for i in range(lens.size)], [docs], lens)
            fp16.score([sm.ScoreGroup(query, StoredDocuments(s))])
            fp16.store.release(s)

        calls = {"packed host buffer, read in place ms": lambda: fp16.score([packed]),
                 "stored (warm) ms": lambda: fp16.score([warm["float16"]]),
                 "written to the store, then scored (cold) ms": cold,
                 "fp8 stored (warm) ms": lambda: scorers["float8_e4m3"].score([warm["float8_e4m3"]]),
                 "int8 stored (warm) ms": lambda: scorers["int8"].score([warm["int8"]])}
        times = {k: [] for k in calls}
        for _ in range(5):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
        for k, t in times.items():
            res[f"{name}: {k}"] = round(statistics.median(t), 1)
        print(json.dumps({k: v for k, v in res.items() if k.startswith(name)}), flush=True)
    return res


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["flash-maxsim", "late-interaction-kernels", "ours", "ours paged", "ours fp8 paged"]
    fig, ax = plt.subplots(figsize=(12, 5))
    w = 0.16
    for i, k in enumerate(keys):
        vals = [r[k]["floor_frac"] if "us" in r.get(k, {}) else 0 for r in rows]
        ax.bar(np.arange(len(rows)) + (i - 2) * w, vals, w, label=k)
    ax.set_xticks(np.arange(len(rows)), [r["shape"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("fraction of the fp16 roofline floor (higher is better)")
    ax.set_title(f"MaxSim on {torch.cuda.get_device_name()}: fraction of floor")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--shapes", default="")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--skip-scorer", action="store_true")
    ap.add_argument("--skip-capacity", action="store_true")
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--skip-ceilings", action="store_true")
    ap.add_argument("--minilm", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "minilm_embeddings.npz"))
    ap.add_argument("--cpu-scorer", action="store_true", help="only the CPU scorer rows (use taskset -c 0,1)")
    ap.add_argument("--scorer-sizes", default="100,1000,4000,10000")
    ap.add_argument("--cpu-docs", type=int, default=1000, help="documents of the CPU scorer rows")
    ap.add_argument("--profile", action="store_true", help="also profile the warm score() (maxsim_warm_profile.txt)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.cpu_scorer:
        res = cpu_scorer(args.cpu_docs)
        with open(os.path.join(args.out, "maxsim_cpu_scorer.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "floor_constants": {"BW": BW, "PEAK": PEAK}}
    if not args.skip_ceilings:
        result["ceilings_measured"] = ceilings()
        print(result["ceilings_measured"], flush=True)
    found = peers()

    def save():  # after every section: a run cut short keeps what it measured
        with open(os.path.join(args.out, "maxsim_bench.json"), "w") as fh:
            json.dump(result, fh, indent=1)
    if not args.skip_fidelity:
        result["fidelity"] = fidelity(args.minilm)
        save()
    if args.profile:
        result["warm profile"] = warm_profile(args.out)
        save()
    if not args.skip_scorer:
        result["scorer"] = scorer_rows(found, tuple(int(n) for n in args.scorer_sizes.split(",")))
        save()
    if not args.skip_kernels:
        result["rows"] = kernel_table(args, found)
        save()
    if not args.skip_capacity:
        result["capacity"] = capacity()
        save()
    rows = result.get("rows", [])
    if rows:
        try:
            chart(rows, os.path.join(args.out, "maxsim_bench.png"))
        except Exception as e:  # the table matters more than the picture
            print(f"chart failed: {e}")
    keys = ["flash-maxsim", "late-interaction-kernels", "ours", "ours paged", "ours fp8 paged",
            "ours fp8 widened paged", "ours int8 paged"]
    print("\nµs: do_bench (fraction of the fp16 floor) / GPU alone / host launch")
    print("| shape | floor µs | " + " | ".join(keys) + " | fp8 / fp16 paged | fp8 widened / fp16 paged | "
          "int8 / fp16 paged |")
    print("|---|---|" + "---|" * len(keys) + "---|---|---|")
    for r in rows:
        cells = [f"{r[k]['us']:.1f} ({r[k]['floor_frac']:.2f}) / {r[k]['gpu_us']:.1f} / {r[k]['host_us']:.0f}"
                 if "us" in r.get(k, {}) else ("-" if k not in r else "ERR") for k in keys]
        ratios = [f"{r[k]['gpu_us'] / r['ours paged']['gpu_us']:.2f}" if "us" in r.get(k, {}) else "-"
                  for k in ("ours fp8 paged", "ours fp8 widened paged", "ours int8 paged")]
        print(f"| {r['shape']} | {r['floor_us']:.1f} | " + " | ".join(cells + ratios) + " |")
    for k, row in result.get("scorer", {}).items():
        print(k, json.dumps(row))


if __name__ == "__main__":
    main()
